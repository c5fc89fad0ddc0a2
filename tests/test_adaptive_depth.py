"""Adaptive depth: a query whose window leaves too few negatives is searched deeper instead of being dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _manifest(config: Path, *overrides: str) -> dict:
    args = ["build", "--config", str(config), *[a for o in overrides for a in ("--set", o)]]
    version = run_cli(*args).stdout.strip().splitlines()[-1]
    return json.loads((Path(version) / "manifest.json").read_text())


def test_deeper_search_fills_queries_a_fixed_window_would_drop(config, prefect_server):
    strict = ["mine.relative_margin=0.2", "mine.num_negatives=5", "mine.range_max=6"]
    fixed = _manifest(config, *strict)
    adaptive = _manifest(config, *strict, "mine.max_depth=160")
    assert fixed["adaptive_depth"] is None and fixed["short_queries"]["count"] > 0
    report = adaptive["adaptive_depth"]
    assert report["queries_short"] == fixed["short_queries"]["count"]
    assert report["still_short"] < report["queries_short"]
    assert adaptive["short_queries"]["count"] == report["still_short"]
    assert adaptive["counts"]["rows"] > fixed["counts"]["rows"]
    assert adaptive["embed"]["texts_embedded"] == 0  # the deeper search reuses the stored vectors
