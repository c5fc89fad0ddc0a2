"""Exact inner-product search with FAISS, one corpus shard at a time, merged exactly across shards.

Memory is bounded by one shard's vectors plus the running top-k, not by the corpus size. Ties are broken by corpus
row, so the merged result does not depend on how the corpus was sharded.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import polars as pl

from negforge.schemas.tables import HITS, POSITIVE_SCORES, check, frame


def _query_matrix(query_vectors: list[str]) -> np.ndarray:
    return np.concatenate([np.load(p, mmap_mode="r") for p in query_vectors]).astype(np.float32, copy=False)


def _excluded(excluded_docs: str | None, first_doc_row: int, n_docs: int) -> faiss.SearchParameters | None:
    """Search parameters that skip the shard's documents dropped by corpus deduplication (None: none dropped)."""
    if excluded_docs is None:
        return None
    rows = pl.read_parquet(excluded_docs)["dropped_row"].to_numpy().astype(np.int64) - first_doc_row
    local = rows[(rows >= 0) & (rows < n_docs)]
    return faiss.SearchParameters(sel=faiss.IDSelectorNot(faiss.IDSelectorBatch(local))) if len(local) else None


def search_shard(corpus_vectors: str, first_doc_row: int, query_vectors: list[str], positives_path: str,
                 depth: int, query_batch_size: int, out_dir: str, excluded_docs: str | None = None) -> dict[str, str]:
    """Top-`depth` hits of every query in one corpus shard, and the scores of the positives that live in it.

    Documents listed in `excluded_docs` (corpus deduplication) are never returned.
    """
    docs = np.load(corpus_vectors)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    params = _excluded(excluded_docs, first_doc_row, docs.shape[0])
    queries = _query_matrix(query_vectors)
    k = min(depth, docs.shape[0])
    parts = []
    for start in range(0, queries.shape[0], query_batch_size):
        scores, rows = index.search(np.ascontiguousarray(queries[start:start + query_batch_size]), k, params=params)
        found = rows.reshape(-1) >= 0  # fewer than k documents left after exclusions: FAISS pads with -1
        parts.append(frame(HITS, {"query_row": np.repeat(np.arange(start, start + scores.shape[0]), k)[found],
                                  "doc_row": rows.reshape(-1)[found] + first_doc_row,
                                  "score": scores.reshape(-1)[found]}))
    name = Path(corpus_vectors).stem
    hits_path = Path(out_dir) / f"hits-{name}.parquet"
    pl.concat(parts).write_parquet(hits_path)

    local = (pl.read_parquet(positives_path, columns=["query_row", "doc_row"]).unique()
             .filter(pl.col("doc_row").is_between(first_doc_row, first_doc_row + docs.shape[0] - 1)))
    q = local["query_row"].to_numpy()
    d = local["doc_row"].to_numpy() - first_doc_row
    pos_scores = np.einsum("ij,ij->i", queries[q], docs[d]) if len(q) else np.zeros(0, np.float32)
    positives_out = Path(out_dir) / f"positive-scores-{name}.parquet"
    frame(POSITIVE_SCORES, {"query_row": q, "doc_row": local["doc_row"], "score": pos_scores}).write_parquet(
        positives_out)
    return {"hits": str(hits_path), "positive_scores": str(positives_out)}


def _top(hits: pl.DataFrame, depth: int) -> pl.DataFrame:
    return (hits.sort(["query_row", "score", "doc_row"], descending=[False, True, False])
            .group_by("query_row", maintain_order=True).head(depth))


def merge_hits(hit_paths: list[str], positive_score_paths: list[str], depth: int, out_dir: str) -> dict[str, str]:
    """Merge per-shard top-k lists into the exact global top-k, one shard at a time; rank 0 is the best."""
    merged = pl.DataFrame(schema=HITS)
    for path in hit_paths:
        merged = _top(pl.concat([merged, pl.read_parquet(path)]), depth)
    ranked = merged.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("query_row").alias("rank"))
    out = Path(out_dir)
    ranked.write_parquet(out / "hits.parquet")
    positives = pl.concat([pl.read_parquet(p) for p in positive_score_paths]).sort(["query_row", "doc_row"])
    check(POSITIVE_SCORES, positives, "positive scores").write_parquet(out / "positive-scores.parquet")
    return {"hits": str(out / "hits.parquet"), "positive_scores": str(out / "positive-scores.parquet")}
