"""Sharded FAISS search merged across shards equals one exact search over the whole corpus."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from negforge.schemas.tables import POSITIVES, frame
from negforge.tasks.search import merge_hits, search_shard


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sharded_search(tmp_path, docs, queries, shard_size, depth, positives):
    np.save(tmp_path / "q.npy", queries)
    pos_path = tmp_path / "positives.parquet"
    positives.write_parquet(pos_path)
    out = tmp_path / f"out-{shard_size}"
    out.mkdir()
    results = []
    for i, start in enumerate(range(0, len(docs), shard_size)):
        path = tmp_path / f"corpus-{shard_size}-{i:05d}.npy"
        np.save(path, docs[start:start + shard_size])
        results.append(search_shard(str(path), start, [str(tmp_path / "q.npy")], str(pos_path), depth, 7, str(out)))
    merged = merge_hits([r["hits"] for r in results], [r["positive_scores"] for r in results], depth, str(out))
    return pl.read_parquet(merged["hits"]), pl.read_parquet(merged["positive_scores"])


@pytest.mark.parametrize("shard_size", [10, 33, 1000])
def test_sharded_top_k_equals_exact_search(tmp_path, shard_size):
    rng = np.random.default_rng(0)
    docs, queries = _unit(rng, 120), _unit(rng, 25)
    positives = frame(POSITIVES, {"query_row": [0, 3], "query_id": ["a", "b"], "doc_row": [5, 77],
                                  "positive_id": ["x", "y"], "text_hash": ["h", "i"], "canonical": [True, True]})
    hits, pos_scores = _sharded_search(tmp_path, docs, queries, shard_size, 9, positives)
    exact = queries @ docs.T
    for q in range(len(queries)):
        expected = np.argsort(-exact[q], kind="stable")[:9]
        got = hits.filter(pl.col("query_row") == q).sort("rank")
        assert got["doc_row"].to_list() == expected.tolist()
        np.testing.assert_allclose(got["score"].to_numpy(), exact[q, expected], atol=1e-5)
    assert pos_scores["doc_row"].to_list() == [5, 77]
    np.testing.assert_allclose(pos_scores["score"].to_numpy(), [exact[0, 5], exact[3, 77]], atol=1e-6)


def test_ties_across_shards_resolve_by_corpus_row(tmp_path):
    docs = np.tile(_unit(np.random.default_rng(1), 1), (12, 1))  # twelve identical vectors: all scores tie
    queries = docs[:2].copy()
    positives = frame(POSITIVES, {"query_row": [0], "query_id": ["a"], "doc_row": [0], "positive_id": ["x"],
                                  "text_hash": ["h"], "canonical": [True]})
    by_five, _ = _sharded_search(tmp_path, docs, queries, 5, 4, positives)
    assert by_five.filter(pl.col("query_row") == 1)["doc_row"].to_list() == [0, 1, 2, 3]
