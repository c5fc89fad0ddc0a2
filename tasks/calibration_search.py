"""The calibration's candidates, on a Dask worker: the multi-positive queries searched once, every positive known.

Hiding a positive only changes which candidates count as positives, so one search to the grid's largest depth serves
every fold (tasks/calibration.py): the hidden positive is then an ordinary candidate, and each fold's candidate
similarities to the positives it leaves are computed here from the vectors already there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import CalibrationFiles, SearchJob
from negforge.tasks.calibration import calibration_rows, fold_similarity, grid_depth, hidden_positives, save_calibration
from negforge.tasks.partition import rescored, searched
from negforge.tasks.search import open_vectors


def calibration_candidates(job: SearchJob, config: BuildConfig, out_dir: str) -> CalibrationFiles:
    """Search the multi-positive queries once, every positive known, to the grid's largest depth (with BM25 and
    rescores like a partition's candidates), draw the folds and their positive similarities, and write them."""
    positives = pl.read_parquet(job.texts.positives)
    rows = calibration_rows(positives)
    positives = positives.filter(pl.col("query_row").is_in(rows))
    documents = job.corpus.rows
    depth = grid_depth(config, job.texts.max_positives, documents)
    query_rows = np.array(rows, dtype=np.int64)
    queries = np.ascontiguousarray(open_vectors(job.queries)[query_rows], dtype=np.float32)
    excluded = pl.read_parquet(job.excluded_docs)["dropped_row"].to_numpy() if job.excluded_docs else None
    hits, near, positive_scores = searched(query_rows, queries, positives, job, excluded, depth=depth)
    if config.rescore.model:
        hits, positive_scores = rescored(hits, positive_scores, job.texts, config)
    hidden = hidden_positives(positives, rows, config.mine.calibration_folds, config.mine.seed)
    similarity = fold_similarity(hits, positives, hidden, open_vectors(job.corpus))
    meta = {"depth": depth, "folds": config.mine.calibration_folds, "seed": config.mine.seed,
            "max_positives": job.texts.max_positives, "documents": documents, "searchable": job.searchable}
    return save_calibration(Path(out_dir), hits, positive_scores, near, hidden, similarity, meta)
