"""What a version trains on: (anchor, positive, negative_1..n) per id row, texts from the candidates it stores.

Built from the `ids` config, whatever `output.format` the version was published in, so every layout trains the same
way (MultipleNegativesRankingLoss needs one column per negative): rows with all `num_negatives` negatives, as the
n-tuple layout has them; rows short of negatives are counted, not used. Training anchors that are queries of the
evaluation split are refused by the quality gate's leakage rule (normalized-text hashes).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from negforge.schemas.config import InputConfig
from negforge.schemas.stages import EvaluationSplit
from negforge.tasks.evaluation.split import EvaluationError
from negforge.tasks.gate.row_checks import leaked_queries, split_query_hashes
from negforge.tasks.registry.candidates import RemineError, load_candidates
from negforge.tasks.registry.training_set import joined_texts


def training_examples(version_dir: Path, num_negatives: int) -> tuple[pl.DataFrame, int]:
    """The version's training rows (query_id, anchor, positive, negative_1..n) and how many rows were left out for
    lack of negatives.

    Raises:
        EvaluationError: the version has no stored texts, or no row with all its negatives.
    """
    try:
        stored = load_candidates(version_dir / "candidates")
    except RemineError as error:
        raise EvaluationError(str(error)) from None
    ids = pl.read_parquet(version_dir / "ids" / "*.parquet")
    base = joined_texts(ids, pl.read_parquet(stored.texts.positives), list(stored.texts.query_files),
                        list(stored.texts.corpus_files))
    full = base.filter(pl.col("negatives").list.len() >= num_negatives)
    if not full.height:
        raise EvaluationError(f"{version_dir}: no training rows with {num_negatives} negatives "
                              f"({ids.height} id rows): nothing to fine-tune on")
    rows = full.select("query_id", "anchor", "positive",
                       *[pl.col("negatives").list.get(i).alias(f"negative_{i + 1}") for i in range(num_negatives)])
    return rows, base.height - full.height


def refuse_leakage(version_dir: Path, rows: pl.DataFrame, evaluation: EvaluationSplit) -> None:
    """Refuse training rows whose anchor is a query of the evaluation split (by normalized-text hash)."""
    beir = InputConfig(corpus=evaluation.corpus, queries=evaluation.queries, qrels=evaluation.qrels)
    hashes = split_query_hashes(evaluation.qrels, evaluation.queries, beir)
    leaked = sorted(set(leaked_queries([str(version_dir / "candidates" / "queries.parquet")], hashes))
                    & set(rows["query_id"]))
    if leaked:
        raise EvaluationError(
            f"{len(leaked)} training anchors of {version_dir.parent.name} {version_dir.name} are queries of the "
            f"evaluation split {evaluation.split!r} (e.g. query {leaked[0]!r}): the model would be measured on "
            f"what it trained on. Evaluate on another split, or rebuild with validate.eval_qrels={evaluation.qrels} "
            f"(and validate.drop_eval_queries: true)")
