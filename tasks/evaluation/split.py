"""The evaluation split a version is measured on: a BEIR folder's whole corpus, and the queries of one qrels split
with their positives.

Its key hashes the files' bytes, the split, the query limit and how documents become texts, so results computed on
the same data are found again (the base model's metrics are cached by it) and results on other data never are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from negforge.schemas.stages import EvaluationSplit
from negforge.tasks.ingest.readers import Field, Table, read_qrels, read_table
from negforge.tasks.ingest.text import document_texts
from negforge.tasks.registry.up_to_date import sha256_of


class EvaluationError(ValueError):
    """An evaluation that cannot be run as asked (its data, the version or the base model)."""


def _split_files(folder: Path, split: str) -> dict[str, Path]:
    """The BEIR files of `split`; a missing one is an error naming it (and, for qrels, the splits that exist)."""
    files = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
             "qrels": folder / "qrels" / f"{split}.tsv"}
    if not folder.is_dir():
        raise EvaluationError(f"--eval {folder}: not a folder (expected BEIR: corpus.jsonl, queries.jsonl, qrels/)")
    for name, path in files.items():
        if not path.is_file():
            have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if name == "qrels" else []
            raise EvaluationError(f"{path}: missing" + (f": no qrels for split {split!r} (have: "
                                                         f"{', '.join(have) or 'none'})" if name == "qrels" else ""))
    return files


def evaluation_split(folder: str, split: str, max_queries: int | None, doc_template: str,
                     positive_threshold: float) -> EvaluationSplit:
    """Check a BEIR folder for `split` and key it (reads only the qrels; texts are read where they are used)."""
    files = _split_files(Path(folder).resolve(), split)
    hashed = tuple({"path": str(path), "sha256": sha256_of(str(path))} for path in files.values())
    key = {"files": [f["sha256"] for f in hashed], "split": split, "max_queries": max_queries,
           "doc_template": doc_template, "positive_threshold": positive_threshold}
    evaluation = EvaluationSplit(folder=str(Path(folder).resolve()), split=split, corpus=str(files["corpus"]),
                                 queries=str(files["queries"]), qrels=str(files["qrels"]), doc_template=doc_template,
                                 positive_threshold=positive_threshold, max_queries=max_queries,
                                 key=hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12],
                                 files=hashed)
    if not relevant_documents(evaluation):
        raise EvaluationError(f"{evaluation.qrels}: no judgement above {positive_threshold}: nothing to evaluate")
    return evaluation


def _rows(table: Table) -> pl.DataFrame:
    """A table's rows; a rejected row is an error naming its file, line and field (evaluation data must be whole)."""
    if table.rejects.height:
        bad = table.rejects.row(0, named=True)
        raise EvaluationError(f"{bad['source']}:{bad['line']} {bad['field']}: {bad['reason']} ({bad['raw']!r}); "
                              f"{table.rejects.height} bad rows in the evaluation data")
    return table.rows


def relevant_documents(evaluation: EvaluationSplit) -> dict[str, set[str]]:
    """The split's queries (the first `max_queries` by id) and their relevant documents (score above threshold)."""
    judged = _rows(read_qrels(evaluation.qrels, "auto")).filter(pl.col("score") > evaluation.positive_threshold)
    relevant = judged.group_by("query_id").agg(pl.col("doc_id").unique()).sort("query_id")
    if evaluation.max_queries:
        relevant = relevant.head(evaluation.max_queries)
    return {query: set(docs) for query, docs in relevant.iter_rows()}


def split_texts(evaluation: EvaluationSplit) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """What InformationRetrievalEvaluator takes: the split's queries, the whole corpus (texts built with the
    version's doc_template) and the relevant documents, all by id."""
    relevant = relevant_documents(evaluation)
    queries = _rows(read_table(evaluation.queries, "auto", {"id": Field("_id"), "text": Field("text")}))
    queries = queries.filter(pl.col("id").is_in(list(relevant)))
    missing = set(relevant) - set(queries["id"])
    if missing:
        raise EvaluationError(f"{evaluation.qrels}: {len(missing)} queries are not in {evaluation.queries} "
                              f"(e.g. {sorted(missing)[0]!r})")
    corpus = _rows(read_table(evaluation.corpus, "auto", {"id": Field("_id"), "title": Field("title", required=False),
                                                          "text": Field("text")}))
    title = pl.col("title").fill_null("") if "title" in corpus.columns else pl.lit("")
    corpus = corpus.select("id", document_texts(evaluation.doc_template, title, pl.col("text")).alias("text"))
    return dict(queries.select("id", "text").iter_rows()), dict(corpus.iter_rows()), relevant
