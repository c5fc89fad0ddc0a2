"""Every mining rule on small hand-built score lists, checked against what sentence-transformers' options mean."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from negforge.schemas.config import LexicalConfig, MineConfig, RescoreConfig
from negforge.schemas.tables import HITS, POSITIVE_SCORES, POSITIVES, frame
from negforge.tasks.mining.rules import REASONS, mine, query_rng


def _case(candidates: dict[int, list[tuple[int, float]]], positives: dict[int, list[tuple[int, float, bool]]]):
    """Build hits (ranked by score, ties by doc row) and positives from {query: [(doc, score)]}."""
    q, d, s = [], [], []
    for query, cands in sorted(candidates.items()):
        for doc, score in sorted(cands, key=lambda c: (-c[1], c[0])):
            q.append(query), d.append(doc), s.append(score)
    hits = frame(HITS, {"query_row": q, "doc_row": d, "score": s})
    hits = hits.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("query_row").alias("rank"))
    rows = [(query, doc, score, canonical) for query, ps in positives.items() for doc, score, canonical in ps]
    pos = frame(POSITIVES, {"query_row": [r[0] for r in rows], "query_id": [f"q{r[0]}" for r in rows],
                            "doc_row": [r[1] for r in rows], "positive_id": [f"p{r[1]}" for r in rows],
                            "text_hash": [f"h{r[1]}" for r in rows], "canonical": [r[3] for r in rows]})
    scores = frame(POSITIVE_SCORES, {"query_row": [r[0] for r in rows], "doc_row": [r[1] for r in rows],
                                     "score": [r[2] for r in rows]})
    ids = [f"q{i}" for i in range(max(candidates) + 1)]
    return hits, pos, scores, ids


def _run(candidates, positives, range_max=10, **options) -> pl.DataFrame:
    hits, pos, scores, ids = _case(candidates, positives)
    options.setdefault("relative_margin", None)
    return mine(hits, pos, scores, MineConfig(**options), range_max)


def _kept(result: pl.DataFrame, query: int = 0) -> list[int]:
    return result.filter((pl.col("query_row") == query) & pl.col("reason").is_null())["doc_row"].to_list()


def _reason(result: pl.DataFrame, doc: int, query: int = 0) -> str | None:
    return result.filter((pl.col("query_row") == query) & (pl.col("doc_row") == doc))["reason"].item()


CANDS = {0: [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6), (5, 0.5), (6, 0.4), (7, 0.3)]}
POS = {0: [(1, 0.85, True)]}


def test_positive_excluded_by_id_and_duplicate_text_of_a_positive_by_text():
    result = _run(CANDS, {0: [(1, 0.85, True), (2, 0.85, False)]}, num_negatives=2)
    assert _reason(result, 1) == "positive_id"
    assert _reason(result, 2) == "positive_text"
    assert _kept(result) == [3, 4]


def test_include_positives_keeps_them_as_candidates():
    result = _run(CANDS, POS, num_negatives=2, include_positives=True)
    assert _kept(result) == [1, 2]


def test_absolute_margin_keeps_only_scores_at_most_positive_minus_margin():
    result = _run(CANDS, POS, num_negatives=3, absolute_margin=0.1)
    # s_p = 0.85: keep s <= 0.75, so 0.8 goes, 0.7 stays
    assert _reason(result, 2) == "absolute_margin"
    assert _kept(result) == [3, 4, 5]


def test_relative_margin_is_a_fraction_of_the_positive_score():
    result = _run(CANDS, POS, num_negatives=2, relative_margin=0.2)
    # threshold 0.85 - 0.17 = 0.68: 0.8 and 0.7 go
    assert [_reason(result, d) for d in (2, 3)] == ["relative_margin", "relative_margin"]
    assert _kept(result) == [4, 5]


def test_relative_margin_is_sign_safe_for_a_negative_positive_score():
    cands = {0: [(1, -0.1), (2, -0.2), (3, -0.25), (4, -0.3), (5, -0.4)]}
    result = _run(cands, {0: [(9, -0.2, True)]}, num_negatives=2, relative_margin=0.2)
    # threshold -0.2 - 0.04 = -0.24: keep s <= -0.24 (a naive s_p * (1 - r) = -0.16 would keep -0.2)
    assert _reason(result, 2) == "relative_margin"
    assert _kept(result) == [3, 4]


def test_max_and_min_score_bounds():
    result = _run(CANDS, POS, num_negatives=2, max_score=0.75, min_score=0.45)
    assert _reason(result, 2) == "max_score"
    assert _reason(result, 6) == "min_score"
    assert _kept(result) == [3, 4]


def test_first_removing_step_gives_the_reason():
    # 0.8 fails both the absolute margin and max_score: absolute margin comes first
    result = _run(CANDS, POS, num_negatives=2, absolute_margin=0.1, max_score=0.5)
    assert _reason(result, 2) == "absolute_margin"
    assert _reason(result, 3) == "max_score"


def test_window_counts_survivors_after_filtering():
    # after the positive and 0.8 (max_score) go, survivors are 3..7; range_min 1 skips 3, range_max 3 ends at 5
    result = _run(CANDS, POS, range_max=3, num_negatives=2, max_score=0.75, range_min=1)
    assert _reason(result, 3) == "rank_window"
    assert _kept(result) == [4, 5]
    assert [_reason(result, d) for d in (6, 7)] == ["rank_window", "rank_window"]


def test_margins_anchor_on_the_lowest_positive():
    result = _run(CANDS, {0: [(1, 0.95, True), (2, 0.75, True)]}, num_negatives=2, absolute_margin=0.0)
    # s_p = min(0.95, 0.75) = 0.75: 0.7 survives, nothing above 0.75 does
    assert _kept(result) == [3, 4]


def test_ties_are_broken_by_corpus_row():
    cands = {0: [(5, 0.5), (3, 0.5), (4, 0.5), (6, 0.1)]}
    result = _run(cands, {0: [(9, 0.9, True)]}, num_negatives=2)
    assert _kept(result) == [3, 4]
    assert _reason(result, 5) == "not_sampled"


def test_not_enough_candidates_keeps_what_there_is():
    result = _run({0: [(1, 0.9), (2, 0.3)]}, POS, num_negatives=3)
    assert _kept(result) == [2]


def test_every_candidate_is_kept_or_has_a_known_reason():
    result = _run(CANDS, POS, num_negatives=2, relative_margin=0.05, max_score=0.65)
    assert set(result["reason"].drop_nulls()) <= set(REASONS)
    assert result.height == len(CANDS[0])


def test_random_sampling_is_seeded_per_query_and_without_replacement():
    cands = {q: [(d, 1 - d / 100) for d in range(1, 40)] for q in range(3)}
    pos = {q: [(0, 0.99, True)] for q in range(3)}
    first = _run(cands, pos, range_max=30, num_negatives=5, sampling_strategy="random", seed=7)
    again = _run(cands, pos, range_max=30, num_negatives=5, sampling_strategy="random", seed=7)
    other = _run(cands, pos, range_max=30, num_negatives=5, sampling_strategy="random", seed=8)
    kept = [_kept(first, q) for q in range(3)]
    assert kept == [_kept(again, q) for q in range(3)]
    assert kept != [_kept(other, q) for q in range(3)]
    assert all(len(set(k)) == 5 and all(1 <= d <= 30 for d in k) for k in kept)
    assert len({tuple(k) for k in kept}) == 3  # each query draws from its own stream


def test_random_sampling_does_not_depend_on_which_queries_are_mined_together():
    cands = {q: [(d, 1 - d / 100) for d in range(1, 40)] for q in range(4)}
    pos = {q: [(0, 0.99, True)] for q in range(4)}
    hits, positives, scores, ids = _case(cands, pos)
    cfg = MineConfig(num_negatives=4, sampling_strategy="random", relative_margin=None)
    whole = mine(hits, positives, scores, cfg, 30)
    part = mine(hits.filter(pl.col("query_row") == 2), positives.filter(pl.col("query_row") == 2),
                scores.filter(pl.col("query_row") == 2), cfg, 30)
    assert _kept(whole, 2) == _kept(part, 2)


def test_random_sampling_is_uniform_over_the_window():
    counts = np.zeros(20)
    for seed in range(400):
        chosen = query_rng(seed, "q").choice(20, 5, replace=False)
        counts[chosen] += 1
    expected = 400 * 5 / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 43.8  # the 0.999 quantile of chi-square with 19 degrees of freedom


@pytest.mark.parametrize("range_min, range_max, n", [(3, 3, 1), (0, 2, 3)])
def test_a_window_that_cannot_hold_the_negatives_is_rejected(range_min, range_max, n):
    with pytest.raises(ValueError, match="range"):
        MineConfig(range_min=range_min, range_max=range_max, num_negatives=n)


def _lexical_case(bm25: list[float], positive_bm25: list[float]):
    """Candidates 1..n scoring 0.8 - d/100 (dense) with the given BM25 scores; positives 50, 51 (dense 0.9, 0.85)."""
    hits, pos, scores, _ = _case({0: [(d, 0.8 - d / 100) for d in range(1, len(bm25) + 1)]},
                                 {0: [(50, 0.9, True), (51, 0.85, True)]})
    return (hits.with_columns(pl.Series("bm25", bm25, dtype=pl.Float32)), pos,
            scores.with_columns(pl.Series("bm25", positive_bm25, dtype=pl.Float32)))


def test_lexical_ratio_drops_what_bm25_scores_above_ratio_times_the_lowest_positive():
    hits, pos, scores = _lexical_case([9.0, 2.0, 6.5, 1.0, 0.0], [7.0, 5.0])  # lowest positive BM25: 5
    one = mine(hits, pos, scores, MineConfig(num_negatives=2, relative_margin=None), 10,
               lexical=LexicalConfig(ratio=1.0))
    assert [_reason(one, d) for d in (1, 3)] == ["lexical_relevant", "lexical_relevant"]
    assert _kept(one) == [2, 4] and one.filter(pl.col("doc_row") == 1)["bm25"].item() == 9.0
    looser = mine(hits, pos, scores, MineConfig(num_negatives=2, relative_margin=None), 10,
                  lexical=LexicalConfig(ratio=1.5))  # above 7.5 only
    assert _kept(looser) == [2, 3]
    without = mine(hits, pos, scores, MineConfig(num_negatives=2, relative_margin=None), 10)
    assert _kept(without) == [1, 2]  # no lexical section: BM25 scores alone change nothing


def test_lexical_rrf_drops_what_the_fused_rank_puts_ahead_of_the_lowest_positive():
    # dense ranks among candidates and positives: 50, 51, 1, 2, 3, 4; BM25 ranks: 3, 50, 51, 4, 2, 1
    hits, pos, scores = _lexical_case([0.1, 0.2, 12.0, 0.3], [10.0, 0.5])
    result = mine(hits, pos, scores, MineConfig(num_negatives=2, relative_margin=None), 10,
                  lexical=LexicalConfig(fusion="rrf", rrf_k=1))
    # rrf (k=1): 51 (the lowest positive): 1/3 + 1/4 = 0.583; 3: 1/6 + 1/2 = 0.667 (ahead); 1: 1/4 + 1/7 = 0.393
    assert _reason(result, 3) == "lexical_relevant"
    assert _kept(result) == [1, 2]


def test_lexical_relevant_comes_right_after_rescorer_relevant():
    assert REASONS.index("lexical_relevant") == REASONS.index("rescorer_relevant") + 1
    hits, pos, scores = _lexical_case([9.0, 1.0, 1.0], [7.0, 5.0])
    hits = hits.with_columns(pl.Series("rescore", [0.95, 0.1, 0.1], dtype=pl.Float32))
    scores = scores.with_columns(pl.Series("rescore", [0.9, 0.9], dtype=pl.Float32))
    result = mine(hits, pos, scores, MineConfig(num_negatives=1, relative_margin=None), 10, None, None,
                  RescoreConfig(model="m", kind="guide"), lexical=LexicalConfig(ratio=1.0))
    assert _reason(result, 1) == "rescorer_relevant"  # breaks both rules: the earlier step names it


def test_suspected_positives_are_listed_and_promoted_only_when_asked():
    # lowest positive: dense 0.85, BM25 5. Candidate 1 (0.79): below by dense. Candidate 9 (0.9, BM25 8): above by
    # both; candidate 8 (0.88, BM25 1): above by dense only, so not suspected once BM25 is on
    hits, pos, scores, _ = _case({0: [(9, 0.9), (8, 0.88), (1, 0.79), (2, 0.78), (3, 0.77)]},
                                 {0: [(50, 0.9, True), (51, 0.85, True)]})
    hits = hits.with_columns(pl.Series("bm25", [8.0, 1.0, 9.0, 0.0, 0.0], dtype=pl.Float32))
    scores = scores.with_columns(pl.Series("bm25", [7.0, 5.0], dtype=pl.Float32))
    listed = mine(hits, pos, scores, MineConfig(num_negatives=2, relative_margin=None), 10,
                  lexical=LexicalConfig(ratio=10.0))
    assert listed.filter(pl.col("suspected"))["doc_row"].to_list() == [9]
    assert _kept(listed) == [9, 8]  # listed, still mined: no rule removes them here
    dense_only = mine(hits, pos, scores, MineConfig(num_negatives=2, relative_margin=None), 10)
    assert dense_only.filter(pl.col("suspected"))["doc_row"].to_list() == [9, 8]
    promoted = mine(hits, pos, scores, MineConfig(num_negatives=2, relative_margin=None, promote_suspected=True), 10,
                    lexical=LexicalConfig(ratio=10.0))
    assert _reason(promoted, 9) == "promoted_positive" and _kept(promoted) == [8, 1]


def test_promotion_keeps_the_best_ranked_suspected_positives_per_known_positive_and_drops_the_rest():
    # query 0: one known positive at 0.5, five candidates above it; query 1: two known positives, three above.
    cands = {0: [(10, 0.9), (11, 0.8), (12, 0.7), (13, 0.65), (14, 0.6), (15, 0.4), (16, 0.3)],
             1: [(20, 0.9), (21, 0.8), (22, 0.7), (23, 0.2), (24, 0.1)]}
    positives = {0: [(50, 0.5, True)], 1: [(60, 0.6, True), (61, 0.5, True)]}
    result = _run(cands, positives, num_negatives=2, promote_suspected=True, max_promoted_per_positive=2)
    assert [_reason(result, d) for d in (10, 11, 12, 13, 14)] == ["promoted_positive"] * 2 + \
        ["suspected_not_promoted"] * 3
    assert _kept(result) == [15, 16]  # the cut ones are no negatives: they stay suspected, dropped
    assert result.filter(pl.col("query_row") == 0)["suspected"].sum() == 5
    assert [_reason(result, d, 1) for d in (20, 21, 22)] == ["promoted_positive"] * 3  # 2 known x 2 >= 3
    unbounded = _run(cands, positives, num_negatives=2, promote_suspected=True, max_promoted_per_positive=None)
    assert [_reason(unbounded, d) for d in (10, 11, 12, 13, 14)] == ["promoted_positive"] * 5
    default = _run(cands, positives, num_negatives=2, promote_suspected=True)  # 3 per known positive
    assert [_reason(default, d) for d in (10, 11, 12, 13)] == ["promoted_positive"] * 3 + ["suspected_not_promoted"]
    listed = _run(cands, positives, num_negatives=2)  # promotion off: no bound, nothing dropped for it
    assert "suspected_not_promoted" not in set(listed["reason"].drop_nulls()) and _kept(listed) == [10, 11]


def test_the_promotion_bound_counts_distinct_known_positives_and_must_be_positive():
    from negforge.schemas.config import ConfigError, validate_config

    cands = {0: [(10, 0.9), (11, 0.8), (12, 0.7), (13, 0.1)]}
    twice = {0: [(50, 0.5, True), (50, 0.5, True)]}  # one positive listed twice is one known positive
    result = _run(cands, twice, num_negatives=1, promote_suspected=True, max_promoted_per_positive=1)
    assert [_reason(result, d) for d in (10, 11, 12)] == ["promoted_positive"] + ["suspected_not_promoted"] * 2
    with pytest.raises(ConfigError, match="max_promoted_per_positive"):
        validate_config({"max_promoted_per_positive": 0}, "mine", MineConfig)
