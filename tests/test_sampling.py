"""Sampling strategies checked statistically (seeded), and the hub cap: honoured and deterministic."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from negforge.schemas.config import MineConfig
from negforge.tasks.mining.rules import mine
from tests.test_mine import _case, _kept, _reason

SCORES = [0.70, 0.66, 0.62, 0.58, 0.54, 0.50, 0.46, 0.42]
N_QUERIES = 3000
CHI2_999 = 24.3  # 0.999 quantile of chi-square with 7 degrees of freedom


def _picks(strategy: str, **options) -> np.ndarray:
    """How often each of the 8 candidates is the one negative chosen, over many queries with the same scores."""
    candidates = {q: [(d + 1, s) for d, s in enumerate(SCORES)] for q in range(N_QUERIES)}
    positives = {q: [(0, 0.8, True)] for q in range(N_QUERIES)}
    hits, pos, scores, ids = _case(candidates, positives)
    cfg = MineConfig(num_negatives=1, sampling_strategy=strategy, relative_margin=None, **options)
    kept = mine(hits, pos, scores, cfg, 20).filter(pl.col("reason").is_null())["doc_row"].to_numpy()
    return np.bincount(kept - 1, minlength=len(SCORES))


def _chi2(counts: np.ndarray, p: np.ndarray) -> float:
    expected = counts.sum() * p
    return float(((counts - expected) ** 2 / expected).sum())


def test_random_is_uniform():
    assert _chi2(_picks("random"), np.full(8, 1 / 8)) < CHI2_999


def test_softmax_follows_exp_score_over_temperature():
    counts = _picks("softmax", softmax_temperature=0.05)
    p = np.exp(np.array(SCORES) / 0.05)
    assert _chi2(counts, p / p.sum()) < CHI2_999
    assert counts[0] > counts[-1] * 5  # and it is really skewed to the hard end


def test_simans_peaks_around_the_positive_score_plus_b():
    counts = _picks("simans", simans_a=200.0, simans_b=-0.2)
    p = np.exp(-200.0 * (np.array(SCORES) - 0.8 + 0.2) ** 2)
    assert _chi2(counts, p / p.sum()) < CHI2_999
    assert set(np.argsort(counts)[-2:]) == {2, 3}  # 0.62 and 0.58 are nearest to s_p + b = 0.6


@pytest.mark.parametrize("strategy", ["random", "softmax", "simans"])
def test_sampling_is_without_replacement_and_reproducible(strategy):
    candidates = {q: [(d + 1, s) for d, s in enumerate(SCORES)] for q in range(5)}
    positives = {q: [(0, 0.8, True)] for q in range(5)}
    hits, pos, scores, ids = _case(candidates, positives)
    cfg = MineConfig(num_negatives=4, sampling_strategy=strategy, relative_margin=None)
    first, again = mine(hits, pos, scores, cfg, 20), mine(hits, pos, scores, cfg, 20)
    for q in range(5):
        assert len(set(_kept(first, q))) == 4
        assert _kept(first, q) == _kept(again, q)


def test_hub_cap_is_honoured_in_query_order_and_deterministic():
    candidates = {q: [(d, 0.9 - d / 100) for d in range(1, 6)] for q in range(3)}
    positives = {q: [(0, 0.95, True)] for q in range(3)}
    hits, pos, scores, ids = _case(candidates, positives)
    cfg = MineConfig(num_negatives=2, relative_margin=None, max_uses_per_negative=1)
    result = mine(hits, pos, scores, cfg, 10)
    assert [_kept(result, q) for q in range(3)] == [[1, 2], [3, 4], [5]]
    assert _reason(result, 1, query=1) == "over_used" and _reason(result, 3, query=2) == "over_used"
    assert result.equals(mine(hits, pos, scores, cfg, 10))
    uses = result.filter(pl.col("reason").is_null()).group_by("doc_row").len()["len"]
    assert uses.max() == 1
