"""How work is cut into tasks: a few per worker per stage, none bigger than the memory budget (DESIGN.md section 6).

Thousands of small task runs cost more in orchestration than the work they carry, so the number of tasks follows the
workers, not the data; only a stage whose data would not fit the budget in that many tasks is cut finer.
"""

from __future__ import annotations

import math

import numpy as np
import psutil

from negforge.schemas.config import RuntimeConfig

MIB = 1 << 20


DEFAULT_BUDGET = 1024 * MIB


def memory_budget_bytes(runtime: RuntimeConfig, workers: int) -> int:
    """Bytes one task may use: the configured budget, else the smaller of 1 GiB and half the available memory per
    worker (more buys nothing: blocks of that size already keep FAISS and the disk busy)."""
    if runtime.memory_budget_mb is not None:
        return runtime.memory_budget_mb * MIB
    return max(256 * MIB, min(DEFAULT_BUDGET, psutil.virtual_memory().available // (2 * max(1, workers))))


def task_count(items: int, bytes_per_item: float, workers: int, runtime: RuntimeConfig) -> int:
    """How many tasks `items` are cut into: `tasks_per_worker` per worker, more where one would exceed the budget."""
    if items <= 0:
        return 0
    wanted = max(1, workers) * runtime.tasks_per_worker
    by_memory = math.ceil(items * bytes_per_item / memory_budget_bytes(runtime, workers))
    return min(items, max(wanted, by_memory))


def ranges(items: int, count: int) -> list[tuple[int, int]]:
    """`count` contiguous, near-equal [start, stop) ranges covering `items`."""
    bounds = [round(i * items / count) for i in range(count + 1)] if count else [0]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def weighted_ranges(weights: np.ndarray, count: int) -> list[tuple[int, int]]:
    """`count` contiguous [start, stop) ranges of near-equal total weight (e.g. characters to embed) covering all."""
    if count <= 0 or not len(weights):
        return []
    cumulative = np.cumsum(weights, dtype=np.float64)
    targets = cumulative[-1] * np.arange(1, count) / count
    bounds = [0, *np.minimum(np.searchsorted(cumulative, targets, side="left") + 1, len(weights)).tolist(),
              len(weights)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# The smallest corpus block worth a FAISS call; a task holds about four copies of a block (tasks/search/exact.py).
MIN_BLOCK_ROWS = 1024
BLOCK_COPIES = 4


class BudgetError(ValueError):
    """runtime.memory_budget_mb is too small for the work; names the smallest value that works."""


def check_budget(runtime: RuntimeConfig, workers: int, dim: int) -> None:
    """Refuse, before the work starts, a memory budget that cannot hold one block of `dim`-dimensional vectors."""
    needed = MIN_BLOCK_ROWS * dim * 4 * BLOCK_COPIES
    if memory_budget_bytes(runtime, workers) < needed:
        raise BudgetError(f"runtime.memory_budget_mb={runtime.memory_budget_mb} cannot hold one block of "
                          f"{MIN_BLOCK_ROWS} vectors of dimension {dim}; the smallest that works is "
                          f"{math.ceil(needed / MIB)}")
