"""The topic sample, on the Dask workers: a share of the sampled queries searched to TOPIC_SIZE, and their positives'
centralities to their queries' topics (tasks/mining/topic.py derives `mine.topic_quantile`'s bound from them)."""

from __future__ import annotations

import numpy as np
import polars as pl

from negforge.schemas.stages import SearchJob
from negforge.tasks.mining.partition import searched
from negforge.tasks.mining.topic import TOPIC_SIZE, positive_centrality
from negforge.tasks.search.exact import open_vectors


def sample_topic_centrality(job: SearchJob, rows: list[int]) -> pl.DataFrame:
    """tasks/topic.TOPIC_SAMPLE for the query rows `rows` (sorted): each canonical positive's topic centrality."""
    positives = pl.read_parquet(job.texts.positives).filter(pl.col("query_row").is_in(rows))
    query_rows = np.array(rows, dtype=np.int64)
    queries = np.ascontiguousarray(open_vectors(job.queries)[query_rows], dtype=np.float32)
    excluded = pl.read_parquet(job.excluded_docs)["dropped_row"].to_numpy() if job.excluded_docs else None
    hits, _, _ = searched(query_rows, queries, positives, job, excluded, depth=TOPIC_SIZE)
    return positive_centrality(hits, positives, open_vectors(job.corpus))
