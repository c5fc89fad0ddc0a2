"""Calibration (mine.strategy auto): folds, the choice rule, what a version says of its false negatives, and real
builds that calibrate, fall back to the default and skip what cannot be applied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from negforge.schemas.config import ConfigError, load_config, validate_config
from negforge.schemas.manifest import Calibration, CalibrationEstimate, CalibrationRow, TopicBound
from negforge.schemas.tables import POSITIVES, frame
from negforge.tasks.calibration.calibrate import (
    DEFAULT,
    GRID,
    MIN_QUERIES,
    _uses,
    calibrate,
    choose,
    difference_interval,
    false_negative_estimate,
    hidden_positives,
    replaced_fields,
    setting_fields,
)
from negforge.tasks.registry.candidates import load_candidates
from tests.conftest import DEMO, DEMO_CONFIG, run_cli, write_beir, write_config


def _positives(per_query: dict[int, list[int]]) -> pl.DataFrame:
    rows = [(q, d) for q, docs in per_query.items() for d in docs]
    return frame(POSITIVES, {"query_row": [q for q, _ in rows], "query_id": [f"q{q}" for q, _ in rows],
                             "doc_row": [d for _, d in rows], "positive_id": [f"d{d}" for _, d in rows],
                             "text_hash": [f"h{d}" for _, d in rows], "canonical": [True] * len(rows)})


def test_each_positive_of_a_query_is_hidden_in_turn_up_to_the_folds_whatever_the_row_order():
    positives = _positives({q: list(range(10 * q, 10 * q + 2 + q % 3)) for q in range(30)})  # 2, 3 or 4 positives
    hidden = hidden_positives(positives, list(range(30)), 3, seed=42)
    assert hidden.group_by("fold", "query_row").len()["len"].max() == 1
    per_query = hidden.group_by("query_row").agg(pl.col("doc_row").n_unique().alias("docs"), pl.len().alias("folds"))
    assert per_query.filter(pl.col("query_row") % 3 == 0)["folds"].to_list() == [2] * 10  # two positives: two folds
    assert (per_query["docs"] == per_query["folds"]).all()  # each fold hides another positive
    assert per_query["folds"].max() == 3  # four positives: at most `folds`
    assert hidden.join(positives, on=["query_row", "doc_row"], how="anti").is_empty()  # always one of its own
    shuffled = hidden_positives(positives.sample(fraction=1.0, shuffle=True, seed=1), list(range(30)), 3, seed=42)
    assert shuffled.equals(hidden)


def _row(name: str, rate: float, coverage: float = 1.0, hardness: float = 0.8) -> dict:
    return {"setting": name, "false_negative_rate": rate, "coverage": coverage, "hardness": hardness}


def _differences(intervals: dict[str, list[float]]):
    """difference(start, other) from {other: interval}; an interval holding 0 for any other not named."""
    return lambda start, other: intervals.get(other, [-0.01, 0.01])


def test_the_default_stays_unless_a_setting_is_shown_to_keep_fewer_hidden_positives():
    table = [_row("plain top-k", 0.02, hardness=1.0), _row(DEFAULT, 0.004, hardness=0.75),
             _row("harder", 0.006, hardness=0.9), _row("safer", 0.0, hardness=0.65), _row("safest", 0.0, hardness=0.7)]
    # the case: every estimate small, every interval holding 0: the harder setting does not win a tie
    assert choose(table, _differences({}))[:2] == (DEFAULT, "default")
    name, outcome, message, start = choose(table, _differences({"safer": [-0.01, -0.001],
                                                                 "safest": [-0.008, -0.002]}))
    assert (name, outcome, start) == ("safest", "fewer_false_negatives", DEFAULT)  # equal rates: the harder
    assert DEFAULT in message
    assert choose(table, _differences({"plain top-k": [-0.03, -0.01]}))[0] == "plain top-k"  # evidence, not taste


def test_a_default_short_of_coverage_or_hardness_gives_way_to_the_lowest_rate_that_reaches_them():
    table = [_row("plain top-k", 0.02, hardness=1.0), _row(DEFAULT, 0.001, hardness=0.5),
             _row("mild", 0.01, hardness=0.8), _row("strict", 0.005, hardness=0.7)]
    name, outcome, message, start = choose(table, _differences({}))
    assert (name, outcome, start) == ("strict", "lowest_false_negative_rate", "strict") and "default" in message


def test_without_coverage_the_highest_coverage_wins_and_without_hardness_the_hardest():
    low = [_row("a", 0.01, coverage=0.5), _row("b", 0.05, coverage=0.8)]
    assert choose(low, _differences({}))[:2] == ("b", "highest_coverage")
    soft = [_row("a", 0.01, hardness=0.5), _row("b", 0.05, hardness=0.55), _row("c", 0.0, coverage=0.9, hardness=0.9)]
    assert choose(soft, _differences({}))[:2] == ("b", "hardest_with_coverage")


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
        load_config(DEMO_CONFIG, ["mine.calibration_folds=1"])


def test_options_that_calibration_replaces_are_named_when_set_explicitly():
    assert replaced_fields(load_config(DEMO_CONFIG)) == []  # defaults are not the user's
    named = replaced_fields(load_config(DEMO_CONFIG, ["mine.relative_margin=0.1", "lexical.ratio=2"]))
    assert named == ["mine.relative_margin", "lexical.ratio"]
    assert replaced_fields(load_config(DEMO_CONFIG, ["mine.strategy=fixed", "mine.relative_margin=0.1"])) == []


def test_a_version_says_what_is_known_of_its_false_negatives():
    topic = TopicBound(quantile=0.1, max_topic_centrality=0.061, positives=300, queries=290)
    fallback = Calibration(outcome="fallback", queries=3, choice=DEFAULT)
    assert "no estimate is possible" in false_negative_estimate(fallback, topic)
    assert DEFAULT in false_negative_estimate(fallback, topic) and "0.061" in false_negative_estimate(fallback, topic)
    table = [{"setting": "plain top-k", "hidden_kept": 24}]
    measured = Calibration(outcome="default", queries=40, choice=DEFAULT, table=table,
                           estimate={"vs_plain": 0.25, "ci95": [0.1, 0.5], "false_negative_reduction": 0.75})
    line = false_negative_estimate(measured, topic)
    assert "0.25x plain top-k's rate (95% interval 0.10-0.50x; plain top-k kept 24 hidden positives)" in line
    few = measured.model_copy(update={"table": [CalibrationRow(setting="plain top-k", hidden_kept=3)],
                                      "estimate": CalibrationEstimate()})
    assert "plain top-k kept 3 hidden positives among its negatives, fewer than the 10" in false_negative_estimate(
        few, topic)
    assert "not estimated" in false_negative_estimate(None, None)


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
    assert calibration["compared_with"] in GRID and set(calibration["estimate"]) == {
        "vs_plain", "ci95", "false_negative_reduction"}
    assert "False negatives: " in (version / "README.md").read_text()
    assert all(0 <= row["coverage"] <= 1 for row in calibration["table"])
    assert manifest["config"]["mine"]["strategy"] == "auto"  # the config as given; the choice beside it
    assert "calibrate" in manifest["timings"] and (version / "candidates" / "calibration" / "hidden.parquet").exists()
    mined_with = calibration["settings"]
    assert ("lexical_relevant" in manifest["reasons"]) <= (mined_with["lexical.ratio"] is not None
                                                           or mined_with["lexical.fusion"] is not None)
    alone = run_cli("calibrate", f"multi@{version.name}", "--registry", str(version.parent.parent)).stdout
    assert f"chosen: {calibration['choice']} (" in alone and "false_negative_rate" in alone
    for option, message in (
            ("search.depth=5000", "so search.depth cannot change; run negforge build with them"),
            ("lexical.k1=1.2", "so the BM25 settings (lexical.k1, b, stopwords) cannot change"),
            ("mine.relative_margin=0.2", "every calibration setting sets mine.relative_margin itself"),
            ("mine.calibration_folds=2", "mine.calibration_folds cannot change: the folds were drawn"),
            ("mine.range_max=5000", "these options need the top 5002 candidates per query, but the calibration "
                                    "stored")):
        refused = run_cli("calibrate", f"multi@{version.name}", "--registry", str(version.parent.parent), "--set",
                          option, check=False)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

    # a grid setting that cannot be applied is skipped by name: candidates without BM25 scores
    stored = load_candidates(version / "candidates")
    copy = tmp_path / "no-bm25"
    shutil.copytree(stored.calibration.folder, copy)
    pl.read_parquet(copy / "hits.parquet").drop("bm25").write_parquet(copy / "hits.parquet")
    config = validate_config(manifest["config"])
    result = calibrate(type(stored.calibration)(**{**stored.calibration.__dict__, "folder": str(copy)}),
                       stored.texts.positives, config, stored.topic_sample)
    lexical = [name for name in GRID if _uses(name, "lexical")]
    assert sorted(result.skipped) == sorted(lexical) and "BM25" in result.skipped[lexical[0]]
    assert not {row.setting for row in result.table} & set(lexical)


@pytest.mark.slow
def test_too_few_multi_positive_queries_fall_back_to_the_default_and_say_no_estimate_is_possible(small_config,
                                                                                                 prefect_server):
    done = run_cli("build", "--config", str(small_config))
    version = Path(done.stdout.strip().splitlines()[-1])
    manifest = json.loads((version / "manifest.json").read_text())
    calibration = manifest["calibration"]
    assert calibration["outcome"] == "fallback" and calibration["settings"] == setting_fields(DEFAULT)
    assert manifest["topic"]["quantile"] == 0.1 and manifest["config"]["mine"]["topic_quantile"] is None
    assert "too_central_to_topic" in manifest["reasons"]  # mined with the default's topic bound
    assert "calibration needs 20" in done.stderr and "mining with the default" in done.stderr
    assert "no estimate is possible" in (version / "README.md").read_text()
    alone = run_cli("calibrate", f"tiny@{version.name}", "--registry", str(version.parent.parent), check=False)
    assert alone.returncode == 2 and "holds no calibration candidates" in alone.stderr
