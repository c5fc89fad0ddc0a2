"""Candidate-to-positive and candidate-to-candidate cosines, from the embeddings already computed.

For each query: the highest cosine of every candidate to any of the query's positives (paraphrases of a positive
are not negatives), and the pairs of its candidates that are near-duplicates of each other (cosine at least
PAIR_FLOOR, so that re-mining can use any `dedup.eps` up to 1 - PAIR_FLOOR). Queries are processed in batches, so
memory is bounded by a batch's candidates, not by the corpus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from negforge.schemas.tables import NEAR_PAIRS, frame

PAIR_FLOOR = 0.9


def _gather(shards: list[np.ndarray], shard_size: int, rows: np.ndarray) -> np.ndarray:
    """Vectors of corpus rows, read from the per-shard matrices."""
    out = np.empty((len(rows), shards[0].shape[1]), dtype=np.float32)
    which = rows // shard_size
    for shard in np.unique(which):
        mask = which == shard
        out[mask] = shards[shard][rows[mask] - shard * shard_size]
    return out


def candidate_similarity(hits_path: str, positives_path: str, corpus_vectors: list[str], shard_size: int,
                         out_dir: str, query_batch: int = 2000) -> dict[str, str]:
    """Add `pos_sim` to the hits and write the near-duplicate candidate pairs of every query."""
    hits = pl.read_parquet(hits_path).sort(["query_row", "rank"])
    positives = pl.read_parquet(positives_path, columns=["query_row", "doc_row"]).unique().sort("query_row")
    shards = [np.load(p, mmap_mode="r") for p in corpus_vectors]
    q, d = hits["query_row"].to_numpy(), hits["doc_row"].to_numpy().astype(np.int64)
    pq, pd_ = positives["query_row"].to_numpy(), positives["doc_row"].to_numpy().astype(np.int64)
    pos_sim = np.zeros(len(q), dtype=np.float32)
    pairs: dict[str, list] = {"query_row": [], "doc_row": [], "other_row": [], "cosine": []}
    starts = np.searchsorted(q, np.unique(q))
    bounds = np.r_[starts, len(q)]
    for batch in range(0, len(starts), query_batch):
        lo, hi = bounds[batch], bounds[min(batch + query_batch, len(starts))]
        batch_queries = q[lo:hi]
        in_batch = np.isin(pq, batch_queries)
        needed = np.unique(np.r_[d[lo:hi], pd_[in_batch]])
        vectors = _gather(shards, shard_size, needed)
        for start, stop in zip(bounds[batch:batch + query_batch], bounds[batch + 1:batch + query_batch + 1]):
            query = q[start]
            cand = vectors[np.searchsorted(needed, d[start:stop])]
            own = pd_[pq == query]
            if len(own):
                pos_sim[start:stop] = (cand @ vectors[np.searchsorted(needed, own)].T).max(axis=1)
            sims = cand @ cand.T
            i, j = np.nonzero(np.triu(sims >= PAIR_FLOOR, k=1))
            pairs["query_row"].extend([query] * len(i))
            pairs["doc_row"].extend(d[start + j])  # the lower-ranked member of the pair
            pairs["other_row"].extend(d[start + i])
            pairs["cosine"].extend(sims[i, j])
    out = Path(out_dir)
    hits.with_columns(pl.Series("pos_sim", pos_sim)).write_parquet(out / "hits-similarity.parquet")
    frame(NEAR_PAIRS, pairs).write_parquet(out / "near-pairs.parquet")
    return {"hits": str(out / "hits-similarity.parquet"), "near_pairs": str(out / "near-pairs.parquet")}
