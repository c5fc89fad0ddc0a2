"""The search-and-mine stage: queries cut into partitions, one task each, then one pass over all of them.

Partitions are contiguous ranges of query rows, a few per worker (tasks/runtime/sizing.py); each task streams the whole
corpus for its queries and mines them (tasks/mining/partition.py). The pass that follows (tasks/mining/combine.py)
applies the hub cap in query order and builds the ids table. Re-mining runs the same partitions over stored candidates,
without searching.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from negforge.flows.orchestration.stage_progress import StageProgress
from negforge.flows.orchestration.task_options import negforge_task
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import (
    ApproximateSearch,
    CandidateFiles,
    CorpusDeduplicated,
    Embedded,
    Mined,
    MinedPartition,
    Partition,
    SearchJob,
    Texts,
)
from negforge.tasks.mining.combine import combine
from negforge.tasks.mining.partition import mine_partition, search_and_mine
from negforge.tasks.mining.recall_probe import probe
from negforge.tasks.runtime.sizing import memory_budget_bytes, ranges, task_count
from negforge.tasks.search.ann_index import Probe, build_index
from negforge.tasks.search.exact import SLACK, block_rows

search_and_mine_task = negforge_task(search_and_mine, "search and mine", retried=True)
mine_partition_task = negforge_task(mine_partition, "mine")
combine_task = negforge_task(combine, "combine partitions")
build_index_task = negforge_task(build_index, "build approximate index", retried=True)
probe_task = negforge_task(probe, "recall probe")


def plan_partitions(queries: int, bytes_per_query: int, workers: int, config: BuildConfig) -> list[Partition]:
    count = task_count(queries, bytes_per_query, workers, config.runtime)
    return [Partition(number=i, first=a, stop=b) for i, (a, b) in enumerate(ranges(queries, count))]


def _named(task, what: str, partition: Partition, total: int):
    return task.with_options(task_run_name=f"{what} {partition.number + 1}/{total}")


def _approximate_index(job: SearchJob, config: BuildConfig, budget: int, run_dir: Path) -> Probe:
    """Build the approximate index once, then tune and measure it on the probe (one task each)."""
    path = build_index_task.submit(job.corpus, job.excluded_docs, config.search, budget,
                                   str(run_dir / f"{config.search.index}.faiss")).result()
    return probe_task.submit(job, path, config).result()


def search_job(texts: Texts, embedded: Embedded, config: BuildConfig, excluded: CorpusDeduplicated | None,
               lexical_index: str | None, run_dir: Path, workers: int) -> SearchJob:
    """What every partition task of a build (and the calibration) shares."""
    range_max, depth = config.window_and_depth(texts.max_positives)
    searchable = embedded.corpus.rows - (excluded.dropped if excluded else 0)
    return SearchJob(texts=texts, queries=embedded.queries, corpus=embedded.corpus, depth=depth, range_max=range_max,
                     rows_per_block=block_rows(embedded.corpus.dim, memory_budget_bytes(config.runtime, workers),
                                               embedded.corpus.rows),
                     out_dir=str(run_dir / "search"), progress_dir=str(run_dir / "progress" / "search"),
                     searchable=searchable, bound=config.depth_bound(texts.max_positives, embedded.corpus.rows),
                     excluded_docs=excluded.excluded_docs if excluded else None, lexical_index=lexical_index)


def search_and_mine_all(job: SearchJob, config: BuildConfig, run_dir: Path,
                        workers: int) -> tuple[list[MinedPartition], Probe | None]:
    """Search and mine every partition on the workers; with an approximate index, also its probe."""
    probe = None
    if config.search.index != "flat":
        probe = _approximate_index(job, config, memory_budget_bytes(config.runtime, workers), run_dir)
        job = replace(job, approximate=ApproximateSearch(probe.index, probe.kind, probe.knob))
    partitions = plan_partitions(job.queries.rows, job.queries.dim * 4 + 64 * (job.depth + SLACK), workers, config)
    futures = [_named(search_and_mine_task, "search and mine", p, len(partitions)).submit(p, job, config)
               for p in partitions]
    progress = StageProgress(config.publish.dataset, "search", job.queries.rows * job.corpus.rows,
                             job.progress_dir)
    return progress.results(futures), probe


def mine_stored_all(texts: Texts, stored: CandidateFiles, queries: int, config: BuildConfig, range_max: int,
                    levels: list[int], searchable: int, run_dir: Path, workers: int) -> list[MinedPartition]:
    """Mine stored candidates again, partition by partition (re-mining: nothing is searched), each query to the
    adaptive-depth level that fills it."""
    partitions = plan_partitions(queries, 64 * levels[-1], workers, config)
    futures = [_named(mine_partition_task, "mine", p, len(partitions))
               .submit(p, stored, texts, config, range_max, levels, searchable, str(run_dir / "mine"))
               for p in partitions]
    return [future.result() for future in futures]


def combine_all(parts: list[MinedPartition], texts: Texts, config: BuildConfig, run_dir: Path) -> Mined:
    """The pass over all partitions (hub cap, ids table, reasons, audit), as one task."""
    return combine_task.submit(parts, texts, config, str(run_dir / "mine")).result()
