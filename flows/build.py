"""The `build-training-set` flow: ingest, validate inputs, embed, (drop near-duplicate documents), search and mine by
query partitions, combine, write, validate the candidate, publish.

Tasks pass paths and small metadata (schemas/stages.py); tables and vectors live in the run workspace. Work is cut
into a few tasks per worker per stage. The task runner (flows/task_runner.py) reads each run's `runtime` section, so
the same flow, run from the CLI, a served deployment or a worker, uses a local Dask cluster or an existing scheduler
as that run's config says; a local cluster starts while the flow ingests.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import polars as pl
from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE

from negforge.flows.corpus_dedup_stage import dedup_corpus
from negforge.flows.embed_stage import embed_stage
from negforge.flows.partition_stage import combine_all, search_and_mine_all
from negforge.flows.run_report import publish_artifacts, reject_lines
from negforge.flows.task_options import negforge_task
from negforge.flows.task_runner import BuildTaskRunner, current_task_runner
from negforge.flows.versions_info import code_version, package_versions
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Mined, MinedPartition, Texts
from negforge.tasks.candidate_store import save_candidates
from negforge.tasks.charts import version_charts
from negforge.tasks.dataset_card import dataset_card
from negforge.tasks.ingest import ingest
from negforge.tasks.ann_index import check_index_settings
from negforge.tasks.model import embedding_dimension, resolve_model
from negforge.tasks.preflight import preflight, store_shortfall
from negforge.tasks.sizing import check_budget
from negforge.tasks.quality_gate import check_candidate, check_inputs
from negforge.tasks.registry import Registry
from negforge.tasks.training_set import write_training_set
from negforge.tasks.up_to_date import side_inputs, unchanged_version, up_to_date_result

ingest_task = negforge_task(ingest, "ingest", retried=True)
validate_inputs_task = negforge_task(check_inputs, "validate inputs")
validate_candidate_task = negforge_task(check_candidate, "validate candidate")
charts_task = negforge_task(version_charts, "draw charts")


@task(name="write training set", task_run_name="write training set", cache_policy=NO_CACHE)
def write_task(mined: Mined, texts: Texts, config: BuildConfig, staging: str) -> dict[str, Any]:
    """Join texts back and write data/, ids/ and exports into the staging folder."""
    return write_training_set(pl.read_parquet(mined.ids), pl.read_parquet(texts.positives),
                              texts.query_files, texts.corpus_files, config.output,
                              config.mine.num_negatives, staging)


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
    with tags("negforge", config.publish.dataset):  # on every task run, so the UI filters a dataset's work
        unchanged = unchanged_version(config, code_version())
        if unchanged:
            get_run_logger().info("up to date: %s (inputs, config, model and code unchanged)", unchanged)
            result = up_to_date_result(unchanged)
            publish_artifacts(result["manifest"], str(unchanged), published=False)
            return result
        runner = current_task_runner()
        starter = runner.start_in_background() if runner else None
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

    range_max, depth = config.window_and_depth(texts.max_positives)
    with _timed(timings, "search_and_mine"):
        parts, deepened, probe = search_and_mine_all(texts, embedded, config, depth, range_max,
                                              corpus_dedup.excluded_docs if corpus_dedup else None, run_dir,
                                              worker_count())
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
        "search": {"depth": depth, "range_max": range_max, "index": config.search.index,
                   "probe": asdict(probe) if probe else None},
        "counts": counts.as_dict(),
        "rejects": {"path": ingested.rejects_path, "reasons": ingested.reject_reasons,
                    "samples": ingested.reject_samples},
        "adaptive_depth": asdict(deepened) if config.mine.max_depth and config.mine.max_depth > depth else None,
        "run_dir": str(run_dir),
        "task_runs": {"embed": embedded.task_runs, "dedup_corpus": corpus_dedup.task_runs if corpus_dedup else 0,
                      "approximate_index": 2 if probe else 0, "search_and_mine": len(parts)},
        "corpus_dedup": {"dropped": corpus_dedup.dropped, "record": "candidates/corpus-duplicates.parquet"}
        if corpus_dedup else None,
    }
    return mine_and_publish(config, texts, parts, deepened.depth, range_max, run_dir, timings, base,
                            stored_depth=depth,
                            corpus_duplicates=corpus_dedup.corpus_duplicates if corpus_dedup else None)


def mine_and_publish(config: BuildConfig, texts: Texts, parts: list[MinedPartition], depth: int, range_max: int,
                     run_dir: Path, timings: dict[str, float], base: dict[str, Any], parent: str | None = None,
                     stored_depth: int | None = None, corpus_duplicates: str | None = None) -> dict[str, Any]:
    """The tail shared by build and remine: combine the mined partitions, write (with the candidates), validate,
    publish.

    Args:
        depth: how many candidates per query were mined (recorded for re-mining).
        base: the manifest entries the caller knows (inputs, model, embedding counts, search, counts).
        parent: the version a remine started from (default: the registry's LATEST at publish time).
        stored_depth: the depth of the candidates the partitions hold (default: depth).
        corpus_duplicates: the corpus deduplication record, kept with the candidates.
    """
    logger = get_run_logger()
    with _timed(timings, "combine"):
        mined = combine_all(parts, texts, config, run_dir)

    registry = Registry(config.publish.registry, config.publish.dataset)
    staging = registry.staging()
    try:
        with _timed(timings, "write"):
            written = write_task(mined, texts, config, str(staging))
            save_candidates(staging / "candidates", [p.candidates for p in parts], texts, stored_depth or depth,
                            corpus_duplicates)
        latest = registry.latest()
        with _timed(timings, "validate"):
            validation = validate_candidate_task(str(staging), mined, texts, config,
                                                 registry.manifest(latest) if latest else None,
                                                 str(run_dir / "validation" / "candidate"))
        with _timed(timings, "charts"):
            charts = charts_task(str(staging), mined)
    except Exception:
        registry.discard(staging)  # a refused candidate was already moved to quarantine
        raise
    for warning in validation["warnings"]:
        logger.warning("drift: %s", warning)

    manifest = {
        "dataset": config.publish.dataset, "version": None, "parent": None, "data_hash": None,
        "code_version": code_version(), "packages": package_versions(),
        "config": config.model_dump(mode="json", by_alias=True), **base,
        "counts": base["counts"] | {"rows": written["rows"], "id_rows": written["id_rows"]},
        "reasons": mined.reasons, "reasons_per_query": mined.reasons_per_query,
        "short_queries": {"count": len(mined.short_queries), "ids": list(mined.short_queries)},
        "dropped_eval_queries": list(mined.dropped_eval_queries), "audit": mined.audit,
        "side_inputs": side_inputs(config),
        "scores": {"positive": asdict(mined.positive_score_stats), "negative": asdict(mined.negative_score_stats)},
        "validation": validation, "charts": charts,
        "files": written["files"] | {"bytes": written["bytes"]}, "timings": timings,
    }
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
