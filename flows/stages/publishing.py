"""The publishing tail of build and remine (and so of the evaluation's baselines, which re-mine): combine the mined
partitions, write the training set and the candidates into a staging folder, validate the candidate, draw its charts,
assemble the manifest, publish, report.

The staging folder is removed however this ends; a refused candidate is in quarantine by then.
"""

from __future__ import annotations

import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from negforge.flows.orchestration.task_options import negforge_task
from negforge.flows.stages.partition import combine_all
from negforge.flows.stages.run_report import publish_artifacts
from negforge.schemas.config import NOT_RECORDED, BuildConfig
from negforge.schemas.manifest import Manifest, Provenance, Published
from negforge.schemas.stages import CalibrationFiles, Deepened, Mined, MinedPartition, StoreMeta, Texts, WrittenSet
from negforge.tasks.gate.gates import check_candidate
from negforge.tasks.registry.candidates import save_candidates
from negforge.tasks.registry.charts import version_charts
from negforge.tasks.registry.dataset_card import dataset_card
from negforge.tasks.registry.registries import config_registry
from negforge.tasks.registry.training_set import write_training_set
from negforge.tasks.registry.up_to_date import side_inputs
from negforge.tasks.registry.versions_info import code_version, package_versions
from negforge.tasks.runtime.os_errors import naming

validate_candidate_task = negforge_task(check_candidate, "validate candidate")
charts_task = negforge_task(version_charts, "draw charts")


@task(name="write training set", task_run_name="write training set", cache_policy=NO_CACHE)
def write_task(mined: Mined, texts: Texts, config: BuildConfig, staging: str) -> WrittenSet:
    """Join texts back and write data/, ids/ and exports into the staging folder."""
    return write_training_set(pl.read_parquet(mined.ids), pl.read_parquet(mined.positives or texts.positives),
                              texts.query_files, texts.corpus_files, config.output,
                              config.mine.num_negatives, staging, config.input)


@task(name="publish", task_run_name="publish", cache_policy=NO_CACHE)
def publish_task(staging: str, config: BuildConfig, manifest: Manifest, parent: str | None) -> tuple[Any, bool]:
    """Number the staged version and move it into the registry, unless it equals the newest one: the version's
    folder, and whether it is new."""
    registry = config_registry(config)
    return registry.publish(Path(staging), manifest.model_copy(update={"parent": parent}), dataset_card)


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def new_run_dir(config: BuildConfig, started: datetime) -> Path:
    """The run's own workspace under runtime.workdir/runs."""
    return Path(config.runtime.workdir) / "runs" / f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def mine_and_publish(config: BuildConfig, texts: Texts, parts: list[MinedPartition], run_dir: Path,
                     timings: dict[str, float], provenance: Provenance, stored: StoreMeta, parent: str | None = None,
                     mining: BuildConfig | None = None, corpus_duplicates: str | None = None,
                     calibration_files: CalibrationFiles | None = None,
                     topic_sample: str | None = None) -> Published:
    """The tail shared by build and remine: combine the mined partitions, write (with the candidates), validate,
    publish.

    Args:
        config: the config as given (the manifest's `config`).
        provenance: the manifest entries the caller knows (inputs, model, embedding counts, search, counts,
            calibration)
        stored: what the stored candidates are (their search depth, sizes, BM25 scores), for re-mining.
        parent: the version a remine started from (default: the registry's LATEST at publish time).
        mining: the config mined with (the calibration's choice applied; default: config).
        corpus_duplicates: the corpus deduplication record, kept with the candidates.
        calibration_files: the calibration's candidates, kept with the candidates.
        topic_sample: the topic sample (tasks/mining/topic.py), kept with the candidates.
    """
    logger = get_run_logger()
    mining = mining or config
    with timed(timings, "combine"):
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

    registry = config_registry(config)
    with registry.staged() as staging:  # removed however this ends (a refused candidate is in quarantine by then)
        with timed(timings, "write"), naming(staging):
            written = write_task(mined, texts, mining, str(staging))
            save_candidates(staging / "candidates", [p.candidates for p in parts], texts, stored, corpus_duplicates,
                            calibration_files.folder if calibration_files else None, topic_sample)
        latest = registry.latest()
        with timed(timings, "validate"):
            validation = validate_candidate_task(str(staging), mined, texts, mining,
                                                 registry.manifest(latest) if latest else None,
                                                 str(run_dir / "validation" / "candidate"))
        with timed(timings, "charts"), naming(staging):
            charts = charts_task(str(staging), mined, provenance.calibration)
        for warning in validation.warnings:
            logger.warning("drift: %s", warning)

        manifest = Manifest.model_validate({
            "dataset": config.publish.dataset, "version": None, "parent": None, "data_hash": None,
            "code_version": code_version(), "packages": package_versions(),
            "config": config.model_dump(mode="json", by_alias=True, exclude=NOT_RECORDED),
            **provenance.model_dump(exclude_unset=True),
            "counts": provenance.counts.model_copy(update={"rows": written.rows, "id_rows": written.id_rows}),
            "reasons": mined.reasons, "reasons_per_query": mined.reasons_per_query,
            "short_queries": {"count": len(mined.short_queries), "ids": list(mined.short_queries)},
            "adaptive_depth": {"bound": mining.depth_bound(stored.max_positives, stored.documents),
                               **asdict(deepened)},
            "suspected_positives": mined.suspected | {"promoted": mining.mine.promote_suspected},
            "dropped_eval_queries": list(mined.dropped_eval_queries), "audit": mined.audit,
            "side_inputs": side_inputs(config),
            "scores": {"positive": asdict(mined.positive_score_stats), "negative": asdict(mined.negative_score_stats)},
            "validation": validation, "charts": charts,
            "files": written.files | {"bytes": written.bytes}, "timings": timings,
        })
        with naming(staging / "validation" / "data_docs"):
            shutil.copytree(Path(validation.data_docs).parent, staging / "validation" / "data_docs")
        with timed(timings, "publish"):
            version_dir, published = publish_task(str(staging), config, manifest, parent)
    logger.info("%s %s", "published" if published else "up to date:", version_dir)
    stored = registry.manifest(version_dir.name)
    # timings: with the publish stage's, timed after the manifest was written
    publish_artifacts(manifest.model_copy(update={"version": stored.version, "parent": stored.parent,
                                                  "data_hash": stored.data_hash, "timings": timings}),
                      str(version_dir), published, registry.local_copy(version_dir.name))
    return Published.of(version_dir, manifest, published, timings)
