"""Exact nearest-neighbour search of a partition of queries, streaming the corpus in blocks.

FAISS proposes each query's best candidates block by block into a running top-k (its result heaps), so memory is one
block of corpus vectors plus the partition's heaps, whatever the corpus size. FAISS's scores depend, in their last
bits, on how many queries and documents one call holds; so the proposals go a few candidates deeper than asked, and
the scores of every proposed pair are computed again one pair at a time (the same kernel as the positives' scores),
then ranked by (score, corpus row). Results are then the same for any partitioning and block size.
"""

from __future__ import annotations

from typing import Callable

import faiss
import numpy as np

from negforge.schemas.stages import VectorFile
from negforge.tasks.runtime.sizing import BLOCK_COPIES

# Candidates proposed beyond the depth asked, so that FAISS's rounding cannot push a true top-k member out.
SLACK = 8


def open_vectors(vectors: VectorFile) -> np.ndarray:
    """The matrix of a VectorFile, memory-mapped read-only, for gathering scattered rows. Pages it touched stay
    mapped (and counted in the process's memory) until the returned array is dropped: keep it short-lived."""
    return np.load(vectors.path, mmap_mode="r")


def read_rows(vectors: VectorFile, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a VectorFile, read into memory (not mapped: streaming the corpus leaves nothing
    resident behind)."""
    offset = open_vectors(vectors).offset
    count = (stop - start) * vectors.dim
    return np.fromfile(vectors.path, dtype=np.float32, count=count,
                       offset=offset + start * vectors.dim * 4).reshape(stop - start, vectors.dim)


def pair_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Row-wise dot products: the score of each (query, document) pair, independent of how pairs are batched."""
    return np.einsum("ij,ij->i", queries, docs)


def block_rows(dim: int, budget_bytes: int, corpus_rows: int) -> int:
    """Corpus rows per block: a quarter of the memory budget (the block read, a copy in a FAISS index when some
    rows are excluded, and FAISS's own buffers); tasks/runtime/sizing.py `check_budget` refuses budgets below
    MIN_BLOCK_ROWS."""
    return int(max(1, min(corpus_rows, budget_bytes // (BLOCK_COPIES * dim * 4))))


def _selector(excluded: np.ndarray | None, start: int, stop: int) -> faiss.SearchParameters | None:
    """Search parameters skipping the block's excluded rows (corpus deduplication); None when there are none."""
    if excluded is None:
        return None
    local = excluded[(excluded >= start) & (excluded < stop)].astype(np.int64) - start
    return faiss.SearchParameters(sel=faiss.IDSelectorNot(faiss.IDSelectorBatch(local))) if len(local) else None


def propose(queries: np.ndarray, corpus: VectorFile, k: int, rows_per_block: int,
            excluded: np.ndarray | None = None, on_block: Callable[[int], None] | None = None) -> np.ndarray:
    """Corpus rows of each query's best `k` candidates by FAISS (-1 where fewer exist), streaming corpus blocks.

    `on_block` is told the (query, document) pairs each block compared, for progress.
    """
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    for start in range(0, corpus.rows, rows_per_block):
        stop = min(start + rows_per_block, corpus.rows)
        block = read_rows(corpus, start, stop)
        selector = _selector(excluded, start, stop)
        if selector is None:
            scores, rows = faiss.knn(queries, block, min(k, stop - start), metric=faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexFlatIP(corpus.dim)
            index.add(block)
            scores, rows = index.search(queries, min(k, stop - start), params=selector)
        heap.add_result(scores, np.where(rows >= 0, rows + start, -1))
        if on_block:
            on_block(len(queries) * (stop - start))
    heap.finalize()
    return heap.I


def rank_exactly(queries: np.ndarray, corpus: np.ndarray, proposed: np.ndarray,
                 depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score the proposed pairs one by one and keep each query's best `depth`, ties broken by corpus row.

    Returns:
        (query index, corpus row, score) of the kept pairs, by query, best first.
    """
    q, slot = np.nonzero(proposed >= 0)
    rows = proposed[q, slot]
    unique, where = np.unique(rows, return_inverse=True)
    scores = pair_scores(queries[q], np.asarray(corpus[unique], dtype=np.float32)[where])
    order = np.lexsort((rows, -scores, q))
    q, rows, scores = q[order], rows[order], scores[order]
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]]) if len(q) else np.zeros(0, np.int64)
    rank = np.arange(len(q)) - np.repeat(starts, np.diff(np.r_[starts, len(q)]))
    keep = rank < depth
    return q[keep], rows[keep], scores[keep]
