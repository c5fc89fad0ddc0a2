"""The calibration's candidates, on the Dask workers: the multi-positive queries searched once, every positive known.

Hiding a positive only changes which candidates count as positives, so one search to the grid's largest depth serves
every fold (tasks/calibration/calibrate.py): the hidden positive is then an ordinary candidate, and each fold's
candidate similarities to the positives it leaves are computed here from the vectors already there. Every table is per
query, so a build splits the queries across its workers and concatenates the parts in query order.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import SearchJob
from negforge.tasks.calibration.calibrate import fold_similarity, hidden_positives
from negforge.tasks.mining.partition import rescored, searched
from negforge.tasks.search.exact import open_vectors

TABLES = ("hits", "positive-scores", "near-pairs", "hidden", "fold-similarity")


def calibration_candidates(job: SearchJob, config: BuildConfig, rows: list[int], depth: int) -> dict[str, pl.DataFrame]:
    """Search the multi-positive queries `rows` (sorted) once, every positive known, to `depth` (with BM25 and
    rescores like a partition's candidates), and draw the folds and their positive similarities: the TABLES."""
    positives = pl.read_parquet(job.texts.positives).filter(pl.col("query_row").is_in(rows))
    query_rows = np.array(rows, dtype=np.int64)
    queries = np.ascontiguousarray(open_vectors(job.queries)[query_rows], dtype=np.float32)
    excluded = pl.read_parquet(job.excluded_docs)["dropped_row"].to_numpy() if job.excluded_docs else None
    hits, near, positive_scores = searched(query_rows, queries, positives, job, excluded, depth=depth)
    if config.rescore.model:
        hits, positive_scores = rescored(hits, positive_scores, job.texts, config)
    hidden = hidden_positives(positives, rows, config.mine.calibration_folds, config.mine.seed)
    similarity = fold_similarity(hits, positives, hidden, open_vectors(job.corpus))
    return dict(zip(TABLES, (hits, positive_scores, near, hidden, similarity)))
