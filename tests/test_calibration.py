"""Calibration (mine.strategy auto): folds, the choice rule, and real builds that calibrate, fall back and skip what
cannot be applied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from negforge.schemas.config import ConfigError, load_config, validate_config
from negforge.schemas.tables import POSITIVES, frame
from negforge.tasks.calibration import (GRID, MIN_QUERIES, _uses_lexical, calibrate, choose, difference_interval,
                                        hidden_positives)
from negforge.tasks.candidate_store import load_candidates
from tests.conftest import DEMO, DEMO_CONFIG, run_cli, write_beir, write_config


def _positives(per_query: dict[int, list[int]]) -> pl.DataFrame:
    rows = [(q, d) for q, docs in per_query.items() for d in docs]
    return frame(POSITIVES, {"query_row": [q for q, _ in rows], "query_id": [f"q{q}" for q, _ in rows],
                             "doc_row": [d for _, d in rows], "positive_id": [f"d{d}" for _, d in rows],
                             "text_hash": [f"h{d}" for _, d in rows], "canonical": [True] * len(rows)})


def test_each_fold_hides_one_positive_per_query_whatever_the_row_order():
    positives = _positives({q: list(range(10 * q, 10 * q + 4)) for q in range(30)})
    hidden = hidden_positives(positives, list(range(30)), 3, seed=42)
    assert hidden.height == 90 and hidden.group_by("fold", "query_row").len()["len"].max() == 1
    assert hidden.join(positives, on=["query_row", "doc_row"], how="anti").is_empty()  # always one of its own
    shuffled = hidden_positives(positives.sample(fraction=1.0, shuffle=True, seed=1), list(range(30)), 3, seed=42)
    assert shuffled.equals(hidden)
    per_fold = [hidden.filter(pl.col("fold") == f)["doc_row"].to_list() for f in range(3)]
    assert per_fold[0] != per_fold[1] != per_fold[2]  # each fold hides other positives


def _row(name: str, rate: float, ci: list[float], coverage: float = 1.0, hardness: float = 0.8) -> dict:
    return {"setting": name, "false_negative_rate": rate, "ci95": ci, "coverage": coverage, "hardness": hardness}


def test_the_choice_prefers_the_lowest_rate_and_among_ties_the_harder_setting():
    table = [_row("plain", 0.2, [0.15, 0.25], hardness=1.0), _row("strict", 0.01, [0.0, 0.03], hardness=0.75),
             _row("mild", 0.02, [0.0, 0.05], hardness=0.85), _row("easy", 0.0, [0.0, 0.0], hardness=0.5)]
    assert choose(table, lambda lowest, other: False)[:2] == ("strict", "lowest_false_negative_rate")
    name, outcome, message = choose(table, lambda lowest, other: other in ("mild", "plain"))
    assert (name, outcome) == ("plain", "tied_and_harder") and "strict" in message
    assert choose(table, lambda lowest, other: other == "mild")[:2] == ("mild", "tied_and_harder")


def test_without_coverage_the_highest_coverage_wins_and_without_hardness_the_hardest():
    low = [_row("a", 0.01, [0, 0.02], coverage=0.5), _row("b", 0.05, [0, 0.1], coverage=0.8)]
    assert choose(low, lambda *_: True)[:2] == ("b", "highest_coverage")
    soft = [_row("a", 0.01, [0, 0.02], hardness=0.5), _row("b", 0.05, [0, 0.1], hardness=0.6),
            _row("c", 0.0, [0, 0], coverage=0.9, hardness=0.9)]
    assert choose(soft, lambda *_: True)[:2] == ("b", "hardest_with_coverage")


def test_ties_are_judged_on_the_same_queries():
    queries = pl.DataFrame({"query_row": range(25), "total": [15] * 25})
    never = queries.with_columns(relevant=pl.lit(0))
    often = queries.with_columns(relevant=pl.Series([1] * 25))  # keeps the hidden positive on every query
    sometimes = queries.with_columns(relevant=pl.Series([1] + [0] * 24))
    assert difference_interval(never, never) == [0.0, 0.0]
    assert difference_interval(never, often)[0] > 0  # told apart, though both own intervals are wide at 25 queries
    assert difference_interval(never, sometimes)[0] <= 0


def test_an_unknown_strategy_or_too_few_folds_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"mine\.strategy"):
        load_config(DEMO_CONFIG, ["mine.strategy=sometimes"])
    with pytest.raises(ConfigError, match=r"mine\.calibration_folds"):
        load_config(DEMO_CONFIG, ["mine.calibration_folds=2"])


@pytest.fixture
def multi_positive(tmp_path, dask_address) -> Path:
    """24 demo queries with two positives each (their own and a document that shares the most of their words),
    120 documents: enough queries to calibrate on."""
    docs = [json.loads(line) for line in (DEMO / "corpus.jsonl").read_text().splitlines()][:120]
    queries = [json.loads(line) for line in (DEMO / "queries.jsonl").read_text().splitlines()][:24]
    qrels = []
    for number, query in enumerate(queries):
        words = set(query["text"].lower().split())
        ranked = sorted(docs, key=lambda d: -len(words & set(f"{d['title']} {d['text']}".lower().split())))
        qrels += [(query["_id"], docs[number]["_id"], 1), (query["_id"], ranked[0]["_id"], 1)]
    data = write_beir(tmp_path / "multi", [{k: d[k] for k in ("_id", "title", "text")} for d in docs],
                      [{"_id": q["_id"], "text": q["text"]} for q in queries], qrels)
    return write_config(tmp_path / "build.yaml", data, dataset="multi", dask_address=dask_address)


@pytest.mark.slow
def test_a_default_build_calibrates_and_mines_with_its_choice(multi_positive, prefect_server, tmp_path):
    done = run_cli("build", "--config", str(multi_positive))
    version = Path(done.stdout.strip().splitlines()[-1])
    manifest = json.loads((version / "manifest.json").read_text())
    calibration = manifest["calibration"]
    assert calibration["queries"] >= MIN_QUERIES and calibration["folds"] == 3
    assert [row["setting"] for row in calibration["table"]] == list(GRID)
    assert calibration["choice"] in GRID and calibration["outcome"] != "fallback"
    assert all(0 <= row["coverage"] <= 1 for row in calibration["table"])
    assert manifest["config"]["mine"]["strategy"] == "auto"  # the config as given; the choice beside it
    assert "calibrate" in manifest["timings"] and (version / "candidates" / "calibration" / "hidden.parquet").exists()
    mined_with = calibration["settings"]
    assert ("lexical_relevant" in manifest["reasons"]) <= (mined_with["lexical.ratio"] is not None
                                                           or mined_with["lexical.fusion"] is not None)
    alone = run_cli("calibrate", f"multi@{version.name}", "--registry", str(version.parent.parent)).stdout
    assert f"chosen: {calibration['choice']} (" in alone and "false_negative_rate" in alone

    # a grid setting that cannot be applied is skipped by name: candidates without BM25 scores
    stored = load_candidates(version / "candidates")
    copy = tmp_path / "no-bm25"
    shutil.copytree(stored.calibration.folder, copy)
    pl.read_parquet(copy / "hits.parquet").drop("bm25").write_parquet(copy / "hits.parquet")
    config = validate_config(manifest["config"])
    result = calibrate(type(stored.calibration)(**{**stored.calibration.__dict__, "folder": str(copy)}),
                       stored.texts.positives, config)
    lexical = [name for name in GRID if _uses_lexical(name)]
    assert sorted(result.skipped) == sorted(lexical) and "BM25" in result.skipped[lexical[0]]
    assert not {row["setting"] for row in result.table} & set(lexical)


@pytest.mark.slow
def test_too_few_multi_positive_queries_fall_back_to_the_fixed_options(small_config, prefect_server):
    done = run_cli("build", "--config", str(small_config))
    version = Path(done.stdout.strip().splitlines()[-1])
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["calibration"]["outcome"] == "fallback" and manifest["calibration"]["settings"] == {}
    assert "calibration needs 20" in done.stderr and "mining with the configured options" in done.stderr
    alone = run_cli("calibrate", f"tiny@{version.name}", "--registry", str(version.parent.parent), check=False)
    assert alone.returncode == 2 and "holds no calibration candidates" in alone.stderr
