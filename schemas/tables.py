"""Column names and dtypes of the tables that stages hand each other; each stage writes through `frame`, and reads
texts back from the text shards (TEXT_SHARD) through `shard_rows`."""

from __future__ import annotations

from typing import Any

import polars as pl

# `length`: characters of the text (the embedding stage sorts by it).
TEXT_SHARD = {"row": pl.UInt32, "text_hash": pl.String, "id": pl.String, "text": pl.String, "length": pl.UInt32}
# `canonical`: the positive's id is the id its text row carries (false: an exact duplicate of that document).
POSITIVES = {"query_row": pl.UInt32, "query_id": pl.String, "doc_row": pl.UInt32, "positive_id": pl.String,
             "text_hash": pl.String, "canonical": pl.Boolean}
REJECTS = {"source": pl.String, "line": pl.Int64, "field": pl.String, "reason": pl.String, "raw": pl.String}
# Top-k of every query against one corpus shard, and after the exact merge over shards.
HITS = {"query_row": pl.UInt32, "doc_row": pl.UInt32, "score": pl.Float32}
# Candidates of one query whose cosine is at least similarity.PAIR_FLOOR; doc_row ranks below other_row.
NEAR_PAIRS = {"query_row": pl.UInt32, "doc_row": pl.UInt32, "other_row": pl.UInt32, "cosine": pl.Float32}
POSITIVE_SCORES = {"query_row": pl.UInt32, "doc_row": pl.UInt32, "score": pl.Float32}
# Every candidate with the reason it was not kept (null: kept as a negative).
# `rescore`: the rescorer's score (null without one); `bm25`: its BM25 score (null without lexical scoring);
# `suspected`: ranked at or above the query's lowest positive by every signal that is on (a suspected positive).
CANDIDATES = {"query_row": pl.UInt32, "doc_row": pl.UInt32, "score": pl.Float32, "rank": pl.UInt32,
              "reason": pl.String, "rescore": pl.Float32, "bm25": pl.Float32, "suspected": pl.Boolean}
IDS = {"query_id": pl.String, "positive_id": pl.String, "negative_ids": pl.List(pl.String),
       "positive_score": pl.Float32, "negative_scores": pl.List(pl.Float32)}
# Added to IDS when a rescorer is set: its scores of the positive and of each negative.
RESCORE_COLUMNS = {"positive_rescore": pl.Float32, "negative_rescores": pl.List(pl.Float32)}
# Added to IDS when candidates have BM25 scores (tasks/mining/lexical.py).
LEXICAL_COLUMNS = {"positive_bm25": pl.Float32, "negative_bm25s": pl.List(pl.Float32)}
# Always added to IDS: the query's suspected positives (candidates at or above its lowest positive by every signal).
SUSPECTED_COLUMNS = {"suspected_positive_ids": pl.List(pl.String)}
# Near-duplicate documents of the corpus (dedup.corpus): pairs with cosine >= 1 - eps (other_row < doc_row), and
# each dropped document with the kept one of its group.
CORPUS_PAIRS = {"doc_row": pl.UInt32, "other_row": pl.UInt32, "cosine": pl.Float32}
CORPUS_DUPLICATES = {"dropped_row": pl.UInt32, "kept_row": pl.UInt32, "cosine": pl.Float32}
# The (query, document) pairs the rescorer and BM25 score: every candidate and every positive.
RESCORE_PAIRS = {"query_row": pl.UInt32, "doc_row": pl.UInt32}
LEXICAL_PAIRS = RESCORE_PAIRS
# The calibration's folds: the positive each fold hides from each multi-positive query.
HIDDEN = {"fold": pl.UInt32, "query_row": pl.UInt32, "doc_row": pl.UInt32}
# Added to IDS with output.keep_candidates: the query's dropped candidates in rank order, and why each was dropped.
CANDIDATE_COLUMNS = {"candidate_ids": pl.List(pl.String), "candidate_scores": pl.List(pl.Float32),
                     "candidate_reasons": pl.List(pl.String)}


def frame(schema: dict[str, pl.DataType], columns: dict[str, Any]) -> pl.DataFrame:
    """A DataFrame with exactly the schema's columns and dtypes, whatever the input's inferred types."""
    return pl.DataFrame({name: columns[name] for name in schema}, schema=schema)


def check(schema: dict[str, pl.DataType], df: pl.DataFrame, what: str) -> pl.DataFrame:
    """Fail loudly when a stage's table drifts from its declared schema."""
    actual = dict(df.schema)
    if actual != schema:
        raise TypeError(f"{what}: columns {actual} do not match the declared {schema}")
    return df


def shard_rows(shards: list[str], rows: pl.Series) -> pl.DataFrame:
    """(row, id, text) of the wanted rows of text shards (TEXT_SHARD), read shard by shard."""
    wanted = rows.unique().cast(pl.UInt32)
    return pl.scan_parquet(shards).select("row", "id", "text").filter(pl.col("row").is_in(wanted)).collect()
