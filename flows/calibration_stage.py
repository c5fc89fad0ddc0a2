"""The lexical index and the calibration, before the search-and-mine stage; also what a remine calibrates on.

The BM25 index is built once per run (a task; cached by corpus content under runtime.workdir). With `mine.strategy:
auto`, one task per worker searches its share of the multi-positive queries to the grid's largest depth, one task per
worker mines its share of the grid's settings in every fold, and the flow chooses (tasks/calibration.py); the build
then mines with the choice. Nothing is published from a calibration that did not finish: it runs before mining, in
the same run.
"""

from __future__ import annotations

from pathlib import Path

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

lexical_index_task = negforge_task(build_index, "build lexical index", retried=True)
calibration_candidates_task = negforge_task(calibration_candidates, "calibration candidates", retried=True)
measure_settings_task = negforge_task(measure_settings, "calibrate settings")


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


def _calibrate_on_workers(files: CalibrationFiles, positives: str, config: BuildConfig, workers: int) -> Calibration:
    """The grid's settings split across the cluster's workers (28 settings x 3 folds took ~2 s on one), then the
    choice, here."""
    names, skipped = applicable_settings(files)
    futures = [measure_settings_task.submit(files, positives, config, names[start::workers])
               for start in range(min(workers, len(names)))]
    measured = {name: frame for future in futures for name, frame in future.result().items()}
    return chosen_setting(files, {name: measured[name] for name in names}, skipped)


def calibrated(config: BuildConfig, positives: str, files: CalibrationFiles | None,
               workers: int) -> tuple[BuildConfig, Calibration | None]:
    """The config to mine with (the chosen setting applied) and the calibration that chose it (None: fixed)."""
    if config.mine.strategy != "auto":
        return config, None
    logger = get_run_logger()
    if files is None:
        calibration = fallback(multi_positive_queries(positives), config)
        logger.warning("calibration: %s", calibration.message)
        return config, calibration
    calibration = _calibrate_on_workers(files, positives, config, workers)
    for name, reason in calibration.skipped.items():
        logger.warning("calibration: setting %r skipped: %s", name, reason)
    (logger.info if calibration.outcome in ("lowest_false_negative_rate", "tied_and_harder") else logger.warning)(
        "calibration on %d queries, %d folds: %s (%s)", calibration.queries, calibration.folds, calibration.choice,
        calibration.message)
    return applied(config, calibration.settings), calibration
