"""The `build-training-set` flow: ingest, validate inputs, embed, (drop near-duplicate documents), search and mine by
query partitions, combine, write, validate the candidate, publish.

Tasks pass paths and small metadata (schemas/stages.py); tables and vectors live in the run workspace. Work is cut
into a few tasks per worker per stage. The task runner (flows/orchestration/dask_cluster.py) reads each run's `runtime`
section, so the same flow, run from the CLI, a served deployment or a worker, uses a local Dask cluster or an existing
scheduler as that run's config says; a local cluster starts while the flow ingests.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger

from negforge.flows.orchestration.console_lines import escape_console_lines
from negforge.flows.orchestration.dask_cluster import BuildTaskRunner, current_task_runner
from negforge.flows.orchestration.task_options import negforge_task, untagged_task_runs
from negforge.flows.stages.calibration import calibrated, lexical_index, samples
from negforge.flows.stages.corpus_dedup import dedup_corpus
from negforge.flows.stages.embedding import embed_stage, model_warm_up
from negforge.flows.stages.partition import search_and_mine_all, search_job
from negforge.flows.stages.publishing import mine_and_publish, new_run_dir, timed
from negforge.flows.stages.run_report import publish_artifacts, reject_lines
from negforge.flows.versions_info import code_version
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import StoreMeta
from negforge.tasks.embedding.model import embedding_dimension, resolve_model
from negforge.tasks.gate.gates import check_inputs
from negforge.tasks.ingest.ingest import ingest
from negforge.tasks.registry.up_to_date import unchanged_version, up_to_date_result
from negforge.tasks.runtime.preflight import check_budget_for_the_model, naming, preflight, store_shortfall
from negforge.tasks.runtime.sizing import check_budget
from negforge.tasks.search.ann_index import check_index_settings

ingest_task = negforge_task(ingest, "ingest", retried=True)
validate_inputs_task = negforge_task(check_inputs, "validate inputs")


@flow(name="build-training-set", flow_run_name="build {config.publish.dataset}", validate_parameters=True,
      task_runner=BuildTaskRunner())
def build_training_set(config: BuildConfig) -> dict[str, Any]:
    """Build and publish one version of a training set with mined hard negatives.

    Returns:
        The version folder, whether it was newly published, and the manifest's counts.
    """
    escape_console_lines()  # a served or work-pool run's process: no CLI set it up
    # a write error naming no path is the workdir's: what writes elsewhere (the staged version) names its own
    with untagged_task_runs(), naming(config.runtime.workdir):
        unchanged = unchanged_version(config, code_version())
        if unchanged:
            get_run_logger().info("up to date: %s (inputs, config, model and code unchanged)", unchanged)
            result = up_to_date_result(unchanged)
            publish_artifacts(result["manifest"], str(unchanged), published=False)
            return result
        runner = current_task_runner()
        starter = runner.start_in_background(model_warm_up(config)) if runner else None
        try:
            return _build(config, runner.worker_count if runner else lambda: 1)
        finally:
            if starter:
                starter.join()


def _build(config: BuildConfig, worker_count: Any) -> dict[str, Any]:
    logger = get_run_logger()
    timings: dict[str, float] = {}
    started = datetime.now(timezone.utc)
    run_dir = new_run_dir(config, started)
    preflight(config)
    check_budget_for_the_model(config)

    with timed(timings, "ingest"):
        ingested = ingest_task(config.input, str(run_dir / "ingest"), config.runtime.shard_size)
    texts, counts = ingested.texts, ingested.counts
    logger.info("ingested %d documents (%d unique texts), %d queries with positives, %d rows rejected",
                counts.documents, counts.unique_texts, counts.queries_used, counts.rows_rejected)
    for line in reject_lines(ingested.reject_reasons, ingested.reject_samples):
        logger.warning("rows rejected: %s", line)
    check_index_settings(config.search, counts.unique_texts)
    with timed(timings, "validate_inputs"):
        validate_inputs_task(ingested, str(run_dir / "validation" / "inputs"))

    dimension = embedding_dimension(resolve_model(config.embed.model))
    if dimension:
        check_budget(config.runtime, worker_count(), dimension)
    shortfall = store_shortfall(config.runtime.workdir, counts.unique_texts, dimension)
    if shortfall:
        logger.warning(shortfall)
    with timed(timings, "embed"):
        embedded = embed_stage(texts, config, run_dir, worker_count())
    logger.info("embedded %d texts, %d from the store", embedded.texts_embedded, embedded.texts_cached)
    if embedded.store_repaired:
        logger.warning("embedding store: damaged parts set aside and their texts embedded again: %s",
                       ", ".join(embedded.store_repaired))
    if not dimension:  # a model whose configs do not say: now its vectors do, before any search
        check_budget(config.runtime, worker_count(), embedded.corpus.dim)

    corpus_dedup = None
    if config.dedup.corpus:
        with timed(timings, "dedup_corpus"):
            corpus_dedup = dedup_corpus(texts, embedded.corpus, config, run_dir / "corpus-dedup", worker_count())
        logger.info("corpus deduplication dropped %d near-duplicate documents", corpus_dedup.dropped)

    index = None
    if config.lexical_scores():
        with timed(timings, "lexical_index"):
            index = lexical_index(texts, config)
    job = search_job(texts, embedded, config, corpus_dedup, index, run_dir, worker_count())
    mining, calibration, calibration_files, sample, topic = config, None, None, None, None
    if config.mine.strategy == "auto" or config.mine.topic_quantile is not None:
        with timed(timings, "calibrate"):
            sample, calibration_files = samples(job, config, run_dir, worker_count())
            mining, calibration, topic = calibrated(config, texts.positives, calibration_files, worker_count(), sample)
    range_max, depth = mining.window_and_depth(texts.max_positives)  # the window of the options mined with
    job = replace(job, depth=depth, range_max=range_max,
                  bound=mining.depth_bound(texts.max_positives, embedded.corpus.rows))
    with timed(timings, "search_and_mine"):
        parts, probe = search_and_mine_all(job, mining, run_dir, worker_count())
    if probe:
        (logger.info if probe.met_target else logger.warning)(
            "%s index: %s=%d, probe recall %.4f on %d queries (target %s%s), mined negatives changed: %s",
            probe.kind, "nprobe" if probe.kind == "ivf" else "efSearch", probe.knob, probe.recall, probe.queries,
            config.search.target_recall, "" if probe.met_target else ", NOT met", probe.negatives_changed)
    base = {
        "created_at": started.isoformat(), "inputs": list(ingested.inputs),
        "model": {"name": config.embed.model, "weights_sha256": resolve_model(config.embed.model).weights_sha256,
                  "fingerprints": embedded.fingerprints},
        "embed": {"texts_embedded": embedded.texts_embedded, "texts_cached": embedded.texts_cached,
                  "store_repaired": list(embedded.store_repaired)},
        "search": {"depth": job.depth, "range_max": job.range_max, "index": config.search.index,
                   "probe": asdict(probe) if probe else None},
        "counts": counts.as_dict(),
        "rejects": {"path": ingested.rejects_path, "reasons": ingested.reject_reasons,
                    "samples": ingested.reject_samples},
        "calibration": calibration, "topic": topic,
        "run_dir": str(run_dir),
        "task_runs": {"embed": embedded.task_runs, "dedup_corpus": corpus_dedup.task_runs if corpus_dedup else 0,
                      "approximate_index": 2 if probe else 0, "search_and_mine": len(parts)},
        "corpus_dedup": {"dropped": corpus_dedup.dropped, "record": "candidates/corpus-duplicates.parquet"}
        if corpus_dedup else None,
    }
    stored = StoreMeta(depth=job.depth, max_positives=texts.max_positives, documents=embedded.corpus.rows,
                       searchable=job.searchable, lexical=job.lexical_index is not None, topic=True)
    return mine_and_publish(config, texts, parts, run_dir, timings, base, stored, mining=mining,
                            corpus_duplicates=corpus_dedup.corpus_duplicates if corpus_dedup else None,
                            calibration_files=calibration_files, topic_sample=sample)


