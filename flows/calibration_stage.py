"""The lexical index and the calibration, before the search-and-mine stage; also what a remine calibrates on.

The BM25 index is built once per run (a task; cached by corpus content under runtime.workdir). With `mine.strategy:
auto`, one task searches the multi-positive queries to the grid's largest depth and a second mines every grid
setting in every fold and chooses (tasks/calibration.py); the build then mines with the choice. Nothing is published
from a calibration that did not finish: it runs before mining, in the same run.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger

from negforge.flows.task_options import negforge_task
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Calibration, CalibrationFiles, SearchJob, Texts
from negforge.tasks.calibration import MIN_QUERIES, applied, calibrate, calibration_rows, fallback
from negforge.tasks.calibration_search import calibration_candidates
from negforge.tasks.lexical import LexicalError, build_index

lexical_index_task = negforge_task(build_index, "build lexical index", retried=True)
calibration_candidates_task = negforge_task(calibration_candidates, "calibration candidates", retried=True)
calibrate_task = negforge_task(calibrate, "calibrate")


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


def build_calibration(job: SearchJob, config: BuildConfig, run_dir: Path) -> CalibrationFiles | None:
    """The calibration candidates of a build with mine.strategy auto (None: fixed, or too few queries to calibrate)."""
    if config.mine.strategy != "auto" or multi_positive_queries(job.texts.positives) < MIN_QUERIES:
        return None
    return calibration_candidates_task.submit(job, config, str(run_dir / "calibration")).result()


def calibrated(config: BuildConfig, positives: str, files: CalibrationFiles | None) -> tuple[BuildConfig,
                                                                                          Calibration | None]:
    """The config to mine with (the chosen setting applied) and the calibration that chose it (None: fixed)."""
    if config.mine.strategy != "auto":
        return config, None
    logger = get_run_logger()
    if files is None:
        calibration = fallback(multi_positive_queries(positives), config)
        logger.warning("calibration: %s", calibration.message)
        return config, calibration
    calibration = calibrate_task.submit(files, positives, config).result()
    for name, reason in calibration.skipped.items():
        logger.warning("calibration: setting %r skipped: %s", name, reason)
    (logger.info if calibration.outcome in ("lowest_false_negative_rate", "tied_and_harder") else logger.warning)(
        "calibration on %d queries, %d folds: %s (%s)", calibration.queries, calibration.folds, calibration.choice,
        calibration.message)
    return applied(config, calibration.settings), calibration
