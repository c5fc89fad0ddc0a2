"""The ids table, where mining ends: a row per (query, positive) with a training row, naming its query, positive
and negatives by id with their scores; the training set (tasks/registry/training_set.py) joins texts back to it.

Queries come in the order their first positive appeared, negatives in descending score order, as in
sentence-transformers' `mine_hard_negatives`.
"""

from __future__ import annotations

import polars as pl

from negforge.schemas.tables import (
    CANDIDATE_COLUMNS,
    IDS,
    LEXICAL_COLUMNS,
    RESCORE_COLUMNS,
    SUSPECTED_COLUMNS,
    check,
    shard_rows,
)


def _minimum_negatives(fmt: str, num_negatives: int) -> int:
    """How many negatives a query needs for its rows to appear, per format (as the reference does)."""
    return {"n-tuple": num_negatives, "triplet": 1, "labeled-list": 1, "labeled-pair": 0}[fmt]


def _dropped(candidates: pl.DataFrame, corpus_shards: list[str]) -> pl.DataFrame:
    """Per query, the candidates that did not become negatives, in rank order, with their reasons."""
    dropped = candidates.filter(pl.col("reason").is_not_null()).sort(["query_row", "rank"])
    doc_ids = shard_rows(corpus_shards, dropped["doc_row"]).select("row", "id")
    return (dropped.join(doc_ids, left_on="doc_row", right_on="row", maintain_order="left")
            .group_by("query_row", maintain_order=True)
            .agg(pl.col("id").alias("candidate_ids"), pl.col("score").alias("candidate_scores"),
                 pl.col("reason").alias("candidate_reasons")))


def _suspected(candidates: pl.DataFrame, corpus_shards: list[str]) -> pl.DataFrame:
    """Per query, the ids of its suspected positives (candidates at or above its lowest positive by every signal
    that is on), in rank order."""
    suspected = candidates.filter(pl.col("suspected")).sort(["query_row", "rank"])
    doc_ids = shard_rows(corpus_shards, suspected["doc_row"]).select("row", "id")
    return (suspected.join(doc_ids, left_on="doc_row", right_on="row", maintain_order="left")
            .group_by("query_row", maintain_order=True).agg(pl.col("id").alias("suspected_positive_ids")))


def ids_table(candidates: pl.DataFrame, positives: pl.DataFrame, positive_scores: pl.DataFrame,
              corpus_shards: list[str], fmt: str, num_negatives: int,
              keep_candidates: bool = False) -> tuple[pl.DataFrame, list[str]]:
    """One row per (query, positive) that has a training row, and the ids of the queries short of negatives.

    When the positive scores carry the rescorer's (`rescore`) or BM25's (`bm25`), rows carry them too. Every row lists
    its query's suspected positives. With `keep_candidates`, each row also lists the query's dropped candidates with
    their scores and reasons.
    """
    extra = {"rescore": RESCORE_COLUMNS, "bm25": LEXICAL_COLUMNS}
    kept = candidates.filter(pl.col("reason").is_null()).sort(["query_row", "score", "doc_row"],
                                                             descending=[False, True, False])
    doc_ids = shard_rows(corpus_shards, kept["doc_row"]).select("row", pl.col("id").alias("negative_id"))
    negatives = (kept.join(doc_ids, left_on="doc_row", right_on="row", maintain_order="left")
                 .group_by("query_row", maintain_order=True)
                 .agg(pl.col("negative_id").alias("negative_ids"), pl.col("score").alias("negative_scores"),
                      pl.col("rescore").alias("negative_rescores"), pl.col("bm25").alias("negative_bm25s")))
    names = {"score": "positive_score", "rescore": "positive_rescore", "bm25": "positive_bm25"}
    renamed = positive_scores.rename({k: v for k, v in names.items() if k in positive_scores.columns})
    rows = (positives.join(renamed, on=["query_row", "doc_row"], how="left", maintain_order="left")
            .join(negatives, on="query_row", how="left", maintain_order="left")
            .join(_suspected(candidates, corpus_shards), on="query_row", how="left", maintain_order="left")
            .with_columns(pl.col("negative_ids", "suspected_positive_ids").fill_null(pl.lit([], pl.List(pl.String))),
                          pl.col("negative_scores", "negative_rescores", "negative_bm25s")
                          .fill_null(pl.lit([], pl.List(pl.Float32)))))
    found = rows["negative_ids"].list.len()
    short = rows.filter(found < num_negatives)["query_id"].unique(maintain_order=True).to_list()
    table = rows.filter(found >= _minimum_negatives(fmt, num_negatives))
    schema = IDS | SUSPECTED_COLUMNS
    for column, columns in extra.items():
        if column in positive_scores.columns:
            schema |= columns
    schema |= CANDIDATE_COLUMNS if keep_candidates else {}
    if keep_candidates:
        table = table.join(_dropped(candidates, corpus_shards), on="query_row", how="left", maintain_order="left")
    return check(schema, table.select(list(schema)), "ids table"), short
