"""A paired bootstrap interval for a difference in nDCG@10: is one training set's model really better?

Both models answer the same queries, so the difference is taken per query (and per seed: models trained with the
same seed are paired) before resampling: query difficulty, which dwarfs most effects, cancels out. Each replicate
draws the queries with replacement and, with several seeds, the seeds too (training noise is part of the
uncertainty); drawing with replacement is done as multinomial counts, so memory stays at replicates x queries.
"""

from __future__ import annotations

import numpy as np

from negforge.schemas.evaluation import Interval

SAMPLES = 10_000


def paired_interval(before: np.ndarray, after: np.ndarray, level: float = 0.95, samples: int = SAMPLES,
                    seed: int = 0) -> Interval:
    """Mean of `after - before` and its percentile-bootstrap interval.

    Args:
        before, after: per-query scores shaped (seeds, queries), paired by index; a model that was not trained
            (the base model) is one row repeated for every seed.
        level: the interval's coverage.

    Returns:
        The mean, its interval (low, high), and what it was drawn from.
    """
    differences = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if differences.ndim != 2 or not differences.size:
        raise ValueError(f"expected per-query scores shaped (seeds, queries), got {differences.shape}")
    seeds, queries = differences.shape
    rng = np.random.default_rng(seed)
    query_counts = rng.multinomial(queries, np.full(queries, 1 / queries), size=samples)  # (samples, queries)
    per_seed = differences @ query_counts.T / queries  # (seeds, samples)
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=samples)  # (samples, seeds)
    means = np.einsum("rs,sr->r", seed_counts, per_seed) / seeds
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(mean=round(float(differences.mean()), 6), ci=[round(float(low), 6), round(float(high), 6)],
                    level=level, queries=queries, seeds=seeds, samples=samples)

