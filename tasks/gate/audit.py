"""False-negative audit: how many mined negatives held-out judgements call relevant, overall and per reason.

Given qrels that mining never saw (`audit.qrels`), over the training queries that have such judgements: the fraction
of kept negatives judged relevant (with a 95% interval from a bootstrap over queries, since negatives of one query
are not independent), the same fraction among the candidates each filter removed, and the hardness of what was kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from negforge.tasks.ingest.readers import read_qrels

BOOTSTRAP_SAMPLES = 2000


def _judged(path: str, fmt: str, positive_threshold: float) -> pl.DataFrame:
    """(query_id, doc_id) of the held-out judgements above the threshold, each pair once."""
    rows = read_qrels(path, fmt).rows
    return rows.filter(pl.col("score") > positive_threshold).select("query_id", "doc_id").unique()


def bootstrap_picks(queries: int, seed: int = 0) -> np.ndarray:
    """BOOTSTRAP_SAMPLES resamples (with replacement) of `queries` query positions, one per line."""
    return np.random.default_rng(seed).integers(0, queries, size=(BOOTSTRAP_SAMPLES, queries))


def bootstrap_rates(per_query: pl.DataFrame, picks: np.ndarray) -> np.ndarray:
    """The ratio of sums (relevant / all) in each resample of the queries."""
    relevant, total = per_query["relevant"].to_numpy(), per_query["total"].to_numpy()
    return relevant[picks].sum(axis=1) / np.maximum(total[picks].sum(axis=1), 1)


def rate_with_interval(per_query: pl.DataFrame, picks: np.ndarray | None = None) -> tuple[float, list[float]]:
    """Ratio of sums (relevant / all) and its 95% percentile-bootstrap interval over queries (`picks`: the resamples,
    default `bootstrap_picks` of these queries)."""
    rate = float(per_query["relevant"].sum() / per_query["total"].sum())
    rates = bootstrap_rates(per_query, bootstrap_picks(per_query.height) if picks is None else picks)
    return round(rate, 4), [round(float(x), 4) for x in np.quantile(rates, [0.025, 0.975])]


def audit(candidates: pl.DataFrame, positives: pl.DataFrame, doc_ids: pl.DataFrame, qrels: str, fmt: str,
          positive_threshold: float, num_negatives: int) -> dict[str, Any]:
    """The audit report; `positives` names each query row (query_row, query_id), `doc_ids` each candidate doc_row
    (columns row, id); a judgement is relevant when its score is above `positive_threshold` (input.positive_threshold,
    as in ingest)."""
    judged = _judged(qrels, fmt, positive_threshold)
    named = (candidates.join(positives.select("query_row", "query_id").unique(), on="query_row")
             .join(doc_ids.rename({"row": "doc_row", "id": "doc_id"}), on="doc_row")
             .filter(pl.col("query_id").is_in(judged["query_id"].unique()))
             .join(judged.with_columns(pl.lit(True).alias("relevant")), on=["query_id", "doc_id"], how="left")
             .with_columns(pl.col("relevant").fill_null(False)))
    audited = named["query_id"].n_unique()
    if not audited:
        return {"n_queries": 0}
    kept = named.filter(pl.col("reason").is_null())
    per_query = (kept.group_by("query_id").agg(pl.col("relevant").sum().alias("relevant"), pl.len().alias("total"))
                 .sort("query_id"))  # in a fixed order: the bootstrap's resamples are positions
    rate, interval = rate_with_interval(per_query) if per_query.height else (None, None)  # no negatives: undefined
    by_reason = (named.filter(pl.col("reason").is_not_null()).group_by("reason")
                 .agg(pl.col("relevant").mean().round(4).alias("judged_relevant"), pl.len().alias("candidates"))
                 .sort("reason"))
    scores = kept["score"]
    score_stats = {"mean": scores.mean(), **{f"p{int(q * 100)}": scores.quantile(q) for q in (0.1, 0.5, 0.9)}}
    full = per_query.filter(pl.col("total") >= num_negatives).height
    return {
        "n_queries": audited, "negatives": kept.height, "false_negative_rate": rate, "ci95": interval,
        "coverage": round(full / audited, 4),
        "by_reason": {r: {"judged_relevant": f, "candidates": n} for r, f, n in by_reason.iter_rows()},
        "negative_score": {k: None if v is None else round(float(v), 4) for k, v in score_stats.items()},
    }
