"""`negforge calibrate DATASET[@VERSION]`: the calibration alone, on the candidates a version stored, in seconds.

A build with `mine.strategy: auto` keeps its calibration candidates (`candidates/calibration/`); this mines every
grid setting on them again (with the version's options and any `--set` overrides of the mining options), prints the
table and the choice, and publishes nothing. A remine with `mine.strategy: auto` runs the same calibration first.
"""

from __future__ import annotations

from typing import Any

from negforge.schemas.config import BuildConfig
from negforge.schemas.manifest import CalibrationRow
from negforge.schemas.stages import StoredCandidates
from negforge.tasks.calibration.calibrate import (
    CALIBRATED,
    GRID,
    CalibrationError,
    applied,
    calibrate,
    false_negative_estimate,
    setting_fields,
)
from negforge.tasks.registry.candidates import load_candidates, settings_fixed_by_candidates
from negforge.tasks.registry.registries import open_registry
from negforge.tasks.registry.versions import NotFound


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "-".join(f"{v:.3f}" for v in value)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table_lines(table: list[CalibrationRow]) -> list[str]:
    """The calibration table as aligned text lines."""
    header = ("setting", "false_negative_rate", "ci95", "vs_plain", "vs_plain_ci95", "coverage", "hardness",
              "mean_negative_score")
    rows = [header] + [tuple(_cell(getattr(row, key)) for key in header) for row in table]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _refuse_what_calibration_cannot_honour(name: str, built: BuildConfig, config: BuildConfig,
                                           stored: StoredCandidates) -> None:
    """Refuse a version without calibration candidates, and --set options its stored candidates cannot be mined with,
    rather than calibrate without them: settings the candidates were made with, fields every grid setting sets
    itself, the folds (drawn when the version was built) and windows deeper than the candidates were searched."""
    fixed = settings_fixed_by_candidates(built, config, stored)
    if fixed:
        raise CalibrationError(f"{name}: calibration mines the version's stored candidates again, so "
                               f"{', '.join(fixed)} cannot change; run negforge build with them")
    gridded = [f"{section}.{field}" for section, field in CALIBRATED
               if getattr(getattr(config, section), field) != getattr(getattr(built, section), field)]
    if gridded:
        raise CalibrationError(f"{name}: every calibration setting sets {', '.join(gridded)} itself, so --set cannot "
                               f"choose it; to mine with it, remine with mine.strategy=fixed")
    if config.mine.calibration_folds != built.mine.calibration_folds:
        raise CalibrationError(f"{name}: mine.calibration_folds cannot change: the folds were drawn and searched when "
                               f"the version was built; run negforge build with it")
    files = stored.calibration
    if files is None:
        raise CalibrationError(f"{name} holds no calibration candidates (built with mine.strategy fixed, or fewer "
                               f"than 20 queries with several positives); build it with mine.strategy=auto")
    needed = max(applied(config, setting_fields(setting)).window_and_depth(files.max_positives)[1] for setting in GRID)
    if needed > files.depth:
        raise CalibrationError(f"{name}: these options need the top {needed} candidates per query, but the "
                               f"calibration stored {files.depth}; run negforge build with them")


def calibrate_version(registry_folder: str, target: str, overrides: list[str]) -> list[str]:
    """Calibrate on a version's stored calibration candidates (default: LATEST); the lines to print."""
    dataset, _, version = target.partition("@")
    registry = open_registry(registry_folder, dataset)
    version = version or registry.latest()
    if not version:
        raise NotFound(f"{registry.folder}: no published version to calibrate on; run negforge build first")
    manifest = registry.whole_manifest(version)
    config = manifest.build_config(overrides=overrides)
    stored = load_candidates(registry.local_copy(version) / "candidates")
    _refuse_what_calibration_cannot_honour(f"{dataset}@{version}", manifest.build_config(), config, stored)
    result = calibrate(stored.calibration, stored.texts.positives, config, stored.topic_sample)
    lines = [f"{dataset}@{version}: {result.queries} queries with two or more positives, at most {result.folds} "
             f"folds, each hiding another of their positives", *table_lines(result.table)]
    lines += [f"skipped {name!r}: {reason}" for name, reason in result.skipped.items()]
    lines += [f"chosen: {result.choice} ({result.message})",
              "settings: " + " ".join(f"{key}={value}" for key, value in result.settings.items()),
              false_negative_estimate(result, None)]
    return lines
