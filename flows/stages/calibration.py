"""The lexical index, the topic sample and the calibration, before the search-and-mine stage; also what a remine
calibrates on.

The BM25 index is built once per run (a task; cached by corpus content under runtime.workdir). Then, in one round of
tasks: the topic sample (tasks/mining/topic.py; with `mine.strategy: auto` or `mine.topic_quantile`), one task per
worker searching its share of the sampled queries to TOPIC_SIZE, and with `mine.strategy: auto` one task per worker
searching its share of the multi-positive queries to the grid's largest depth. One task per worker then mines its
share of the grid's settings in every fold, and the flow chooses (tasks/calibration/calibrate.py); the build then mines
with the choice, its topic quantile turned into a bound from the sample. Nothing is published from a calibration that
did not finish: it runs before mining, in the same run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
from prefect import get_run_logger

from negforge.flows.orchestration.task_options import negforge_task
from negforge.schemas.config import BuildConfig
from negforge.schemas.manifest import Calibration, TopicBound
from negforge.schemas.stages import CalibrationFiles, SearchJob, Texts
from negforge.tasks.calibration.calibrate import (
    MIN_QUERIES,
    applicable_settings,
    applied,
    calibration_rows,
    chosen_setting,
    fallback,
    grid_depth,
    measure_settings,
    save_calibration,
)
from negforge.tasks.calibration.candidates import TABLES, calibration_candidates
from negforge.tasks.mining.lexical import LexicalError, build_index
from negforge.tasks.mining.topic import sample_rows, with_topic_bound
from negforge.tasks.mining.topic_sample import sample_topic_centrality

lexical_index_task = negforge_task(build_index, "build lexical index", retried=True)
calibration_candidates_task = negforge_task(calibration_candidates, "calibration candidates", retried=True)
measure_settings_task = negforge_task(measure_settings, "calibrate settings")
topic_sample_task = negforge_task(sample_topic_centrality, "topic sample", retried=True)


def lexical_index(texts: Texts, config: BuildConfig) -> str | None:
    """The corpus's BM25 index, when candidates get BM25 scores. A corpus that tokenizes to nothing stops a build
    whose lexical rule is set, and only takes the lexical settings out of a calibration."""
    if not config.lexical_scores():
        return None
    try:
        return lexical_index_task.submit(texts.corpus_files, config.lexical.index_settings(),
                                         config.runtime.workdir).result()
    except LexicalError as error:
        if config.lexical.rules_on():
            raise
        get_run_logger().warning("calibration without its lexical settings: %s", error)
        return None


def multi_positive_queries(positives: str) -> int:
    return len(calibration_rows(pl.read_parquet(positives)))


def samples(job: SearchJob, config: BuildConfig, run_dir: Path, workers: int) -> tuple[str | None,
                                                                                     CalibrationFiles | None]:
    """What is measured on samples of queries before mining, in one round of tasks: the topic sample's file (None:
    nothing derives a topic bound, mine.strategy fixed without mine.topic_quantile) and the calibration candidates
    (None: fixed, or too few queries to calibrate). Each splits its queries into one contiguous share per worker, the
    parts joined in query order; all are submitted before any is awaited."""
    positives = pl.read_parquet(job.texts.positives, columns=["query_row", "query_id", "doc_row"])
    topic = config.mine.strategy == "auto" or config.mine.topic_quantile is not None
    calibration = calibration_rows(positives) if config.mine.strategy == "auto" else []
    calibration = calibration if len(calibration) >= MIN_QUERIES else []
    depth = grid_depth(config, job.texts.max_positives, job.corpus.rows)
    lexical_free = replace(job, lexical_index=None)  # the topic needs no BM25 scores
    topic_futures = [topic_sample_task.submit(lexical_free, share.tolist()) for share in _shares(
        sample_rows(positives) if topic else [], workers)]
    calibration_futures = [calibration_candidates_task.submit(job, config, share.tolist(), depth)
                           for share in _shares(calibration, workers)]
    sample = None
    if topic_futures:
        sample = run_dir / "topic-sample.parquet"
        pl.concat([future.result() for future in topic_futures]).write_parquet(sample)
    if not calibration_futures:
        return (str(sample) if sample else None), None
    parts = [future.result() for future in calibration_futures]
    meta = {"depth": depth, "folds": config.mine.calibration_folds, "seed": config.mine.seed,
            "max_positives": job.texts.max_positives, "documents": job.corpus.rows, "searchable": job.searchable}
    return str(sample) if sample else None, save_calibration(
        run_dir / "calibration", {name: pl.concat([part[name] for part in parts]) for name in TABLES}, meta)


def _shares(rows: list[int], workers: int) -> list[np.ndarray]:
    return [share for share in np.array_split(np.array(rows, dtype=np.int64), workers) if len(share)]


def _calibrate_on_workers(files: CalibrationFiles, positives: str, config: BuildConfig, workers: int,
                          sample: str | None) -> Calibration:
    """The grid's settings split across the cluster's workers (each setting is a remine of the candidates in every
    fold), then the choice, here."""
    names, skipped = applicable_settings(files, sample)
    futures = [measure_settings_task.submit(files, positives, config, names[start::workers], sample)
               for start in range(min(workers, len(names)))]
    measured = {name: frame for future in futures for name, frame in future.result().items()}
    return chosen_setting(files, {name: measured[name] for name in names}, skipped)


def calibrated(config: BuildConfig, positives: str, files: CalibrationFiles | None, workers: int,
               sample: str | None) -> tuple[BuildConfig, Calibration | None, TopicBound | None]:
    """The config to mine with (the calibration's choice applied, a topic quantile turned into its bound from the
    topic sample `sample`), the calibration that chose it (None: fixed) and the topic bound derived (None: none)."""
    calibration = None
    if config.mine.strategy == "auto":
        calibration = _calibration(config, positives, files, workers, sample)
        config = applied(config, calibration.settings)
    mining, topic = with_topic_bound(config, pl.read_parquet(sample) if sample else None)
    if topic:
        get_run_logger().info("topic bound: max_topic_centrality %s, the %s quantile of %d positives of %d queries",
                              topic.max_topic_centrality, topic.quantile, topic.positives, topic.queries)
    return mining, calibration, topic


def _calibration(config: BuildConfig, positives: str, files: CalibrationFiles | None, workers: int,
                 sample: str | None) -> Calibration:
    logger = get_run_logger()
    if files is None:
        calibration = fallback(multi_positive_queries(positives), config)
        logger.warning("calibration: %s", calibration.message)
        return calibration
    calibration = _calibrate_on_workers(files, positives, config, workers, sample)
    for name, reason in calibration.skipped.items():
        logger.warning("calibration: setting %r skipped: %s", name, reason)
    (logger.info if calibration.outcome in ("default", "fewer_false_negatives") else logger.warning)(
        "calibration on %d queries, %d folds: %s (%s)", calibration.queries, calibration.folds, calibration.choice,
        calibration.message)
    return calibration
