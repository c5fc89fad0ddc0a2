"""What changed between two versions of a dataset: config, row counts, queries, negatives, score distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from negforge.schemas.manifest import Manifest


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (value in a, value in b), for every field that differs."""
    fa, fb = _flatten(a), _flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def diff_versions(a_dir: Path, b_dir: Path, a_manifest: Manifest, b_manifest: Manifest) -> dict[str, Any]:
    """Compare two version folders through their ids tables and manifests."""
    a_ids, b_ids = pl.read_parquet(a_dir / "ids"), pl.read_parquet(b_dir / "ids")
    a_queries, b_queries = set(a_ids["query_id"]), set(b_ids["query_id"])
    key = ["query_id", "positive_id"]
    both = a_ids.join(b_ids, on=key, suffix="_b")
    changed = both.filter(pl.col("negative_ids").list.sort() != pl.col("negative_ids_b").list.sort()).height
    return {
        "config": config_changes(a_manifest.config, b_manifest.config),
        "rows": (a_manifest.counts.rows, b_manifest.counts.rows),
        "queries_added": len(b_queries - a_queries),
        "queries_removed": len(a_queries - b_queries),
        "rows_in_both": both.height,
        "rows_with_changed_negatives": changed,
        "mean_scores": {"positive": (a_manifest.scores.positive.mean, b_manifest.scores.positive.mean),
                        "negative": (a_manifest.scores.negative.mean, b_manifest.scores.negative.mean)},
    }
