"""A query's topic, and how central a document is to it: the rule that holds with one known positive per query.

A query's topic is the normalized mean of its TOPIC_SIZE best-ranked candidates (positives included): where the
query's relevant documents gather, whether they are labelled or not. A document's `topic_centrality` is its cosine to
that vector less the query's tightness, the mean cosine of those TOPIC_SIZE candidates to it: how much closer to the
topic than the query's own best candidates are on average. Subtracting the tightness puts queries on one scale: the
best candidates of a vague query (a few words) disagree, so every cosine to its topic is low, and a bound on raw
cosines removed nearly all candidates of tight queries while keeping those of vague ones (measured: README, "The
topic rule"). `mine.max_topic_centrality` drops candidates at least that central; `mine.topic_quantile` derives that
bound from the data: the quantile of the known positives' centralities to their own queries' topics, pooled over
queries. Pooled over queries, one positive per query is enough (a bound anchored on one query's own positive, as the
margins are, moves with wherever that one positive happens to rank). The positives come from a sample of at most
SAMPLE_QUERIES queries, chosen by a hash of their ids (so the sample does not depend on order or partitioning),
searched to TOPIC_SIZE; the sample is kept with the candidates, so a remine derives the same bound.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.manifest import TopicBound

TOPIC_SIZE = 10
SAMPLE_QUERIES = 2000
TOPIC_SAMPLE = {"query_row": pl.UInt32, "doc_row": pl.UInt32, "topic_centrality": pl.Float32}


def topic(ranked: np.ndarray) -> tuple[np.ndarray, float]:
    """A query's topic from its candidates' vectors in rank order (the normalized mean of the first TOPIC_SIZE) and
    its tightness (their mean cosine to it)."""
    total = ranked[:TOPIC_SIZE].astype(np.float64).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if not norm:
        return total.astype(np.float32), 0.0
    return (total / norm).astype(np.float32), norm / min(len(ranked), TOPIC_SIZE)


def centrality(vectors: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """The topic centrality of `vectors` to the topic of a query whose candidates' vectors are `ranked`."""
    direction, tightness = topic(ranked)
    return (vectors @ direction - np.float32(tightness)).astype(np.float32)


def sample_rows(positives: pl.DataFrame, size: int = SAMPLE_QUERIES) -> list[int]:
    """The query rows of the sample (sorted): all of them up to `size`, else the `size` with the smallest hash of
    their id."""
    queries = positives.select("query_row", "query_id").unique("query_row")
    if queries.height > size:
        digest = [hashlib.blake2b(query.encode(), digest_size=8).hexdigest() for query in queries["query_id"]]
        queries = queries.with_columns(pl.Series("digest", digest)).sort("digest", "query_row").head(size)
    return sorted(queries["query_row"].to_list())


def positive_centrality(hits: pl.DataFrame, positives: pl.DataFrame, corpus: np.ndarray) -> pl.DataFrame:
    """TOPIC_SAMPLE: each canonical positive's topic centrality (`hits`: the queries' ranked hits, at least
    TOPIC_SIZE deep where the corpus allows)."""
    own = positives.filter(pl.col("canonical")).select("query_row", "doc_row").unique().sort("query_row", "doc_row")
    columns: dict[str, list[Any]] = {name: [] for name in TOPIC_SAMPLE}
    docs = dict(own.group_by("query_row").agg("doc_row").iter_rows())
    for (query,), ranked in hits.sort("query_row", "rank").group_by("query_row", maintain_order=True):
        rows = sorted(docs.get(query, []))
        if not rows:
            continue
        top = np.asarray(corpus[ranked["doc_row"].to_numpy()[:TOPIC_SIZE]], dtype=np.float32)
        columns["query_row"] += [query] * len(rows)
        columns["doc_row"] += rows
        columns["topic_centrality"] += centrality(np.asarray(corpus[rows], dtype=np.float32), top).tolist()
    return pl.DataFrame(columns, schema=TOPIC_SAMPLE)


def topic_threshold(sample: pl.DataFrame, quantile: float) -> float:
    """The bound `topic_quantile` derives: that quantile of the sampled positives' topic centralities."""
    values = np.sort(sample["topic_centrality"].to_numpy().astype(np.float64))
    if not len(values):
        raise ValueError("no positive in the topic sample")
    return round(float(np.quantile(values, quantile)), 6)


def with_topic_bound(config: BuildConfig, sample: pl.DataFrame | None) -> tuple[BuildConfig, TopicBound | None]:
    """The config to mine with, `mine.topic_quantile` turned into its `max_topic_centrality` (`sample`: TOPIC_SAMPLE),
    and what was derived (None when the quantile is unset)."""
    quantile = config.mine.topic_quantile
    if quantile is None:
        return config, None
    if sample is None:
        raise ValueError("mine.topic_quantile needs the topic sample, which these candidates do not have")
    bound = topic_threshold(sample, quantile)
    mine = config.mine.model_copy(update={"topic_quantile": None, "max_topic_centrality": bound})
    return config.model_copy(update={"mine": mine}), TopicBound(
        quantile=quantile, max_topic_centrality=bound, positives=sample.height, queries=sample["query_row"].n_unique())
