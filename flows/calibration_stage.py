"""The lexical index, the topic sample and the calibration, before the search-and-mine stage; also what a remine
calibrates on.

The BM25 index is built once per run (a task; cached by corpus content under runtime.workdir). The topic sample
(tasks/topic.py; with `mine.strategy: auto` or `mine.topic_quantile`) is one task per worker searching its share of
the sampled queries to TOPIC_SIZE. With `mine.strategy: auto`, one task per worker searches its share of the
multi-positive queries to the grid's largest depth, one task per worker mines its share of the grid's settings in
every fold, and the flow chooses (tasks/calibration.py); the build then mines with the choice, its topic quantile
turned into a bound from the sample. Nothing is published from a calibration that did not finish: it runs before
mining, in the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import get_run_logger

from negforge.flows.task_options import negforge_task
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Calibration, CalibrationFiles, SearchJob, Texts
from negforge.tasks.calibration import (MIN_QUERIES, applicable_settings, applied, calibration_rows, chosen_setting,
                                        fallback, grid_depth, measure_settings, save_calibration)
from negforge.tasks.calibration_search import TABLES, calibration_candidates
from negforge.tasks.lexical import LexicalError, build_index
from negforge.tasks.topic import sample_rows, with_topic_bound
from negforge.tasks.topic_sample import sample_topic_centrality

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


def build_calibration(job: SearchJob, config: BuildConfig, run_dir: Path, workers: int) -> CalibrationFiles | None:
    """The calibration candidates of a build with mine.strategy auto (None: fixed, or too few queries to calibrate):
    the multi-positive queries split into one contiguous share per worker, the parts joined in query order."""
    if config.mine.strategy != "auto":
        return None
    rows = calibration_rows(pl.read_parquet(job.texts.positives))
    if len(rows) < MIN_QUERIES:
        return None
    depth = grid_depth(config, job.texts.max_positives, job.corpus.rows)
    futures = [calibration_candidates_task.submit(job, config, share.tolist(), depth)
               for share in np.array_split(np.array(rows), workers) if len(share)]
    parts = [future.result() for future in futures]
    meta = {"depth": depth, "folds": config.mine.calibration_folds, "seed": config.mine.seed,
            "max_positives": job.texts.max_positives, "documents": job.corpus.rows, "searchable": job.searchable}
    return save_calibration(run_dir / "calibration",
                            {name: pl.concat([part[name] for part in parts]) for name in TABLES}, meta)


def topic_sample(job: SearchJob, config: BuildConfig, run_dir: Path, workers: int) -> str | None:
    """The topic sample's file (None when nothing derives a topic bound: mine.strategy fixed without
    mine.topic_quantile): the sampled queries split into one contiguous share per worker, joined in query order."""
    if config.mine.strategy != "auto" and config.mine.topic_quantile is None:
        return None
    rows = sample_rows(pl.read_parquet(job.texts.positives, columns=["query_row", "query_id"]))
    futures = [topic_sample_task.submit(job, share.tolist()) for share in np.array_split(np.array(rows), workers)
               if len(share)]
    path = run_dir / "topic-sample.parquet"
    pl.concat([future.result() for future in futures]).write_parquet(path)
    return str(path)


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
               sample: str | None) -> tuple[BuildConfig, Calibration | None, dict[str, Any] | None]:
    """The config to mine with (the calibration's choice applied, a topic quantile turned into its bound from the
    topic sample `sample`), the calibration that chose it (None: fixed) and the topic bound derived (None: none)."""
    calibration = None
    if config.mine.strategy == "auto":
        calibration = _calibration(config, positives, files, workers, sample)
        config = applied(config, calibration.settings)
    mining, topic = with_topic_bound(config, pl.read_parquet(sample) if sample else None)
    if topic:
        get_run_logger().info("topic bound: max_topic_centrality %s, the %s quantile of %d positives of %d queries",
                              topic["max_topic_centrality"], topic["quantile"], topic["positives"], topic["queries"])
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
