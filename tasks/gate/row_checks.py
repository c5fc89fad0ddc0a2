"""Row-wise quality conditions of a candidate version, computed in polars as boolean columns.

The suites in tasks/gate/expectations.py then expect every one of them true; this keeps Great Expectations to
column-level work, which it does fast.
"""

from __future__ import annotations

import polars as pl

from negforge.schemas.config import BuildConfig, InputConfig
from negforge.tasks.ingest.readers import Field, read_qrels, read_table
from negforge.tasks.ingest.text import text_hashes


def _not_empty(column: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(column)
    if dtype == pl.String:
        return col.is_not_null() & (col.str.strip_chars().str.len_chars() > 0)
    return col.is_not_null() & col.list.eval(pl.element().is_not_null() & (pl.element().str.strip_chars() != "")).list.all()


def text_checks(data: pl.DataFrame) -> pl.DataFrame:
    """One row per training row: are all its texts (strings and lists of strings) present and non-empty?"""
    text_columns = [c for c, t in data.schema.items() if t == pl.String or t == pl.List(pl.String)]
    condition = pl.all_horizontal([_not_empty(c, data.schema[c]) for c in text_columns]) if text_columns else pl.lit(True)
    return data.select(condition.alias("texts_not_empty"))


def _filter_violation(score: pl.Expr, lowest: pl.Expr, cfg: BuildConfig) -> pl.Expr:
    """True where a kept negative's score breaks a margin or bound of the mining config (with tolerance)."""
    broken = cfg.mine.score_filters(score, lowest, cfg.validate_.score_tolerance).values()
    return pl.any_horizontal(pl.lit(False), *broken)


def split_query_hashes(qrels: str, queries: str, cfg: InputConfig) -> set[str]:
    """Text hashes of the queries a split's qrels name (read with `cfg`'s format and query columns)."""
    wanted = read_qrels(qrels, cfg.format).rows["query_id"].unique()
    rows = read_table(queries, cfg.format, {"id": Field(cfg.query_id_field), "text": Field(cfg.query_text_field)}).rows
    return set(text_hashes(rows.filter(pl.col("id").is_in(wanted.implode()))["text"]).to_list())


def eval_query_hashes(cfg: BuildConfig) -> set[str]:
    """Text hashes of the evaluation split's queries (those named in validate.eval_qrels)."""
    if not cfg.validate_.eval_qrels:
        return set()
    return split_query_hashes(cfg.validate_.eval_qrels, cfg.validate_.eval_queries or cfg.input.queries, cfg.input)


def leaked_queries(query_shards: list[str], hashes: set[str]) -> list[str]:
    """Ids of training queries whose text (by normalized-text hash) is one of `hashes`: the leakage rule."""
    queries = pl.read_parquet(query_shards, columns=["id", "text_hash"])
    return queries.filter(pl.col("text_hash").is_in(list(hashes)))["id"].to_list()


def contaminated_queries(query_shards: list[str], cfg: BuildConfig) -> list[str]:
    """Ids of training queries whose text equals a query of the evaluation split."""
    return leaked_queries(query_shards, eval_query_hashes(cfg))


def row_checks(ids: pl.DataFrame, positives: pl.DataFrame, corpus_shards: list[str], query_shards: list[str],
               cfg: BuildConfig, eval_hashes: set[str]) -> pl.DataFrame:
    """One row per ids row with a boolean column per condition of OUTPUT_CHECKS (True: the row is fine)."""
    known = positives.group_by("query_id").agg(pl.col("positive_id").alias("known_ids"),
                                               pl.col("text_hash").alias("known_hashes"))
    own = positives.select("query_id", "positive_id", pl.col("text_hash").alias("positive_hash"))
    negative_ids = ids["negative_ids"].explode().drop_nulls().unique()
    id_hash = (pl.scan_parquet(corpus_shards).filter(pl.col("id").is_in(negative_ids))
               .select(pl.col("id").alias("negative_id"), pl.col("text_hash").alias("negative_hash")).collect())
    anchor_hash = pl.scan_parquet(query_shards).select(pl.col("id").alias("query_id"),
                                                       pl.col("text_hash").alias("anchor_hash")).collect()
    rescored = "negative_rescores" in ids.columns  # then kept negatives must also satisfy the rescorer's rule
    ratio = cfg.lexical.ratio if "negative_bm25s" in ids.columns else None  # and the lexical ratio
    lowest = ids.group_by("query_id").agg(pl.col("positive_score").min().alias("lowest"),
                                          *([pl.col("positive_rescore").min().alias("lowest_rescore")] if rescored
                                            else []),
                                          *([pl.col("positive_bm25").min().alias("lowest_bm25")] if ratio else []))
    rows = (ids.with_row_index("row")
            .join(own, on=["query_id", "positive_id"], how="left")
            .join(known, on="query_id", how="left")
            .join(lowest, on="query_id", how="left")
            .join(anchor_hash, on="query_id", how="left"))
    low, high = -1 - cfg.validate_.score_tolerance, 1 + cfg.validate_.score_tolerance
    broken = _filter_violation(pl.col("score"), pl.col("lowest"), cfg)
    if rescored:
        broken |= pl.col("rescore") > cfg.rescore.bound(pl.col("lowest_rescore")) + cfg.validate_.score_tolerance
    if ratio:
        broken |= pl.col("bm25") > ratio * pl.col("lowest_bm25") * (1 + cfg.validate_.score_tolerance)
    extra = ([("lowest_rescore", "negative_rescores", "rescore")] if rescored else []) + (
        [("lowest_bm25", "negative_bm25s", "bm25")] if ratio else [])
    negatives = (rows.select("row", "positive_id", "positive_hash", "known_ids", "known_hashes", "lowest",
                             pl.col("negative_ids").alias("negative_id"), pl.col("negative_scores").alias("score"),
                             *[c for low, column, name in extra for c in (low, pl.col(column).alias(name))])
                 .explode(["negative_id", "score", *[name for _, _, name in extra]]).drop_nulls("negative_id")
                 .join(id_hash, on="negative_id", how="left")
                 .select("row",
                         ((pl.col("negative_id") == pl.col("positive_id"))
                          | (pl.col("negative_hash") == pl.col("positive_hash"))).fill_null(False).alias("is_own"),
                         (pl.col("known_ids").list.contains(pl.col("negative_id"))
                          | pl.col("known_hashes").list.contains(pl.col("negative_hash"))).fill_null(False)
                         .alias("is_known"),
                         (pl.col("score").is_finite() & pl.col("score").is_between(low, high)).alias("score_ok"),
                         broken.alias("broken"))
                 .group_by("row").agg(pl.col("is_own").any(), pl.col("is_known").any(), pl.col("score_ok").all(),
                                      pl.col("broken").any()))
    return (rows.join(negatives, on="row", how="left").sort("row")
            .select("query_id", "positive_id", "negative_ids",
                    (~pl.col("is_own").fill_null(False)).alias("negative_not_own_positive"),
                    (~pl.col("is_known").fill_null(False)).alias("negative_not_any_positive"),
                    (pl.col("negative_ids").list.n_unique() == pl.col("negative_ids").list.len())
                    .alias("negatives_unique"),
                    (pl.col("score_ok").fill_null(True) & pl.col("positive_score").is_finite()
                     & pl.col("positive_score").is_between(low, high)).alias("scores_in_range"),
                    (~pl.col("broken").fill_null(False)).alias("negatives_within_filters"),
                    (~pl.col("anchor_hash").is_in(list(eval_hashes))).alias("anchor_not_eval_query")))


def coverage_checks(query_ids: list[str], short_queries: list[str]) -> pl.DataFrame:
    """One row per used query: did it get all its negatives?"""
    short = set(short_queries)
    return pl.DataFrame({"query_id": query_ids, "full": [float(q not in short) for q in query_ids]})


def shared_positives(positives: pl.DataFrame, cfg: InputConfig, eval_qrels: str | None) -> int:
    """Documents that are positives in both the training and the evaluation split (normal in BEIR: only reported)."""
    if not eval_qrels:
        return 0
    judged = read_qrels(eval_qrels, cfg.format).rows
    eval_docs = judged.filter(pl.col("score") > cfg.positive_threshold)["doc_id"].unique()
    return positives.filter(pl.col("positive_id").is_in(eval_docs.implode()))["positive_id"].n_unique()
