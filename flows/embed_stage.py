"""The embedding stage of the build flow: plan on a worker, embed and copy in a few tasks per worker, show progress,
compact the store.

The flow holds the plan (paths and row ranges) and creates the run's vector matrices, one .npy per kind with a row per
text row; the tasks fill disjoint rows of them, so search reads them memory-mapped.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, wait

from negforge.flows.run_report import ShardProgress
from negforge.flows.stage_tasks import stage_task
from negforge.schemas.config import RuntimeConfig
from negforge.schemas.stages import Embedded, Texts, VectorFile
from negforge.tasks.embed import Filled, copy_stored, create_matrices, embed_texts, plan_embedding
from negforge.tasks.embedding_store import EmbeddingStore, compact_stores
from negforge.tasks.model import EncoderSpec
from negforge.tasks.progress import units_done

POLL_S = 1.0  # how often the flow reads the tasks' progress
LOG_EVERY_S = 30.0  # a progress line at least this often, and at every tenth

plan_task = stage_task(plan_embedding, "plan embedding", retried=True)
embed_task = stage_task(embed_texts, "embed texts", retried=True)
copy_task = stage_task(copy_stored, "copy stored vectors", retried=True)


compact_task = stage_task(compact_stores, "compact embedding store")


def cluster_workers() -> int:
    """The workers of the flow run's Dask cluster (starting it, when this is the run's first use of it)."""
    return max(1, len(FlowRunContext.get().task_runner.client.nthreads()))


def _wait(futures: list[PrefectFuture], progress_dir: Path, total: int, dataset: str) -> list[Filled]:
    """Wait for every task, moving the run's progress artifact as tasks finish and logging the texts done."""
    logger = get_run_logger()
    artifact = ShardProgress(dataset, len(futures))
    pending, logged_tenth, logged_at = set(futures), 0, time.monotonic()
    while pending:
        done, pending = wait(list(pending), timeout=POLL_S)
        for _ in done:
            artifact.shard_done()
        units = units_done(progress_dir)
        tenth = 10 * units // max(1, total)
        if tenth > logged_tenth or time.monotonic() - logged_at >= LOG_EVERY_S:
            logger.info("embedding: %d of %d texts (%d%%)", units, total, 100 * units // max(1, total))
            logged_tenth, logged_at = tenth, time.monotonic()
    return [future.result() for future in futures]


def embed_stage(texts: Texts, specs: dict[str, EncoderSpec], store_root: str, run_dir: Path,
                runtime: RuntimeConfig, dataset: str) -> Embedded:
    """Fill the run's query and corpus vector matrices: what the store has is copied, the rest embedded and stored.

    Args:
        specs: the encoder of each kind, "query" and "corpus".
        dataset: names the run's progress artifact.
    """
    plan = plan_task.submit(texts, specs, store_root, str(run_dir / "embed"), cluster_workers(), runtime).result()
    create_matrices(plan)
    progress_dir = run_dir / "embed" / "progress"
    embeds, copies = len(plan.embed_ranges), len(plan.copy_ranges)
    futures = [embed_task.with_options(task_run_name=f"embed texts {i + 1}/{embeds}")
               .submit(plan, i, specs, store_root, str(progress_dir)) for i in range(embeds)]
    futures += [copy_task.with_options(task_run_name=f"copy stored vectors {i + 1}/{copies}")
                .submit(plan, i, specs, store_root, texts, str(progress_dir)) for i in range(copies)]
    total = plan.embed_ranges[-1][1] if embeds else 0
    total += plan.copy_ranges[-1][1] if copies else 0
    filled = _wait(futures, progress_dir, total, dataset)

    fingerprints = sorted({spec.fingerprint for spec in specs.values()})
    if any(EmbeddingStore(store_root, fp).needs_compaction() for fp in fingerprints):
        compact_task.submit(store_root, fingerprints).result()
    damaged = set(plan.damaged).union(*(f.damaged for f in filled))
    return Embedded(queries=VectorFile(plan.matrices["query"], plan.rows["query"], plan.dim),
                    corpus=VectorFile(plan.matrices["corpus"], plan.rows["corpus"], plan.dim),
                    texts_embedded=sum(f.embedded for f in filled), texts_cached=sum(f.copied for f in filled),
                    fingerprints={kind: spec.fingerprint for kind, spec in specs.items()},
                    store_repaired=tuple(sorted(damaged)))
