"""Evaluation results, kept beside a dataset's versions and never inside them (a version is immutable):

    <registry>/<dataset>/evaluations/<version>-<key>.json        one version fine-tuned and measured
    <registry>/<dataset>/evaluations/compare-<A>-vs-<B>-<key>.json  two training sets (or A and a baseline) compared
    <registry>/<dataset>/evaluations/base/<fingerprint>-<split key>.json  the base model's metrics, cached
    <registry>/<dataset>/evaluations/charts/...                  their charts

`<key>` hashes the evaluation split's key, the base model's fingerprint and the training settings, so a record is
found again only for the same question.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from fnmatch import fnmatch
from pathlib import Path
from typing import TypeVar

from negforge.schemas.config import EvaluateConfig
from negforge.schemas.evaluation import BaseMeasurement, Comparison, EvaluationRecord
from negforge.schemas.stages import Encoder, EvaluationSplit
from negforge.tasks.runtime.os_errors import naming
from negforge.tasks.storage.location import Location

FOLDER = "evaluations"
Record = TypeVar("Record", BaseMeasurement, EvaluationRecord, Comparison)


def record_key(evaluation: EvaluationSplit, encoder: Encoder, settings: EvaluateConfig) -> str:
    """The key of a fine-tuning result: same data, split, base model and training settings."""
    key = {"split": evaluation.key, "model": encoder.fingerprint, "training": settings.training_settings()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def evaluations_folder(dataset_folder: Path) -> Path:
    return dataset_folder / FOLDER


def record_path(dataset_folder: Path, name: str, key: str) -> Path:
    """Where the record of a version (name vNNNN) or a comparison (compare-A-vs-B) lives."""
    return evaluations_folder(dataset_folder) / f"{name}-{key}.json"


def base_path(dataset_folder: Path, encoder: Encoder, evaluation: EvaluationSplit) -> Path:
    """Where the base model's metrics on a split are cached: per (model fingerprint, split key)."""
    return evaluations_folder(dataset_folder) / "base" / f"{encoder.fingerprint}-{evaluation.key}.json"


def read_record(path: Path, kind: type[Record]) -> Record | None:
    """A record of `kind`, or None when absent, unreadable, not such a record, or a symlink (then it is computed
    again; `negforge evaluate` refuses a linked record before that, tasks/runtime/containment.py)."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), encoding="utf-8") as handle:
            return kind.model_validate_json(handle.read())
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def write_record(path: Path, record: BaseMeasurement | EvaluationRecord | Comparison) -> None:
    """Write a record atomically (a reader never sees half of one); standard JSON only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with naming(path):
            tmp.write_text(json.dumps(record.as_json(), indent=1, allow_nan=False), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _records(dataset_folder: Path | Location, patterns: list[str], kind: type[Record]) -> list[Record]:
    """The readable records of `kind` whose names match `patterns`, oldest first; none in a linked evaluations
    folder (a dataset on an object store: read through the store, which has no links)."""
    folder = evaluations_folder(dataset_folder)
    if isinstance(folder, Location):
        found = [_parsed(folder / name, kind) for name in folder.children()
                 if any(fnmatch(name, pattern) for pattern in patterns)]
    elif folder.is_symlink():
        return []
    else:
        found = [read_record(p, kind) for pattern in patterns for p in folder.glob(pattern)]
    return sorted((r for r in found if r), key=lambda r: r.created_at)


def _parsed(location: Location, kind: type[Record]) -> Record | None:
    try:
        return kind.model_validate_json(location.read_bytes())
    except (OSError, ValueError):
        return None


def version_records(dataset_folder: Path, version: str) -> list[EvaluationRecord]:
    """The evaluations of a version, oldest first."""
    return _records(dataset_folder, [f"{version}-*.json"], EvaluationRecord)


def comparison_records(dataset_folder: Path, a: str, b: str) -> list[Comparison]:
    """Comparisons of versions a and b (either way round), oldest first."""
    return _records(dataset_folder, [f"compare-{first}-vs-{second}-*.json" for first, second in ((a, b), (b, a))],
                    Comparison)
