"""The pass over all mined partitions, in query order: the hub cap, then the ids table and the run's summaries.

Everything else about a query is decided inside its partition; only `mine.max_uses_per_negative` needs the queries
before it (in the order their first positive appeared), so its sampling runs here, partition after partition, with
one running count of uses.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Mined, MinedPartition, ScoreStats, Texts
from negforge.tasks.gate.audit import audit
from negforge.tasks.gate.row_checks import contaminated_queries
from negforge.tasks.mining.ids_table import ids_table
from negforge.tasks.mining.rules import reason_counts, reasons_per_query, sample_window


def score_stats(scores: pl.Series) -> ScoreStats:
    if scores.is_empty():
        return ScoreStats(count=0)
    return ScoreStats(count=scores.len(), mean=round(float(scores.mean()), 6), min=round(float(scores.min()), 6),
                      median=round(float(scores.median()), 6), max=round(float(scores.max()), 6))


def _own_rows(part: MinedPartition) -> pl.Expr:
    return pl.col("query_row").is_between(part.partition.first, part.partition.stop - 1)


def _positive_scores(part: MinedPartition) -> pl.DataFrame:
    """The partition's positive scores (stored candidates hold every partition's in one file)."""
    return pl.scan_parquet(part.candidates.positive_scores).filter(_own_rows(part)).collect()


def _with_hub_cap(parts: list[MinedPartition], positives: pl.DataFrame, config: BuildConfig) -> list[pl.DataFrame]:
    """Each partition's candidates, sampled in query order with one count of uses across partitions."""
    uses: dict[int, int] = {}
    sampled = []
    for part in parts:
        candidates = pl.read_parquet(part.mined)
        if config.mine.max_uses_per_negative is not None:
            candidates = sample_window(candidates, positives.filter(_own_rows(part)), _positive_scores(part),
                                       config.mine, uses)
        sampled.append(candidates)
    return sampled


def promoted_positives(candidates: pl.DataFrame, positives: pl.DataFrame, corpus_files: tuple[str, ...],
                       positive_scores: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The positives and their scores with the promoted suspected positives added (after each query's own)."""
    promoted = candidates.filter(pl.col("reason") == "promoted_positive")
    if promoted.is_empty():
        return positives, positive_scores
    docs = (pl.scan_parquet(list(corpus_files)).select("row", "id", "text_hash")
            .filter(pl.col("row").is_in(promoted["doc_row"].unique())).collect())
    query_ids = positives.select("query_row", "query_id").unique("query_row")
    added = (promoted.join(query_ids, on="query_row").join(docs, left_on="doc_row", right_on="row")
             .select("query_row", "query_id", "doc_row", pl.col("id").alias("positive_id"), "text_hash",
                     pl.lit(True).alias("canonical")))
    scores = promoted.select(positive_scores.columns)
    order = ["query_row", "added"]
    return (pl.concat([positives.with_columns(pl.lit(0).alias("added")), added.with_columns(pl.lit(1).alias("added"))],
                      how="vertical_relaxed").sort(order, maintain_order=True).drop("added"),
            pl.concat([positive_scores, scores], how="vertical_relaxed"))


def combine(parts: list[MinedPartition], texts: Texts, config: BuildConfig, out_dir: str) -> Mined:
    """Apply the hub cap, build the ids table, count reasons, audit; write ids, candidates and the positives the
    rows use (with promoted suspected positives) under `out_dir`."""
    parts = sorted(parts, key=lambda p: p.partition.first)
    positives = pl.read_parquet(texts.positives)
    candidates = pl.concat(_with_hub_cap(parts, positives, config))
    positive_scores = pl.concat([_positive_scores(p) for p in parts])
    audit_positives = positives
    positives, positive_scores = promoted_positives(candidates, positives, texts.corpus_files, positive_scores)
    ids, short = ids_table(candidates, positives, positive_scores, texts.corpus_files, config.output.format,
                           config.mine.num_negatives, config.output.keep_candidates)
    dropped = contaminated_queries(texts.query_files, config) if config.validate_.drop_eval_queries else []
    ids = ids.filter(~pl.col("query_id").is_in(dropped))
    report = None
    if config.audit.qrels:
        doc_ids = (pl.scan_parquet(texts.corpus_files).select("row", "id")
                   .filter(pl.col("row").is_in(candidates["doc_row"].unique())).collect())
        report = audit(candidates, audit_positives, doc_ids, config.audit.qrels, config.input.format,
                       config.input.positive_threshold, config.mine.num_negatives)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: str(out / f"{name}.parquet") for name in ("ids", "candidates", "positive-scores", "positives")}
    ids.write_parquet(files["ids"])
    candidates.write_parquet(files["candidates"])
    positive_scores.write_parquet(files["positive-scores"])
    positives.write_parquet(files["positives"])
    queries = audit_positives["query_row"].n_unique()
    kept = candidates.filter(pl.col("reason").is_null()).group_by("query_row").len()
    suspected = candidates.filter(pl.col("suspected"))
    not_promoted = suspected.filter(pl.col("reason") == "suspected_not_promoted")
    return Mined(ids=files["ids"], candidates=files["candidates"], positive_scores=files["positive-scores"],
                 reasons=reason_counts(candidates), reasons_per_query=reasons_per_query(candidates, queries),
                 short_queries=tuple(short), dropped_eval_queries=tuple(dropped), audit=report,
                 positive_score_stats=score_stats(positive_scores["score"]),
                 negative_score_stats=score_stats(candidates.filter(pl.col("reason").is_null())["score"]),
                 positives=files["positives"],
                 suspected={"count": suspected.height, "queries": suspected["query_row"].n_unique(),
                            "not_promoted": not_promoted.height,
                            "queries_not_promoted": not_promoted["query_row"].n_unique()},
                 negatives_missing=config.mine.num_negatives * queries - int(
                     kept["len"].clip(upper_bound=config.mine.num_negatives).sum()))
