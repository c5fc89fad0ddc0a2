"""False-negative audit: how many mined negatives held-out judgements call relevant, overall and per reason.

Given qrels that mining never saw (`audit.qrels`), over the training queries that have such judgements: the fraction
of kept negatives judged relevant (with a 95% interval from a bootstrap over queries, since negatives of one query
are not independent), the same fraction among the candidates each filter removed, and the hardness of what was kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from negforge.tasks.readers import read_qrels

BOOTSTRAP_SAMPLES = 2000


def _judged(path: str, fmt: str, positive_threshold: float) -> pl.DataFrame:
    """(query_id, doc_id) of the held-out judgements above the threshold, each pair once."""
    rows = read_qrels(path, fmt).rows
    return rows.filter(pl.col("score") > positive_threshold).select("query_id", "doc_id").unique()


def _rate_with_interval(per_query: pl.DataFrame, seed: int = 0) -> tuple[float, list[float]]:
    """Ratio of sums (relevant / all) and its 95% percentile-bootstrap interval over queries."""
    relevant, total = per_query["relevant"].to_numpy(), per_query["total"].to_numpy()
    rate = float(relevant.sum() / total.sum())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(total), size=(BOOTSTRAP_SAMPLES, len(total)))
    rates = relevant[picks].sum(axis=1) / np.maximum(total[picks].sum(axis=1), 1)
    return round(rate, 4), [round(float(x), 4) for x in np.quantile(rates, [0.025, 0.975])]


def audit(candidates: pl.DataFrame, query_ids: list[str], doc_ids: pl.DataFrame, qrels: str, fmt: str,
          positive_threshold: float, num_negatives: int) -> dict[str, Any]:
    """The audit report; `doc_ids` maps candidate doc_row to its id (columns row, id); a judgement is relevant when
    its score is above `positive_threshold` (input.positive_threshold, as in ingest)."""
    judged = _judged(qrels, fmt, positive_threshold)
    named = (candidates.join(pl.DataFrame({"query_row": range(len(query_ids)), "query_id": query_ids},
                                          schema={"query_row": pl.UInt32, "query_id": pl.String}), on="query_row")
             .join(doc_ids.rename({"row": "doc_row", "id": "doc_id"}), on="doc_row")
             .filter(pl.col("query_id").is_in(judged["query_id"].unique()))
             .join(judged.with_columns(pl.lit(True).alias("relevant")), on=["query_id", "doc_id"], how="left")
             .with_columns(pl.col("relevant").fill_null(False)))
    audited = named["query_id"].n_unique()
    if not audited:
        return {"n_queries": 0}
    kept = named.filter(pl.col("reason").is_null())
    per_query = kept.group_by("query_id").agg(pl.col("relevant").sum().alias("relevant"), pl.len().alias("total"))
    rate, interval = _rate_with_interval(per_query) if per_query.height else (0.0, [0.0, 0.0])
    by_reason = (named.filter(pl.col("reason").is_not_null()).group_by("reason")
                 .agg(pl.col("relevant").mean().round(4).alias("judged_relevant"), pl.len().alias("candidates"))
                 .sort("reason"))
    scores = kept["score"]
    full = per_query.filter(pl.col("total") >= num_negatives).height
    return {
        "n_queries": audited, "negatives": kept.height, "false_negative_rate": rate, "ci95": interval,
        "coverage": round(full / audited, 4),
        "by_reason": {r: {"judged_relevant": f, "candidates": n} for r, f, n in by_reason.iter_rows()},
        "negative_score": {"mean": round(float(scores.mean()), 4),
                           **{f"p{int(q * 100)}": round(float(scores.quantile(q)), 4) for q in (0.1, 0.5, 0.9)}}
        if kept.height else {},
    }
