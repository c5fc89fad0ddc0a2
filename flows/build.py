"""The `build-training-set` flow: ingest, validate inputs, embed, (drop near-duplicate documents), search and mine by
query partitions, combine, write, validate the candidate, publish.

Tasks pass paths and small metadata (schemas/stages.py); tables and vectors live in the run workspace. Work is cut
into a few tasks per worker per stage. The task runner (flows/orchestration/dask_cluster.py) reads each run's `runtime` section, so
the same flow, run from the CLI, a served deployment or a worker, uses a local Dask cluster or an existing scheduler
as that run's config says; a local cluster starts while the flow ingests.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from negforge.flows.orchestration.console_lines import escape_console_lines
from negforge.flows.stages.corpus_dedup import dedup_corpus
from negforge.flows.stages.embedding import embed_stage, model_warm_up
from negforge.flows.stages.calibration import calibrated, lexical_index, samples
from negforge.flows.stages.partition import combine_all, search_and_mine_all, search_job
from negforge.flows.stages.run_report import publish_artifacts, reject_lines
from negforge.flows.orchestration.task_options import negforge_task, untagged_task_runs
from negforge.flows.orchestration.dask_cluster import BuildTaskRunner, current_task_runner
from negforge.flows.versions_info import code_version, package_versions
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import CalibrationFiles, Deepened, Mined, MinedPartition, StoreMeta, Texts
from negforge.tasks.registry.candidates import save_candidates
from negforge.tasks.registry.charts import version_charts
from negforge.tasks.registry.dataset_card import dataset_card
from negforge.tasks.ingest.ingest import ingest
from negforge.tasks.search.ann_index import check_index_settings
from negforge.tasks.embedding.model import embedding_dimension, resolve_model
from negforge.tasks.runtime.preflight import check_budget_for_the_model, naming, preflight, store_shortfall
from negforge.tasks.runtime.sizing import check_budget
from negforge.tasks.gate.gates import check_candidate, check_inputs
from negforge.tasks.registry.versions import Registry
from negforge.tasks.registry.training_set import write_training_set
from negforge.tasks.registry.up_to_date import side_inputs, unchanged_version, up_to_date_result

ingest_task = negforge_task(ingest, "ingest", retried=True)
validate_inputs_task = negforge_task(check_inputs, "validate inputs")
validate_candidate_task = negforge_task(check_candidate, "validate candidate")
charts_task = negforge_task(version_charts, "draw charts")


@task(name="write training set", task_run_name="write training set", cache_policy=NO_CACHE)
def write_task(mined: Mined, texts: Texts, config: BuildConfig, staging: str) -> dict[str, Any]:
    """Join texts back and write data/, ids/ and exports into the staging folder."""
    return write_training_set(pl.read_parquet(mined.ids), pl.read_parquet(mined.positives or texts.positives),
                              texts.query_files, texts.corpus_files, config.output,
                              config.mine.num_negatives, staging, config.input)


@task(name="publish", task_run_name="publish", cache_policy=NO_CACHE)
def publish_task(staging: str, config: BuildConfig, manifest: dict[str, Any], parent: str | None) -> dict[str, Any]:
    """Number the staged version and move it into the registry, unless it equals the newest one."""
    registry = Registry(config.publish.registry, config.publish.dataset)
    version_dir, published = registry.publish(Path(staging), manifest | {"parent": parent}, dataset_card)
    return {"version_dir": str(version_dir), "published": published, "version": version_dir.name}


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def new_run_dir(config: BuildConfig, started: datetime) -> Path:
    """The run's own workspace under runtime.workdir/runs."""
    return Path(config.runtime.workdir) / "runs" / f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


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

    with _timed(timings, "ingest"):
        ingested = ingest_task(config.input, str(run_dir / "ingest"), config.runtime.shard_size)
    texts, counts = ingested.texts, ingested.counts
    logger.info("ingested %d documents (%d unique texts), %d queries with positives, %d rows rejected",
                counts.documents, counts.unique_texts, counts.queries_used, counts.rows_rejected)
    for line in reject_lines(ingested.reject_reasons, ingested.reject_samples):
        logger.warning("rows rejected: %s", line)
    check_index_settings(config.search, counts.unique_texts)
    with _timed(timings, "validate_inputs"):
        validate_inputs_task(ingested, str(run_dir / "validation" / "inputs"))

    dimension = embedding_dimension(resolve_model(config.embed.model))
    if dimension:
        check_budget(config.runtime, worker_count(), dimension)
    shortfall = store_shortfall(config.runtime.workdir, counts.unique_texts, dimension)
    if shortfall:
        logger.warning(shortfall)
    with _timed(timings, "embed"):
        embedded = embed_stage(texts, config, run_dir, worker_count())
    logger.info("embedded %d texts, %d from the store", embedded.texts_embedded, embedded.texts_cached)
    if embedded.store_repaired:
        logger.warning("embedding store: damaged parts set aside and their texts embedded again: %s",
                       ", ".join(embedded.store_repaired))
    if not dimension:  # a model whose configs do not say: now its vectors do, before any search
        check_budget(config.runtime, worker_count(), embedded.corpus.dim)

    corpus_dedup = None
    if config.dedup.corpus:
        with _timed(timings, "dedup_corpus"):
            corpus_dedup = dedup_corpus(texts, embedded.corpus, config, run_dir / "corpus-dedup", worker_count())
        logger.info("corpus deduplication dropped %d near-duplicate documents", corpus_dedup.dropped)

    index = None
    if config.lexical_scores():
        with _timed(timings, "lexical_index"):
            index = lexical_index(texts, config)
    job = search_job(texts, embedded, config, corpus_dedup, index, run_dir, worker_count())
    mining, calibration, calibration_files, sample, topic = config, None, None, None, None
    if config.mine.strategy == "auto" or config.mine.topic_quantile is not None:
        with _timed(timings, "calibrate"):
            sample, calibration_files = samples(job, config, run_dir, worker_count())
            mining, calibration, topic = calibrated(config, texts.positives, calibration_files, worker_count(), sample)
    range_max, depth = mining.window_and_depth(texts.max_positives)  # the window of the options mined with
    job = replace(job, depth=depth, range_max=range_max,
                  bound=mining.depth_bound(texts.max_positives, embedded.corpus.rows))
    with _timed(timings, "search_and_mine"):
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
        "calibration": calibration.as_dict() if calibration else None, "topic": topic,
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


def mine_and_publish(config: BuildConfig, texts: Texts, parts: list[MinedPartition], run_dir: Path,
                     timings: dict[str, float], base: dict[str, Any], stored: StoreMeta, parent: str | None = None,
                     mining: BuildConfig | None = None, corpus_duplicates: str | None = None,
                     calibration_files: CalibrationFiles | None = None,
                     topic_sample: str | None = None) -> dict[str, Any]:
    """The tail shared by build and remine: combine the mined partitions, write (with the candidates), validate,
    publish.

    Args:
        config: the config as given (the manifest's `config`).
        base: the manifest entries the caller knows (inputs, model, embedding counts, search, counts, calibration).
        stored: what the stored candidates are (their search depth, sizes, BM25 scores), for re-mining.
        parent: the version a remine started from (default: the registry's LATEST at publish time).
        mining: the config mined with (the calibration's choice applied; default: config).
        corpus_duplicates: the corpus deduplication record, kept with the candidates.
        calibration_files: the calibration's candidates, kept with the candidates.
        topic_sample: the topic sample (tasks/mining/topic.py), kept with the candidates.
    """
    logger = get_run_logger()
    mining = mining or config
    with _timed(timings, "combine"):
        mined = combine_all(parts, texts, mining, run_dir)
    deepened = Deepened.total([p.deepened for p in parts])
    if deepened.needs_deeper:
        logger.warning("%d queries stay short of negatives: a build would search them deeper than the stored "
                       "candidates go (to depth %s); run negforge build for them", deepened.needs_deeper,
                       mining.depth_bound(stored.max_positives, stored.documents))
    if mined.suspected["not_promoted"]:
        logger.warning("%d suspected positives in %d queries were not promoted (more than "
                       "mine.max_promoted_per_positive=%s per known positive): dropped as suspected_not_promoted",
                       mined.suspected["not_promoted"], mined.suspected["queries_not_promoted"],
                       mining.mine.max_promoted_per_positive)

    registry = Registry(config.publish.registry, config.publish.dataset)
    with registry.staged() as staging:  # removed however this ends (a refused candidate is in quarantine by then)
        with _timed(timings, "write"), naming(staging):
            written = write_task(mined, texts, mining, str(staging))
            save_candidates(staging / "candidates", [p.candidates for p in parts], texts, stored, corpus_duplicates,
                            calibration_files.folder if calibration_files else None, topic_sample)
        latest = registry.latest()
        with _timed(timings, "validate"):
            validation = validate_candidate_task(str(staging), mined, texts, mining,
                                                 registry.manifest(latest) if latest else None,
                                                 str(run_dir / "validation" / "candidate"))
        with _timed(timings, "charts"), naming(staging):
            charts = charts_task(str(staging), mined, base.get("calibration"))
        for warning in validation["warnings"]:
            logger.warning("drift: %s", warning)

        manifest = {
            "dataset": config.publish.dataset, "version": None, "parent": None, "data_hash": None,
            "code_version": code_version(), "packages": package_versions(),
            "config": config.model_dump(mode="json", by_alias=True), **base,
            "counts": base["counts"] | {"rows": written["rows"], "id_rows": written["id_rows"]},
            "reasons": mined.reasons, "reasons_per_query": mined.reasons_per_query,
            "short_queries": {"count": len(mined.short_queries), "ids": list(mined.short_queries)},
            "adaptive_depth": {"bound": mining.depth_bound(stored.max_positives, stored.documents),
                               **asdict(deepened)},
            "suspected_positives": mined.suspected | {"promoted": mining.mine.promote_suspected},
            "dropped_eval_queries": list(mined.dropped_eval_queries), "audit": mined.audit,
            "side_inputs": side_inputs(config),
            "scores": {"positive": asdict(mined.positive_score_stats), "negative": asdict(mined.negative_score_stats)},
            "validation": validation, "charts": charts,
            "files": written["files"] | {"bytes": written["bytes"]}, "timings": timings,
        }
        with naming(staging / "validation" / "data_docs"):
            shutil.copytree(Path(validation["data_docs"]).parent, staging / "validation" / "data_docs")
        with _timed(timings, "publish"):
            published = publish_task(str(staging), config, manifest, parent)
    if published["published"]:
        logger.info("published %s", published["version_dir"])
    else:
        logger.info("up to date: %s", published["version_dir"])
    stored = json.loads((Path(published["version_dir"]) / "manifest.json").read_text())
    publish_artifacts(manifest | {key: stored[key] for key in ("version", "parent", "data_hash")},
                      published["version_dir"], published["published"])
    evaluation = None
    if published["published"] and config.evaluate.eval:
        from negforge.flows.evaluate import evaluate_after_publish  # the evaluate flow re-mines through this module

        evaluation = evaluate_after_publish(config, published["version"])
    return published | {"counts": manifest["counts"], "embed": manifest["embed"], "timings": timings,
                        "short_queries": manifest["short_queries"]["count"], "reasons": manifest["reasons"],
                        "evaluation": evaluation}
