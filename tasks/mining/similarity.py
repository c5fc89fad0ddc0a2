"""Candidate-to-positive, candidate-to-topic and candidate-to-candidate cosines, from the embeddings already computed.

For each query: the highest cosine of every candidate to any of the query's positives (paraphrases of a positive
are not negatives), its centrality to the query's topic (tasks/mining/topic.py), and the pairs of its candidates that
are near-duplicates of each other (cosine at least
PAIR_FLOOR, so that re-mining can use any `dedup.eps` up to 1 - PAIR_FLOOR). One query's numbers depend only on its
own candidates and positives, so they do not change with partitioning.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from negforge.schemas.tables import NEAR_PAIRS, frame
from negforge.tasks.mining.topic import centrality

PAIR_FLOOR = 0.9


def candidate_similarity(hits: pl.DataFrame, positives: pl.DataFrame, corpus: np.ndarray,
                         near_pairs: bool = True) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The hits with `pos_sim` and `topic_centrality` added, and the near-duplicate candidate pairs of each of their
    queries.

    Args:
        hits: (query_row, doc_row, ...) sorted by query_row then rank, each query's from its best candidate on.
        positives: (query_row, doc_row) of the same queries' positives.
        corpus: the corpus vectors, indexed by doc_row (memory-mapped).
        near_pairs: False: `pos_sim` only (the pairs table comes back empty).
    """
    q, d = hits["query_row"].to_numpy(), hits["doc_row"].to_numpy().astype(np.int64)
    positives = positives.select("query_row", "doc_row").unique().sort("query_row", "doc_row")
    pq, pd_ = positives["query_row"].to_numpy(), positives["doc_row"].to_numpy().astype(np.int64)
    needed = np.unique(np.r_[d, pd_])
    vectors = np.asarray(corpus[needed], dtype=np.float32)
    pos_sim = np.zeros(len(q), dtype=np.float32)
    topic_centrality = np.zeros(len(q), dtype=np.float32)
    pairs: dict[str, list] = {"query_row": [], "doc_row": [], "other_row": [], "cosine": []}
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]]) if len(q) else np.zeros(0, np.int64)
    stops = np.r_[starts[1:], len(q)].astype(np.int64)
    own_from, own_to = np.searchsorted(pq, q[starts], "left"), np.searchsorted(pq, q[starts], "right")
    for start, stop, lo, hi in zip(starts, stops, own_from, own_to):
        query = q[start]
        cand = vectors[np.searchsorted(needed, d[start:stop])]
        topic_centrality[start:stop] = centrality(cand, cand)
        if hi > lo:
            pos_sim[start:stop] = (cand @ vectors[np.searchsorted(needed, pd_[lo:hi])].T).max(axis=1)
        if not near_pairs:
            continue
        sims = cand @ cand.T
        i, j = np.nonzero(np.triu(sims >= PAIR_FLOOR, k=1))
        pairs["query_row"].extend([query] * len(i))
        pairs["doc_row"].extend(d[start + j])  # the lower-ranked member of the pair
        pairs["other_row"].extend(d[start + i])
        pairs["cosine"].extend(sims[i, j])
    return (hits.with_columns(pl.Series("pos_sim", pos_sim), pl.Series("topic_centrality", topic_centrality)),
            frame(NEAR_PAIRS, pairs))
