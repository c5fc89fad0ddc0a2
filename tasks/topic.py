"""A query's topic, and how central a document is to it: the rule that holds with one known positive per query.

A query's topic is the normalized mean of its TOPIC_SIZE best-ranked candidates (positives included): where the
query's relevant documents gather, whether they are labelled or not. A candidate's `topic_sim` is its cosine to that
vector. `mine.max_topic_similarity` drops candidates at least that central; `mine.topic_quantile` derives that bound
from the data: the quantile of the known positives' cosines to their own queries' topics, pooled over queries. Pooled
over queries, one positive per query is enough (a bound anchored on one query's own positive, as the margins are,
moves with wherever that one positive happens to rank). The positives come from a sample of at most SAMPLE_QUERIES
queries, chosen by a hash of their ids (so the sample does not depend on order or partitioning), searched to
TOPIC_SIZE; the sample is kept with the candidates, so a remine derives the same bound.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import polars as pl

from negforge.schemas.config import BuildConfig

TOPIC_SIZE = 10
SAMPLE_QUERIES = 2000
TOPIC_SAMPLE = {"query_row": pl.UInt32, "doc_row": pl.UInt32, "topic_sim": pl.Float32}


def topic_vector(ranked: np.ndarray) -> np.ndarray:
    """The topic of a query from its candidates' vectors in rank order: the normalized mean of the first TOPIC_SIZE."""
    total = ranked[:TOPIC_SIZE].astype(np.float64).sum(axis=0)
    norm = np.linalg.norm(total)
    return (total / norm if norm else total).astype(np.float32)


def sample_rows(positives: pl.DataFrame, size: int = SAMPLE_QUERIES) -> list[int]:
    """The query rows of the sample (sorted): all of them up to `size`, else the `size` with the smallest hash of
    their id."""
    queries = positives.select("query_row", "query_id").unique("query_row")
    if queries.height > size:
        digest = [hashlib.blake2b(query.encode(), digest_size=8).hexdigest() for query in queries["query_id"]]
        queries = queries.with_columns(pl.Series("digest", digest)).sort("digest", "query_row").head(size)
    return sorted(queries["query_row"].to_list())


def positive_topic_similarity(hits: pl.DataFrame, positives: pl.DataFrame, corpus: np.ndarray) -> pl.DataFrame:
    """TOPIC_SAMPLE: each canonical positive's cosine to its query's topic (`hits`: the queries' ranked hits, at
    least TOPIC_SIZE deep where the corpus allows)."""
    own = positives.filter(pl.col("canonical")).select("query_row", "doc_row").unique().sort("query_row", "doc_row")
    columns: dict[str, list[Any]] = {name: [] for name in TOPIC_SAMPLE}
    docs = dict(own.group_by("query_row").agg("doc_row").iter_rows())
    for (query,), ranked in hits.sort("query_row", "rank").group_by("query_row", maintain_order=True):
        topic = topic_vector(np.asarray(corpus[ranked["doc_row"].to_numpy()[:TOPIC_SIZE]], dtype=np.float32))
        rows = sorted(docs.get(query, []))
        columns["query_row"] += [query] * len(rows)
        columns["doc_row"] += rows
        columns["topic_sim"] += (np.asarray(corpus[rows], dtype=np.float32) @ topic).tolist() if rows else []
    return pl.DataFrame(columns, schema=TOPIC_SAMPLE)


def topic_threshold(sample: pl.DataFrame, quantile: float) -> float:
    """The bound `topic_quantile` derives: that quantile of the sampled positives' topic similarities."""
    values = np.sort(sample["topic_sim"].to_numpy().astype(np.float64))
    if not len(values):
        raise ValueError("no positive in the topic sample")
    return round(float(np.quantile(values, quantile)), 6)


def with_topic_bound(config: BuildConfig, sample: pl.DataFrame | None) -> tuple[BuildConfig, dict[str, Any] | None]:
    """The config to mine with, `mine.topic_quantile` turned into its `max_topic_similarity` (`sample`: TOPIC_SAMPLE),
    and what was derived (None when the quantile is unset)."""
    quantile = config.mine.topic_quantile
    if quantile is None:
        return config, None
    if sample is None:
        raise ValueError("mine.topic_quantile needs the topic sample, which these candidates do not have")
    bound = topic_threshold(sample, quantile)
    mine = config.mine.model_copy(update={"topic_quantile": None, "max_topic_similarity": bound})
    return config.model_copy(update={"mine": mine}), {
        "quantile": quantile, "max_topic_similarity": bound, "positives": sample.height,
        "queries": sample["query_row"].n_unique()}
