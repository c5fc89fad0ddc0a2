"""The topic rule: a query's topic from its best candidates, the bound derived from the known positives, the sample
that bound comes from, and the mining step that applies it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from negforge.schemas.config import ConfigError, MineConfig, load_config
from negforge.schemas.manifest import TopicBound
from negforge.schemas.tables import HITS, POSITIVE_SCORES, POSITIVES, frame
from negforge.tasks.mining.rules import REASONS, mine
from negforge.tasks.mining.similarity import candidate_similarity
from negforge.tasks.mining.topic import (
    TOPIC_SIZE,
    centrality,
    positive_centrality,
    sample_rows,
    topic,
    topic_threshold,
    with_topic_bound,
)
from tests.conftest import DEMO_CONFIG


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _hits(per_query: dict[int, list[int]]) -> pl.DataFrame:
    rows = [(query, doc) for query, docs in sorted(per_query.items()) for doc in docs]
    hits = frame(HITS, {"query_row": [q for q, _ in rows], "doc_row": [d for _, d in rows],
                        "score": [0.5] * len(rows)})
    return hits.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("query_row").alias("rank"))


def _positives(per_query: dict[int, list[int]], ids: dict[int, str] | None = None) -> pl.DataFrame:
    rows = [(q, d) for q, docs in per_query.items() for d in docs]
    return frame(POSITIVES, {"query_row": [q for q, _ in rows], "query_id": [(ids or {}).get(q, f"q{q}")
                                                                             for q, _ in rows],
                             "doc_row": [d for _, d in rows], "positive_id": [f"d{d}" for _, d in rows],
                             "text_hash": [f"h{d}" for _, d in rows], "canonical": [True] * len(rows)})


CORPUS = _unit(np.random.default_rng(0).normal(size=(60, 8)))


def test_centrality_is_the_cosine_to_the_topic_less_the_tightness_of_the_best_ranked_candidates():
    ranked = list(range(20)) + [40]
    direction, tightness = topic(CORPUS[ranked])
    expected = CORPUS[:TOPIC_SIZE].sum(axis=0)
    assert np.allclose(direction, expected / np.linalg.norm(expected), atol=1e-6)
    assert tightness == pytest.approx(float((CORPUS[:TOPIC_SIZE] @ direction).mean()), abs=1e-6)
    alone, _ = candidate_similarity(_hits({0: ranked}), _positives({0: [40]}), CORPUS)
    together, _ = candidate_similarity(_hits({0: ranked, 1: list(range(30, 50))}), _positives({0: [40], 1: [31]}),
                                       CORPUS)
    assert np.allclose(alone["topic_centrality"].to_numpy(), CORPUS[ranked] @ direction - tightness, atol=1e-6)
    assert float(alone["topic_centrality"][:TOPIC_SIZE].mean()) == pytest.approx(0.0, abs=1e-6)
    assert together.filter(pl.col("query_row") == 0)["topic_centrality"].equals(alone["topic_centrality"])
    other = together.filter(pl.col("query_row") == 1)["topic_centrality"].to_numpy()
    assert np.allclose(other, centrality(CORPUS[30:50], CORPUS[30:40]), atol=1e-6)  # each query its own topic


def test_a_vague_query_and_a_tight_one_are_put_on_one_scale():
    base = _unit(np.random.default_rng(1).normal(size=(1, 8)))[0]
    tight = _unit(base + 0.05 * np.random.default_rng(2).normal(size=(12, 8)))  # near-identical best candidates
    vague = _unit(base + 1.0 * np.random.default_rng(3).normal(size=(12, 8)))  # best candidates that disagree
    raw_tight, raw_vague = tight @ topic(tight)[0], vague @ topic(vague)[0]
    assert raw_tight.mean() - raw_vague.mean() > 0.3  # raw cosines: a bound for one scale is wrong for the other
    assert abs(centrality(tight, tight).mean() - centrality(vague, vague).mean()) < 0.1


def test_the_bound_is_a_quantile_of_the_positives_centralities_pooled_over_queries():
    hits = _hits({0: list(range(12)), 1: list(range(20, 32)), 2: list(range(40, 52))})
    sample = positive_centrality(hits, _positives({0: [3, 55], 1: [21], 2: [45]}), CORPUS)
    assert sample.height == 4 and sample["query_row"].to_list() == [0, 0, 1, 2]
    outside = sample.filter(pl.col("doc_row") == 55)["topic_centrality"].item()  # a positive beyond the hits counts
    assert outside == pytest.approx(float(centrality(CORPUS[[55]], CORPUS[:10])[0]), abs=1e-6)
    values = np.sort(sample["topic_centrality"].to_numpy().astype(np.float64))
    assert topic_threshold(sample, 0.5) == pytest.approx((values[1] + values[2]) / 2, abs=1e-6)
    assert topic_threshold(sample, 0.2) < topic_threshold(sample, 0.8)


def test_with_topic_bound_turns_the_quantile_into_a_cosine_and_says_so():
    config = load_config(DEMO_CONFIG, ["mine.topic_quantile=0.25"])
    sample = pl.DataFrame({"query_row": [0, 1, 2, 3], "doc_row": [5, 6, 7, 8], "topic_centrality": [-.2, 0, .2, .4]},
                          schema={"query_row": pl.UInt32, "doc_row": pl.UInt32, "topic_centrality": pl.Float32})
    mining, derived = with_topic_bound(config, sample)
    assert mining.mine.max_topic_centrality == pytest.approx(-0.05) and mining.mine.topic_quantile is None
    assert derived == TopicBound(quantile=0.25, max_topic_centrality=mining.mine.max_topic_centrality, positives=4,
                                 queries=4)
    assert with_topic_bound(load_config(DEMO_CONFIG), None) == (load_config(DEMO_CONFIG), None)
    with pytest.raises(ValueError, match="topic sample"):
        with_topic_bound(config, None)


def test_the_sample_takes_every_query_up_to_its_size_then_those_with_the_smallest_id_hash_whatever_the_order():
    ids = {q: f"query-{q}" for q in range(50)}
    positives = _positives({q: [q] for q in range(50)}, ids)
    assert sample_rows(positives, size=60) == list(range(50))
    picked = sample_rows(positives, size=10)
    assert len(picked) == 10 and picked == sorted(picked)
    assert sample_rows(positives.sample(fraction=1.0, shuffle=True, seed=3), size=10) == picked
    assert picked != list(range(10))  # by hash, not by row


def test_mining_drops_what_is_at_least_as_central_as_the_bound_right_after_the_positive_rules():
    assert REASONS.index("too_central_to_topic") == REASONS.index("near_duplicate_of_positive") + 1
    hits = _hits({0: [1, 2, 3, 4, 5]}).with_columns(
        pl.Series("score", [0.9, 0.8, 0.7, 0.6, 0.5], dtype=pl.Float32),
        pl.Series("topic_centrality", [0.15, 0.05, 0.04, -0.3, 0.1], dtype=pl.Float32),
        pl.Series("pos_sim", [0.1] * 5, dtype=pl.Float32))
    positives = _positives({0: [9]})
    scores = frame(POSITIVE_SCORES, {"query_row": [0], "doc_row": [9], "score": [0.95]})
    result = mine(hits, positives, scores, MineConfig(num_negatives=2, relative_margin=0.2,
                                                      max_topic_centrality=0.05), 10)
    reasons = dict(zip(result["doc_row"], result["reason"]))
    assert reasons[1] == reasons[2] == reasons[5] == "too_central_to_topic"  # before the margin that 1 also breaks
    assert reasons[3] is None and reasons[4] is None
    off = mine(hits, positives, scores, MineConfig(num_negatives=2, relative_margin=None), 10)
    assert off.filter(pl.col("reason").is_null())["doc_row"].to_list() == [1, 2]
    with pytest.raises(ValueError, match="no topic centralities"):
        mine(hits.drop("topic_centrality"), positives, scores, MineConfig(max_topic_centrality=0.0), 10)


def test_a_cosine_bound_and_a_quantile_together_are_refused_naming_both():
    with pytest.raises(ConfigError, match="max_topic_centrality.*topic_quantile"):
        load_config(DEMO_CONFIG, ["mine.topic_quantile=0.2", "mine.max_topic_centrality=0.1"])
    with pytest.raises(ConfigError, match=r"mine\.topic_quantile"):
        load_config(DEMO_CONFIG, ["mine.topic_quantile=1.5"])
