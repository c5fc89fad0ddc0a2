"""The search-and-mine stage: queries cut into partitions, one task each, then one pass over all of them.

Partitions are contiguous ranges of query rows, a few per worker (tasks/sizing.py); each task streams the whole
corpus for its queries and mines them (tasks/partition.py). The pass that follows (tasks/combine.py) applies the
hub cap in query order and builds the ids table. Re-mining runs the same partitions over stored candidates, without
searching.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from negforge.flows.stage_progress import StageProgress
from negforge.flows.task_options import negforge_task
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import ApproximateSearch, CandidateFiles, Deepened, Embedded, Mined, MinedPartition, Partition, SearchJob, Texts
from negforge.tasks.ann_index import Probe, build_index
from negforge.tasks.combine import combine
from negforge.tasks.recall_probe import probe
from negforge.tasks.partition import mine_partition, search_and_mine
from negforge.tasks.search import SLACK, block_rows
from negforge.tasks.sizing import memory_budget_bytes, ranges, task_count

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


def search_and_mine_all(texts: Texts, embedded: Embedded, config: BuildConfig, depth: int, range_max: int,
                        excluded_docs: str | None, run_dir: Path,
                        workers: int) -> tuple[list[MinedPartition], Deepened, Probe | None]:
    """Search and mine every partition on the workers; also the adaptive-depth report of all of them and, with an
    approximate index, its probe."""
    budget = memory_budget_bytes(config.runtime, workers)
    job = SearchJob(texts=texts, queries=embedded.queries, corpus=embedded.corpus, depth=depth, range_max=range_max,
                    rows_per_block=block_rows(embedded.corpus.dim, budget, embedded.corpus.rows),
                    out_dir=str(run_dir / "search"), progress_dir=str(run_dir / "progress" / "search"),
                    excluded_docs=excluded_docs)
    probe = None
    if config.search.index != "flat":
        probe = _approximate_index(job, config, budget, run_dir)
        job = replace(job, approximate=ApproximateSearch(probe.index, probe.kind, probe.knob))
    partitions = plan_partitions(embedded.queries.rows, embedded.queries.dim * 4 + 64 * (depth + SLACK), workers,
                                 config)
    futures = [_named(search_and_mine_task, "search and mine", p, len(partitions)).submit(p, job, config)
               for p in partitions]
    progress = StageProgress(config.publish.dataset, "search", embedded.queries.rows * embedded.corpus.rows,
                             job.progress_dir)
    parts = progress.results(futures)
    reports = [p.deepened for p in parts]
    deepened = Deepened(queries_short=sum(r.queries_short for r in reports),
                        queries_deepened=sum(r.queries_deepened for r in reports),
                        still_short=sum(r.still_short for r in reports), depth=max(r.depth for r in reports))
    return parts, deepened, probe


def mine_stored_all(texts: Texts, stored: CandidateFiles, queries: int, config: BuildConfig, range_max: int,
                    depth: int, run_dir: Path, workers: int) -> list[MinedPartition]:
    """Mine stored candidates again, partition by partition (re-mining: nothing is searched)."""
    partitions = plan_partitions(queries, 64 * depth, workers, config)
    futures = [_named(mine_partition_task, "mine", p, len(partitions))
               .submit(p, stored, texts, config, range_max, depth, str(run_dir / "mine")) for p in partitions]
    return [future.result() for future in futures]


def combine_all(parts: list[MinedPartition], texts: Texts, config: BuildConfig, run_dir: Path) -> Mined:
    """The pass over all partitions (hub cap, ids table, reasons, audit), as one task."""
    return combine_task.submit(parts, texts, config, str(run_dir / "mine")).result()
