"""Adaptive depth: a query whose window leaves too few negatives is searched deeper instead of being dropped, by
default, and re-mining mines each query to the depth a build would have searched."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from negforge.schemas.config import DEPTH_MULTIPLE, BuildConfig, MineConfig
from negforge.tasks.mining.adaptive_depth import depth_levels, mine_adaptively
from tests.conftest import run_cli
from tests.test_mine import _case


def _manifest(config: Path, *overrides: str, check: bool = True) -> dict:
    args = ["build", "--config", str(config), *[a for o in overrides for a in ("--set", o)]]
    version = run_cli(*args, check=check).stdout.strip().splitlines()[-1]
    return json.loads((Path(version) / "manifest.json").read_text())


def test_the_default_bound_is_a_multiple_of_the_search_depth_capped_by_the_corpus():
    config = BuildConfig.model_validate({"input": {"pairs": ["x"]}, "mine": {"range_max": 50}})
    assert config.mine.max_depth == "auto" and config.mine.strategy == "auto"
    assert config.depth_bound(max_positives=5, documents=100_000) == DEPTH_MULTIPLE * 55
    assert config.depth_bound(max_positives=5, documents=300) == 300
    assert config.depth_bound(max_positives=5, documents=40) is None  # the search already reaches every document
    assert depth_levels(55, 300) == [55, 110, 220, 300]
    off = config.model_copy(update={"mine": config.mine.model_copy(update={"max_depth": None})})
    assert off.depth_bound(5, 100_000) is None and depth_levels(55, None) == [55]


def test_each_query_is_mined_to_the_first_depth_that_fills_it():
    # query 0 fills within 4 hits; query 1's first 4 candidates all break the margin, so it needs 8; query 2 has only
    # 4 hits stored (a remine's candidates, searched no deeper) and stays short: a build would search it deeper
    scores = {0: [0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15], 1: [0.95, 0.94, 0.93, 0.92, 0.5, 0.45, 0.4, 0.35],
              2: [0.95, 0.94, 0.93, 0.92]}
    hits, positives, positive_scores, _ = _case({q: [(10 * q + i + 1, s) for i, s in enumerate(ss)]
                                                 for q, ss in scores.items()},
                                                {q: [(100 + q, 0.9, True)] for q in scores})
    config = BuildConfig.model_validate({"input": {"pairs": ["x"]}, "mine": {
        "num_negatives": 2, "relative_margin": 0.0, "max_positive_similarity": None}})
    mined, report = mine_adaptively(hits, positives, positive_scores, None, config, 10, [4, 8], searchable=1000)
    kept = mined.filter(pl.col("reason").is_null()).group_by("query_row").agg(pl.col("doc_row")).sort("query_row")
    assert dict(kept.iter_rows()) == {0: [1, 2], 1: [15, 16]}
    assert mined.filter(pl.col("query_row") == 0)["rank"].max() == 3  # query 0 was mined to depth 4 only
    assert (report.queries_short, report.queries_deepened, report.still_short, report.depth) == (2, 1, 1, 8)
    assert report.needs_deeper == 1
    fixed = MineConfig(num_negatives=2, relative_margin=0.0, max_positive_similarity=None)
    assert fixed.max_depth == "auto"


@pytest.mark.slow
def test_a_default_build_searches_short_queries_deeper_and_passes_the_coverage_gate(config, prefect_server):
    strict = ["mine.strategy=fixed", "mine.relative_margin=0.2", "mine.num_negatives=5", "mine.range_max=6"]
    fixed = _manifest(config, *strict, "mine.max_depth=null", "validate.min_coverage=0")
    adaptive = _manifest(config, *strict)  # default max_depth (auto) and validate.min_coverage (0.9)
    assert fixed["adaptive_depth"]["bound"] is None and fixed["short_queries"]["count"] > 0
    report = adaptive["adaptive_depth"]
    assert report["bound"] == min(200, DEPTH_MULTIPLE * adaptive["search"]["depth"])  # 200: the corpus
    assert report["queries_short"] == fixed["short_queries"]["count"]
    # deepening fills the short queries (a query may stay short at the bound with so strict a margin), and the gate
    # passes at its default coverage
    assert report["still_short"] == adaptive["short_queries"]["count"] < report["queries_short"] / 4
    assert adaptive["validation"]["success"] and adaptive["counts"]["rows"] > fixed["counts"]["rows"]
    assert adaptive["embed"]["texts_embedded"] == 0  # the deeper search reuses the stored vectors


@pytest.mark.slow
def test_a_coverage_refusal_says_how_short_and_what_changes_it(config, prefect_server):
    done = run_cli("build", "--config", str(config), "--set", "mine.relative_margin=0.2", "--set",
                   "mine.range_max=6", "--set", "mine.num_negatives=5", "--set", "mine.max_depth=null",
                   "--set", "mine.strategy=fixed", check=False)
    assert done.returncode == 1
    line = next(line for line in done.stderr.splitlines() if "coverage:" in line)
    got, total = (int(n) for n in line.split("coverage: ")[1].split(" queries")[0].split(" of "))
    assert total == 40 and got < 36
    assert f"{total - got} queries are short by" in line
    assert "mine.max_depth (now None" in line and "mine.relative_margin=0.2" in line and "validate.min_coverage" in line
