"""The two gates of a build: inputs after ingest, and the candidate version before it is published."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.manifest import Manifest, Validation
from negforge.schemas.stages import Ingested, Mined, Texts
from negforge.tasks.gate.row_checks import coverage_checks, eval_query_hashes, row_checks, shared_positives, text_checks
from negforge.tasks.gate.validate import ValidationFailed, describe_failures, drift, quarantine, run_suites


def _texts(shards: list[str]) -> pl.DataFrame:
    return pl.read_parquet(shards, columns=["id", "text"]).select(
        "id", (pl.col("text").str.strip_chars().str.len_chars() > 0).alias("text_not_empty"))


def check_inputs(ingested: Ingested, out_dir: str) -> dict[str, Any]:
    """ids unique and present, texts non-empty, positives resolvable; raises ValidationFailed otherwise."""
    from negforge.tasks.gate.expectations import (  # Great Expectations loads only where validation runs
        MEANINGS,
        input_suite,
    )

    positives = pl.read_parquet(ingested.texts.positives)
    checks = [("corpus", input_suite("corpus"), _texts(ingested.texts.corpus_files)),
              ("queries", input_suite("queries"), _texts(ingested.texts.query_files)),
              ("positives", input_suite("positives"), positives.select(
                  "query_id", "positive_id", (pl.col("query_row") < ingested.counts.queries_used).alias("query_resolves"),
                  (pl.col("doc_row") < ingested.counts.unique_texts).alias("doc_resolves")))]
    outcome = run_suites(out_dir, checks)
    if not outcome["success"]:
        raise ValidationFailed(f"the inputs failed validation (see {outcome['data_docs']}):\n"
                               + describe_failures(outcome["failures"], MEANINGS))
    return outcome


def coverage_shortfall(queries: int, mined: Mined, config: BuildConfig) -> str:
    """What the coverage expectation measured, what it lacks, and the settings that change it."""
    short = len(mined.short_queries)
    mine = config.mine
    filters = {f"mine.{name}": getattr(mine, name) for name in
               ("relative_margin", "absolute_margin", "max_score", "min_score", "max_positive_similarity",
                "max_topic_centrality")}
    filters |= {f"lexical.{name}": getattr(config.lexical, name) for name in ("ratio", "fusion")}
    filters["mine.max_topic_centrality (or the mine.topic_quantile it came from)"] = filters.pop(
        "mine.max_topic_centrality")
    on = ", ".join(f"{name}={value}" for name, value in filters.items() if value is not None) or "none"
    return (f"  coverage: {queries - short} of {queries} queries got all {mine.num_negatives} negatives "
            f"({(queries - short) / max(queries, 1):.4f} < validate.min_coverage {config.validate_.min_coverage}); "
            f"{short} queries are short by {mined.negatives_missing} negatives in all. Settings that change it: "
            f"mine.max_depth (now {mine.max_depth}; auto searches short queries deeper, up to the corpus), the "
            f"filters that are on ({on}), mine.num_negatives, mine.range_max, or validate.min_coverage")


def check_candidate(staged: str, mined: Mined, texts: Texts, config: BuildConfig,
                    previous: Manifest | None, out_dir: str) -> Validation:
    """Run the output suites on the staged version; quarantine it and raise ValidationFailed when one fails; what
    passed, for the manifest."""
    from negforge.tasks.gate.expectations import MEANINGS, coverage_suite, output_suite, text_suite

    staged_path = Path(staged)
    ids = pl.read_parquet(staged_path / "ids")
    positives = pl.read_parquet(mined.positives or texts.positives)
    query_ids = pl.read_parquet(texts.query_files, columns=["id"])["id"].to_list()
    data = pl.read_parquet(staged_path / "data")
    checks = [("training_rows", text_suite(config.validate_), text_checks(data)),
              ("ids_rows", output_suite(), row_checks(ids, positives, texts.corpus_files,
                                                      texts.query_files, config, eval_query_hashes(config))),
              ("queries", coverage_suite(config.validate_), coverage_checks(query_ids, list(mined.short_queries)))]
    outcome = run_suites(out_dir, checks)
    warnings = drift(previous, data.height, {"positive": asdict(mined.positive_score_stats),
                                             "negative": asdict(mined.negative_score_stats)}, config.validate_)
    if config.validate_.drift_fails and warnings:
        outcome["success"] = False
    if not outcome["success"]:
        place = quarantine(staged_path, staged_path.parent, Path(out_dir))
        lines = [describe_failures(outcome["failures"], MEANINGS)] if outcome["failures"] else []
        if any(f["table"] == "queries" for f in outcome["failures"]):
            lines.append(coverage_shortfall(len(query_ids), mined, config))
        if config.validate_.drift_fails:
            lines += [f"  drift: {w}" for w in warnings]
        raise ValidationFailed("\n".join([f"the candidate version failed validation; nothing was published. "
                                           f"Quarantined at {place}", *lines]))
    return Validation(success=True, expectations=outcome["expectations"], warnings=warnings,
                      data_docs=outcome["data_docs"],
                      shared_positives_with_eval=shared_positives(positives, config.input, config.validate_.eval_qrels),
                      eval_qrels=config.validate_.eval_qrels)
