"""`negforge calibrate DATASET[@VERSION]`: the calibration alone, on the candidates a version stored, in seconds.

A build with `mine.strategy: auto` keeps its calibration candidates (`candidates/calibration/`); this mines every
grid setting on them again (with the version's options and any `--set` overrides of the mining options), prints the
table and the choice, and publishes nothing. A remine with `mine.strategy: auto` runs the same calibration first.
"""

from __future__ import annotations

from typing import Any

from negforge.schemas.config import apply_overrides, validate_config
from negforge.tasks.calibration import CalibrationError, calibrate, false_negative_estimate
from negforge.tasks.candidate_store import load_candidates
from negforge.tasks.registry import NotFound, Registry


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "-".join(f"{v:.3f}" for v in value)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table_lines(table: list[dict[str, Any]]) -> list[str]:
    """The calibration table as aligned text lines."""
    header = ("setting", "false_negative_rate", "ci95", "vs_plain", "vs_plain_ci95", "coverage", "hardness",
              "mean_negative_score")
    rows = [header] + [tuple(_cell(row[key]) for key in header) for row in table]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def calibrate_version(registry_folder: str, target: str, overrides: list[str]) -> list[str]:
    """Calibrate on a version's stored calibration candidates (default: LATEST); the lines to print."""
    dataset, _, version = target.partition("@")
    registry = Registry(registry_folder, dataset)
    version = version or registry.latest()
    if not version:
        raise NotFound(f"{registry.folder}: no published version to calibrate on; run negforge build first")
    manifest = registry.whole_manifest(version)
    config = validate_config(apply_overrides(manifest["config"], overrides), f"{dataset}@{version} config")
    stored = load_candidates(registry.folder / version / "candidates")
    if stored.calibration is None:
        raise CalibrationError(f"{dataset}@{version} holds no calibration candidates (built with mine.strategy fixed, "
                               f"or fewer than 20 queries with several positives); build it with mine.strategy=auto")
    result = calibrate(stored.calibration, stored.texts.positives, config, stored.topic_sample)
    lines = [f"{dataset}@{version}: {result.queries} queries with two or more positives, at most {result.folds} "
             f"folds, each hiding another of their positives", *table_lines(list(result.table))]
    lines += [f"skipped {name!r}: {reason}" for name, reason in result.skipped.items()]
    lines += [f"chosen: {result.choice} ({result.message})",
              "settings: " + " ".join(f"{key}={value}" for key, value in result.settings.items()),
              false_negative_estimate(result.as_dict(), None)]
    return lines
