"""Streaming search: exact top-k, bit-identical for any block size and query partitioning, ties by corpus row."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from negforge.schemas.stages import VectorFile
from negforge.tasks.search.exact import SLACK, propose, rank_exactly


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _search(queries, docs, depth, rows_per_block, excluded=None):
    path = Path(tempfile.mkdtemp()) / "corpus.npy"
    np.save(path, docs)
    proposed = propose(queries, VectorFile(str(path), *docs.shape), depth + SLACK, rows_per_block, excluded)
    return rank_exactly(queries, docs, proposed, depth)


@pytest.mark.parametrize("rows_per_block", [10, 33, 1000])
def test_top_k_equals_brute_force(rows_per_block):
    rng = np.random.default_rng(0)
    docs, queries = _unit(rng, 120), _unit(rng, 25)
    q, rows, scores = _search(queries, docs, 9, rows_per_block)
    exact = queries @ docs.T
    for query in range(len(queries)):
        expected = np.argsort(-exact[query], kind="stable")[:9]
        assert rows[q == query].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[q == query], exact[query, expected], atol=1e-6)


def test_results_are_bit_identical_for_any_block_size_and_partitioning():
    rng = np.random.default_rng(3)
    docs, queries = _unit(rng, 3000, 64), _unit(rng, 90, 64)
    whole = _search(queries, docs, 20, 3000)
    for rows_per_block in (7, 256, 1111):
        for cut in ((0, 90), (0, 1, 2, 45, 90), tuple(range(0, 91, 10))):
            parts = [_search(queries[a:b], docs, 20, rows_per_block) for a, b in zip(cut[:-1], cut[1:])]
            q = np.concatenate([p[0] + a for p, a in zip(parts, cut[:-1])])
            assert np.array_equal(q, whole[0])
            assert np.array_equal(np.concatenate([p[1] for p in parts]), whole[1])
            assert np.array_equal(np.concatenate([p[2] for p in parts]), whole[2])  # same bits


def test_ties_resolve_by_corpus_row_across_blocks():
    docs = np.tile(_unit(np.random.default_rng(1), 1), (12, 1))  # twelve identical vectors: all scores tie
    q, rows, _ = _search(docs[:2].copy(), docs, 4, 5)
    assert rows[q == 1].tolist() == [0, 1, 2, 3]


def test_excluded_rows_are_never_returned_and_short_corpora_pad_nothing():
    rng = np.random.default_rng(2)
    docs, queries = _unit(rng, 30), _unit(rng, 4)
    excluded = np.array([0, 5, 6, 29])
    q, rows, _ = _search(queries, docs, 40, 8, excluded)
    assert not set(rows.tolist()) & set(excluded.tolist())
    assert np.bincount(q).tolist() == [26] * 4  # every remaining document once per query, no -1 padding
