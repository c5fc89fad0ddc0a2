"""The paired bootstrap interval on examples whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from negforge.tasks.evaluation.bootstrap import paired_interval


def test_one_query_in_four_gains_one_point():
    # Resampling 4 queries: the mean is Binomial(4, 1/4) / 4; P(0) = 0.316 and P(<= 2) = 0.949 < 0.975 <= P(<= 3),
    # so the 95% percentile interval is exactly [0, 0.75].
    result = paired_interval(np.zeros((1, 4)), np.array([[0.0, 0.0, 0.0, 1.0]]))
    assert result.mean == 0.25 and result.ci == [0.0, 0.75]
    assert (result.queries, result.seeds) == (4, 1)


def test_pairing_cancels_query_difficulty():
    # Queries differ wildly in difficulty, but every query gains exactly 0.05: a paired interval is that point,
    # where comparing the two means unpaired would be wide.
    difficulty = np.random.default_rng(1).random((3, 200))
    result = paired_interval(difficulty, difficulty + 0.05)
    assert result.ci == pytest.approx([0.05, 0.05]) and result.seeds == 3


def test_seeds_are_resampled_too():
    # Two seeds: one gains 0.1 on every query, the other nothing. Queries alone would give a point; drawing seeds
    # with replacement gives 0, 0.05 or 0.1 with probabilities 1/4, 1/2, 1/4.
    before = np.zeros((2, 50))
    after = np.vstack([np.full(50, 0.1), np.zeros(50)])
    result = paired_interval(before, after)
    assert result.mean == pytest.approx(0.05) and result.ci == pytest.approx([0.0, 0.1])


def test_a_real_difference_excludes_zero_and_noise_does_not():
    rng = np.random.default_rng(7)
    base = rng.random((1, 300))
    better = paired_interval(base, base + 0.03 + rng.normal(0, 0.05, (1, 300)))
    noise = paired_interval(base, base + rng.normal(0, 0.05, (1, 300)))
    assert better.ci[0] > 0
    assert noise.ci[0] < 0 < noise.ci[1]


def test_refuses_unpaired_shapes():
    with pytest.raises(ValueError, match="seeds, queries"):
        paired_interval(np.zeros(3), np.zeros(3))
