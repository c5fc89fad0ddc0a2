"""The `build-training-set` flow: ingest, validate inputs, embed, (drop near-duplicate documents), search and mine by
query partitions, combine, write, validate the candidate, publish.

Tasks pass paths and small metadata (schemas/stages.py); tables and vectors live in the run workspace. Work is cut
into a few tasks per worker per stage. The task runner (flows/orchestration/dask_cluster.py) reads each run's `runtime`
section, so the same flow, run from the CLI, a served deployment or a worker, uses a local Dask cluster or an existing
scheduler as that run's config says; a local cluster starts while the flow ingests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from prefect import flow, get_run_logger

from negforge.flows.orchestration.console_lines import escape_console_lines
from negforge.flows.orchestration.dask_cluster import BuildTaskRunner, current_task_runner
from negforge.flows.orchestration.preflight import check_budget_for_the_model, preflight, store_shortfall
from negforge.flows.orchestration.task_options import negforge_task, untagged_task_runs
from negforge.flows.orchestration.workdir_mirror import mirrored
from negforge.flows.stages.calibration import calibrated, lexical_index, samples
from negforge.flows.stages.corpus_dedup import dedup_corpus
from negforge.flows.stages.embedding import embed_stage, model_warm_up
from negforge.flows.stages.partition import search_and_mine_all, search_job
from negforge.flows.stages.publishing import mine_and_publish, new_run_dir, timed
from negforge.flows.stages.run_report import publish_artifacts, reject_lines
from negforge.schemas.config import BuildConfig
from negforge.schemas.manifest import (
    Calibration,
    Counts,
    Embed,
    Model,
    Provenance,
    Published,
    Rejects,
    Search,
    TopicBound,
)
from negforge.schemas.stages import (
    CalibrationFiles,
    CorpusDeduplicated,
    Embedded,
    Ingested,
    MinedPartition,
    SearchJob,
    StoreMeta,
    Texts,
)
from negforge.tasks.embedding.model import embedding_dimension, resolve_model
from negforge.tasks.gate.gates import check_inputs
from negforge.tasks.ingest.ingest import ingest
from negforge.tasks.registry.registries import config_registry
from negforge.tasks.registry.up_to_date import unchanged_version, up_to_date_result
from negforge.tasks.registry.versions_info import code_version
from negforge.tasks.runtime.os_errors import naming
from negforge.tasks.runtime.sizing import check_budget
from negforge.tasks.search.ann_index import Probe, check_index_settings
from negforge.tasks.storage.mirror import to_remote

ingest_task = negforge_task(ingest, "ingest", retried=True)
validate_inputs_task = negforge_task(check_inputs, "validate inputs")


@flow(name="build-training-set", flow_run_name="build {config.publish.dataset}", validate_parameters=True,
      task_runner=BuildTaskRunner())
def build_training_set(config: BuildConfig) -> Published:
    """Build and publish one version of a training set with mined hard negatives.

    Returns:
        The version folder, whether it was newly published, and the manifest's counts.
    """
    escape_console_lines()  # a served or work-pool run's process: no CLI set it up
    # a write error naming no path is the workdir's: what writes elsewhere (the staged version) names its own
    with untagged_task_runs(), naming(config.runtime.workdir), mirrored(config) as config:
        unchanged = unchanged_version(config, code_version())
        if unchanged:
            result = up_to_date_result(config, unchanged)
            get_run_logger().info("up to date: %s (inputs, config, model and code unchanged)", result.version_dir)
            registry = config_registry(config)
            publish_artifacts(registry.manifest(unchanged), result.version_dir, published=False,
                              files=registry.local_copy(unchanged))
            return result
        runner = current_task_runner()
        starter = runner.start_in_background(model_warm_up(config)) if runner else None
        try:
            return _build(config, runner.worker_count if runner else lambda: 1)
        finally:
            if starter:
                starter.join()


def _build(config: BuildConfig, worker_count: Callable[[], int]) -> Published:
    """The build's stages in order, as the README's diagram draws them; each times itself into `timings`."""
    timings: dict[str, float] = {}
    started = datetime.now(timezone.utc)
    run_dir = new_run_dir(config, started)
    preflight(config)
    check_budget_for_the_model(config)
    ingested = _ingest(config, run_dir, timings)
    embedded = _embed(ingested, config, run_dir, worker_count, timings)
    corpus_dedup = _dedup_corpus(ingested.texts, embedded, config, run_dir, worker_count(), timings)
    job = search_job(ingested.texts, embedded, config, corpus_dedup, _lexical_index(ingested.texts, config, timings),
                     run_dir, worker_count())
    calibration = _calibrate(job, config, run_dir, worker_count(), timings)
    job, parts, probe = _search_and_mine(job, calibration.mining, embedded.corpus.rows, run_dir, worker_count(),
                                         timings)
    texts = ingested.texts
    stored = StoreMeta(depth=job.depth, max_positives=texts.max_positives, documents=embedded.corpus.rows,
                       searchable=job.searchable, lexical=job.lexical_index is not None, topic=True)
    return mine_and_publish(config, texts, parts, run_dir, timings,
                            _provenance(started, config, ingested, embedded, job, probe, calibration, corpus_dedup,
                                        len(parts), run_dir),
                            stored, mining=calibration.mining,
                            corpus_duplicates=corpus_dedup.corpus_duplicates if corpus_dedup else None,
                            calibration_files=calibration.files, topic_sample=calibration.sample)


def _ingest(config: BuildConfig, run_dir: Path, timings: dict[str, float]) -> Ingested:
    """Read and check the inputs (rejects counted and sampled), then validate them."""
    logger = get_run_logger()
    with timed(timings, "ingest"):
        ingested = ingest_task(config.input, str(run_dir / "ingest"), config.runtime.shard_size)
    counts = ingested.counts
    logger.info("ingested %d documents (%d unique texts), %d queries with positives, %d rows rejected",
                counts.documents, counts.unique_texts, counts.queries_used, counts.rows_rejected)
    for line in reject_lines(ingested.reject_reasons, ingested.reject_samples):
        logger.warning("rows rejected: %s", line)
    check_index_settings(config.search, counts.unique_texts)
    with timed(timings, "validate_inputs"):
        validate_inputs_task(ingested, str(run_dir / "validation" / "inputs"))
    return ingested


def _embed(ingested: Ingested, config: BuildConfig, run_dir: Path, worker_count: Callable[[], int],
           timings: dict[str, float]) -> Embedded:
    """Embed what the store lacks, after checking the memory budget against the model's dimension."""
    logger = get_run_logger()
    dimension = embedding_dimension(resolve_model(config.embed.model))
    if dimension:
        check_budget(config.runtime, worker_count(), dimension)
    shortfall = store_shortfall(config.runtime.workdir, ingested.counts.unique_texts, dimension)
    if shortfall:
        logger.warning(shortfall)
    with timed(timings, "embed"):
        embedded = embed_stage(ingested.texts, config, run_dir, worker_count())
    logger.info("embedded %d texts, %d from the store", embedded.texts_embedded, embedded.texts_cached)
    if embedded.store_repaired:
        logger.warning("embedding store: damaged parts set aside and their texts embedded again: %s",
                       ", ".join(embedded.store_repaired))
    if not dimension:  # a model whose configs do not say: now its vectors do, before any search
        check_budget(config.runtime, worker_count(), embedded.corpus.dim)
    return embedded


def _dedup_corpus(texts: Texts, embedded: Embedded, config: BuildConfig, run_dir: Path, workers: int,
                  timings: dict[str, float]) -> CorpusDeduplicated | None:
    """Near-duplicate documents set aside before search (`dedup.corpus`); None when it is off."""
    if not config.dedup.corpus:
        return None
    with timed(timings, "dedup_corpus"):
        deduplicated = dedup_corpus(texts, embedded.corpus, config, run_dir / "corpus-dedup", workers)
    get_run_logger().info("corpus deduplication dropped %d near-duplicate documents", deduplicated.dropped)
    return deduplicated


def _lexical_index(texts: Texts, config: BuildConfig, timings: dict[str, float]) -> str | None:
    """The BM25 index, when a lexical rule or score needs it."""
    if not config.lexical_scores():
        return None
    with timed(timings, "lexical_index"):
        return lexical_index(texts, config)


@dataclass(frozen=True)
class _Calibrated:
    """The config to mine with and what chose it (all None under mine.strategy fixed without a topic quantile)."""

    mining: BuildConfig
    calibration: Calibration | None = None
    files: CalibrationFiles | None = None
    sample: str | None = None
    topic: TopicBound | None = None


def _calibrate(job: SearchJob, config: BuildConfig, run_dir: Path, workers: int,
               timings: dict[str, float]) -> _Calibrated:
    """Search the topic sample and the calibration candidates, then choose the options to mine with."""
    if config.mine.strategy != "auto" and config.mine.topic_quantile is None:
        return _Calibrated(mining=config)
    with timed(timings, "calibrate"):
        sample, files = samples(job, config, run_dir, workers)
        mining, calibration, topic = calibrated(config, job.texts.positives, files, workers, sample)
    return _Calibrated(mining, calibration, files, sample, topic)


def _search_and_mine(job: SearchJob, mining: BuildConfig, documents: int, run_dir: Path, workers: int,
                     timings: dict[str, float]) -> tuple[SearchJob, list[MinedPartition], Probe | None]:
    """Search and mine every partition with the window of the options mined with (after calibration)."""
    range_max, depth = mining.window_and_depth(job.texts.max_positives)
    job = replace(job, depth=depth, range_max=range_max, bound=mining.depth_bound(job.texts.max_positives, documents))
    with timed(timings, "search_and_mine"):
        parts, probe = search_and_mine_all(job, mining, run_dir, workers)
    if probe:
        (get_run_logger().info if probe.met_target else get_run_logger().warning)(
            "%s index: %s=%d, probe recall %.4f on %d queries (target %s%s), mined negatives changed: %s",
            probe.kind, "nprobe" if probe.kind == "ivf" else "efSearch", probe.knob, probe.recall, probe.queries,
            mining.search.target_recall, "" if probe.met_target else ", NOT met", probe.negatives_changed)
    return job, parts, probe


def _provenance(started: datetime, config: BuildConfig, ingested: Ingested, embedded: Embedded, job: SearchJob,
                probe: Probe | None, calibrated: _Calibrated, corpus_dedup: CorpusDeduplicated | None,
                partitions: int, run_dir: Path) -> Provenance:
    """The manifest entries only the build knows, from what its stages returned (the publishing tail adds the rest)."""
    return Provenance(
        created_at=started.isoformat(), inputs=list(ingested.inputs),
        model=Model(name=config.embed.model, weights_sha256=resolve_model(config.embed.model).weights_sha256,
                    fingerprints=embedded.fingerprints),
        embed=Embed(texts_embedded=embedded.texts_embedded, texts_cached=embedded.texts_cached,
                    store_repaired=list(embedded.store_repaired)),
        search=Search(depth=job.depth, range_max=job.range_max, index=config.search.index,
                      probe=asdict(probe) if probe else None),
        counts=Counts(**ingested.counts.as_dict()),
        rejects=Rejects(path=ingested.rejects_path, reasons=ingested.reject_reasons,
                        samples=ingested.reject_samples),
        calibration=calibrated.calibration, topic=calibrated.topic, run_dir=to_remote(str(run_dir)),
        task_runs={"embed": embedded.task_runs, "dedup_corpus": corpus_dedup.task_runs if corpus_dedup else 0,
                   "approximate_index": 2 if probe else 0, "search_and_mine": partitions},
        corpus_dedup={"dropped": corpus_dedup.dropped, "record": "candidates/corpus-duplicates.parquet"}
        if corpus_dedup else None,
    )
