"""The recall probe of an approximate index: a seeded sample of queries searched exactly and approximately.

It reports the candidate-window recall (the share of the exact top-`depth` candidates the index found) and the
share of the sample's mined negatives that change; with `search.target_recall` and no fixed nprobe/ef_search, the
setting doubles from the cheapest until the probe meets the target (or the last one tried is kept, and the probe
says the target was not met). Mining in the probe is the partition's, before rescoring and the hub cap.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import ApproximateSearch, SearchJob
from negforge.tasks.mining.adaptive_depth import mine_options
from negforge.tasks.mining.partition import searched
from negforge.tasks.search.ann_index import Probe, knobs, list_count, window_recall
from negforge.tasks.search.exact import open_vectors


def _kept(hits: pl.DataFrame, near: pl.DataFrame, positives: pl.DataFrame, positive_scores: pl.DataFrame,
          job: SearchJob, config: BuildConfig) -> pl.DataFrame:
    mined = mine_options(hits, positives, positive_scores, near, config.model_copy(update={"rescore": None}),
                         job.range_max, defer_sampling=config.mine.max_uses_per_negative is not None)
    return mined.filter(pl.col("reason").is_null()).select("query_row", "doc_row")


def probe(job: SearchJob, index_path: str, config: BuildConfig) -> Probe:
    """Choose the index's search setting on a sample of queries, and measure what it changes."""
    cfg = config.search
    rows = np.sort(np.random.default_rng(cfg.seed).choice(job.queries.rows, min(job.queries.rows, cfg.probe_queries),
                                                          replace=False)).astype(np.int64)
    queries = np.ascontiguousarray(open_vectors(job.queries)[rows], dtype=np.float32)
    positives = pl.read_parquet(job.texts.positives).filter(pl.col("query_row").is_in(rows))
    excluded = pl.read_parquet(job.excluded_docs)["dropped_row"].to_numpy() if job.excluded_docs else None
    exact_hits, exact_near, positive_scores = searched(rows, queries, positives, job, excluded)
    fixed = cfg.nprobe if cfg.index == "ivf" else cfg.ef_search
    tried = [fixed] if fixed else knobs(cfg.index, job.depth, list_count(cfg, job.corpus.rows))
    for knob in tried:
        approximate = replace(job, approximate=ApproximateSearch(index_path, cfg.index, knob))
        hits, near, _ = searched(rows, queries, positives, approximate, excluded)
        recall = window_recall(exact_hits, hits)
        if cfg.target_recall is None or recall >= cfg.target_recall:
            break
    exact = _kept(exact_hits, exact_near, positives, positive_scores, job, config)
    approximate_kept = _kept(hits, near, positives, positive_scores, job, config)
    changed = exact.join(approximate_kept, on=["query_row", "doc_row"], how="anti").height
    return Probe(index=index_path, kind=cfg.index, knob=knob, recall=round(recall, 4),
                 negatives_changed=round(changed / exact.height, 4) if exact.height else None, queries=len(rows),
                 met_target=cfg.target_recall is None or recall >= cfg.target_recall)
