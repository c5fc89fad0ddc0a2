"""Rescoring with a second model: the GISTEmbed and RocketQA rules on hand-built scores, then through the real flow
on Dask with a real guide bi-encoder and a CrossEncoder built locally (tests cannot download one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from negforge.schemas.config import MineConfig, RescoreConfig
from negforge.tasks.embedding.model import BUNDLED_NAMES, resolve_model
from negforge.tasks.mining.rules import mine
from tests.conftest import run_cli
from tests.test_mine import _case, _kept, _reason

MODEL = sorted(BUNDLED_NAMES)[0]


def _rescored(rescores: list[float], positive_rescore: float):
    hits, pos, scores, ids = _case({0: [(d, 0.5 - d / 100) for d in range(1, len(rescores) + 1)]},
                                   {0: [(0, 0.9, True)]})
    return (hits.with_columns(pl.Series("rescore", rescores, dtype=pl.Float32)), pos,
            scores.with_columns(pl.Series("rescore", [positive_rescore], dtype=pl.Float32)), ids)


@pytest.mark.parametrize(("rule", "dropped"), [
    ({"kind": "guide"}, [1]),                                           # g(q,n) > g(q,p)
    ({"kind": "guide", "margin": 0.1}, [1, 2]),                          # g(q,n) > g(q,p) - 0.1
    ({"kind": "guide", "margin": 0.5, "margin_strategy": "relative"}, [1, 2, 3]),  # > 0.8 - 0.4
    ({"kind": "cross-encoder", "threshold": 0.3}, [1, 2, 3]),
])
def test_rescorer_rules_drop_what_the_second_model_finds_relevant(rule, dropped):
    hits, pos, scores, ids = _rescored([0.85, 0.75, 0.45, 0.2, 0.1], 0.8)
    result = mine(hits, pos, scores, MineConfig(num_negatives=2, relative_margin=None), 10, None, None,
                  RescoreConfig(model="m", **rule))
    assert [d for d in range(1, 6) if _reason(result, d) == "rescorer_relevant"] == dropped
    assert _kept(result) == [d for d in range(1, 6) if d not in dropped][:2]
    assert result.filter(pl.col("doc_row") == 1)["rescore"].item() == pytest.approx(0.85)


def test_rescorer_runs_without_margins_and_after_them():
    hits, pos, scores, ids = _rescored([0.85, 0.75, 0.45, 0.2, 0.1], 0.8)
    ce = RescoreConfig(model="m", kind="cross-encoder", threshold=0.3)
    with_margin = mine(hits, pos, scores, MineConfig(num_negatives=1, relative_margin=None, max_score=0.485),
                       10, None, None, ce)
    # doc 1 (score 0.49) is removed by max_score first; docs 2 and 3 by the cross-encoder
    assert [_reason(with_margin, d) for d in (1, 2, 3)] == ["max_score", "rescorer_relevant", "rescorer_relevant"]
    plain = mine(hits, pos, scores, MineConfig(num_negatives=1, relative_margin=None), 10, None, None, None)
    assert _kept(plain) == [1] and plain["rescore"].is_null().all()


def test_a_cross_encoder_needs_a_threshold():
    with pytest.raises(ValueError, match="needs a threshold"):
        RescoreConfig(model="m", kind="cross-encoder")


def _version(out: str) -> Path:
    return Path(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_guide_rescoring_through_the_flow_keeps_both_scores(small_config, prefect_server):
    # the bundled model guiding itself: g equals the embedding score, so the GISTEmbed rule with margin 0 drops
    # exactly the candidates scoring above the lowest positive
    version = _version(run_cli("build", "--config", str(small_config), "--set", f"rescore.model={MODEL}",
                               "--set", "mine.relative_margin=null", "--set", "output.scores=true",
                               "--set", "rescore.max_length=64",  # the guide reads what the embedder read
                               # the tiny corpus runs out of documents below some queries' lowest positive
                               "--set", "validate.min_coverage=0.8").stdout)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["reasons"].get("rescorer_relevant", 0) > 0  # rescored inside the search-and-mine tasks
    data = pl.read_parquet(version / "data")
    assert {"scores", "rescores"} <= set(data.columns)
    for scores, rescores in zip(data["scores"], data["rescores"]):
        assert np.allclose(scores.to_numpy(), rescores.to_numpy(), atol=1e-4)
        assert (rescores[1:].to_numpy() <= rescores[0] + 1e-4).all()
    exported = json.loads((version / "exports" / "flagembedding.jsonl").read_text().splitlines()[0])
    assert len(exported["neg_scores"]) == 3


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> Path:
    """A CrossEncoder built here: the bundled MiniLM's encoder with a new one-logit head, saved to a folder.

    The head is initialised from a fixed seed: its scores are arbitrary, and an unseeded head made the remine's
    coverage a matter of chance (CI once saw 16 of 20 queries keep all their negatives)."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cross-encoder")
    CrossEncoder(resolve_model(MODEL).path, num_labels=1, device="cpu").save(str(folder))
    return folder


@pytest.mark.slow
def test_cross_encoder_rescoring_through_the_flow_and_a_remine_with_a_new_threshold(small_config, prefect_server,
                                                                                       cross_encoder):
    from sentence_transformers import CrossEncoder

    first = _version(run_cli("build", "--config", str(small_config), "--set", f"rescore.model={cross_encoder}",
                             "--set", "rescore.kind=cross-encoder", "--set", "rescore.threshold=1.0",
                             "--set", "rescore.max_length=128").stdout)
    hits = pl.read_parquet(first / "candidates" / "hits.parquet")
    assert hits["rescore"].is_not_null().all()
    queries = dict(pl.read_parquet(first / "candidates" / "queries.parquet").select("row", "text").iter_rows())
    docs = dict(pl.read_parquet(first / "candidates" / "documents.parquet").select("row", "text").iter_rows())
    sample = hits.sample(5, seed=0)
    expected = CrossEncoder(str(cross_encoder), device="cpu", max_length=128).predict(
        [(queries[q], docs[d]) for q, d in sample.select("query_row", "doc_row").iter_rows()])
    assert np.allclose(sample["rescore"].to_numpy(), expected, atol=1e-4)

    threshold = float(hits["rescore"].quantile(0.8))
    second = _version(run_cli("remine", "--from", "tiny@v0001", "--registry", str(first.parent.parent),
                              "--set", f"rescore.threshold={threshold}", "--set", "output.scores=true").stdout)
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["reasons"]["rescorer_relevant"] > 0
    ids = pl.read_parquet(second / "ids")
    assert (ids["negative_rescores"].explode().drop_nulls() <= threshold).all()

    other = run_cli("remine", "--from", "tiny@v0001", "--registry", str(first.parent.parent),
                    "--set", f"rescore.model={MODEL}", "--set", "rescore.kind=guide", check=False)
    assert other.returncode == 2 and "rescorer" in other.stderr
