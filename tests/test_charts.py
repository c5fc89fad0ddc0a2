"""A version's charts from its own data: one PNG per chart, drawn (not blank), the audit's only with an audit."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from negforge.schemas.manifest import Calibration
from negforge.schemas.stages import Mined, ScoreStats
from negforge.schemas.tables import IDS
from negforge.tasks.registry.charts import version_charts

AUDIT = {"n_queries": 12, "negatives": 36, "false_negative_rate": 0.08, "ci95": [0.02, 0.15], "coverage": 1.0,
         "by_reason": {"relative_margin": {"judged_relevant": 0.3, "candidates": 20},
                       "not_sampled": {"judged_relevant": 0.01, "candidates": 200}}}


def _staged(folder: Path, negatives: list[list[float]]) -> str:
    (folder / "ids").mkdir(parents=True)
    rows = [{"query_id": f"q{i}", "positive_id": f"p{i}", "negative_ids": [f"n{i}-{j}" for j in range(len(scores))],
             "positive_score": 0.8 - i / 100, "negative_scores": scores} for i, scores in enumerate(negatives)]
    pl.DataFrame(rows, schema=IDS).write_parquet(folder / "ids" / "train-00000-of-00001.parquet")
    return str(folder)


def _mined(audit: dict | None) -> Mined:
    return Mined(ids="", candidates="", positive_scores="", reasons_per_query={}, short_queries=(),
                 dropped_eval_queries=(), audit=audit, positive_score_stats=ScoreStats(count=0),
                 negative_score_stats=ScoreStats(count=0),
                 reasons={"kept": 30, "relative_margin": 12, "not_sampled": 140, "positive_id": 10})


@pytest.mark.parametrize("audit", [None, AUDIT])
def test_charts_are_drawn_from_the_version(tmp_path, audit):
    from matplotlib.image import imread

    negatives = [[0.6 - i / 50 - j / 20 for j in range(3)] for i in range(10)]
    charts = version_charts(_staged(tmp_path, negatives), _mined(audit))
    assert set(charts) == {"scores", "reasons", "negative_rank"} | ({"audit"} if audit else set())
    for path in charts.values():
        pixels = imread(tmp_path / path)
        assert path.startswith("charts/") and pixels.shape[1] == 640 and pixels.std() > 0.05


def test_a_version_without_negatives_still_gets_its_charts(tmp_path):
    charts = version_charts(_staged(tmp_path, [[], []]), _mined(None))
    assert all((tmp_path / path).stat().st_size > 5_000 for path in charts.values())


def test_equal_data_give_equal_bytes(tmp_path):
    negatives = [[0.5, 0.4], [0.3, 0.2]]
    first = version_charts(_staged(tmp_path / "a", negatives), _mined(AUDIT))
    second = version_charts(_staged(tmp_path / "b", negatives), _mined(AUDIT))
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in first.values())
    assert first == second


CALIBRATION = Calibration.model_validate({"outcome": "fewer_false_negatives", "choice": "relative_margin 0.05", "queries": 25, "folds": 3,
               "table": [{"setting": "plain top-k", "false_negative_rate": 0.12, "ci95": [0.08, 0.15],
                          "coverage": 1.0, "hardness": 1.0},
                         {"setting": "relative_margin 0.05", "false_negative_rate": 0.03, "ci95": [0.01, 0.05],
                          "coverage": 0.99, "hardness": 0.8},
                         {"setting": "lexical ratio 1", "false_negative_rate": None, "ci95": None,
                          "coverage": 0.0, "hardness": None}]})


def test_the_calibration_is_drawn_when_it_measured_a_table(tmp_path):
    from matplotlib.image import imread

    staged = _staged(tmp_path, [[0.5, 0.4], [0.3, 0.2]])
    charts = version_charts(staged, _mined(None), CALIBRATION)
    assert charts["calibration"] == "charts/calibration.png" and imread(tmp_path / charts["calibration"]).std() > 0.05
    fallback = CALIBRATION.model_copy(update={"outcome": "fallback", "table": []})
    assert "calibration" not in version_charts(staged, _mined(None), fallback)
