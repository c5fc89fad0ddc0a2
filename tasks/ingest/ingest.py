"""Ingest: read inputs in batches, reject bad rows with reasons, dedup texts exactly, merge equal queries, write
text shards.

Memory holds a batch and, per row, its id and text hash: texts are staged on disk as they are read and go to the
text shards once the ids are settled (a conflicting duplicate id rejects every row with that id, the first one too,
which only the end of the input can tell). Everything downstream works on ids and row numbers; texts stay in the
shard files and come back only when the training set is written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from negforge.schemas.config import InputConfig
from negforge.schemas.stages import IngestCounts, Ingested, Texts
from negforge.schemas.tables import POSITIVES, REJECTS, TEXT_SHARD, check
from negforge.tasks.ingest.readers import (
    QRELS,
    RAW_LIMIT,
    Field,
    InputError,
    InputFile,
    input_files,
    read_input,
    read_qrels,
)
from negforge.tasks.ingest.text import document_texts, text_hashes

SAMPLES = 3  # rejected rows shown per reason in the log and the run report
_INDEX = {"seq": pl.UInt32, "file": pl.UInt32, "line": pl.Int64, "id": pl.String, "text_hash": pl.String}


class _Pool:
    """Texts of one kind (documents or queries) in the order read: staged to disk (uncompressed Arrow files, written
    and read back at disk speed), indexed in memory by `seq`."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder, self.kind = folder, kind
        self.parts: list[tuple[int, int, str]] = []  # first seq, last seq, path
        self.indexes: list[pl.DataFrame] = [pl.DataFrame(schema=_INDEX)]

    def add(self, rows: pl.DataFrame, id_prefix: str | None = None) -> pl.DataFrame:
        """Stage rows (file, line, text, and id unless made from `id_prefix` and the hash); their index rows."""
        first = sum(i.height for i in self.indexes)
        rows = rows.with_columns(pl.int_range(first, first + rows.height, dtype=pl.UInt32).alias("seq"),
                                 text_hashes(rows["text"]),
                                 pl.col("text").str.len_chars().cast(pl.UInt32).alias("length"))
        if id_prefix is not None:
            rows = rows.with_columns((pl.lit(id_prefix) + pl.col("text_hash").str.head(16)).alias("id"))
        path = self.folder / f"{self.kind}-{len(self.parts):05d}.arrow"
        rows.select("seq", "text_hash", "id", "text", "length").write_ipc(path)
        self.parts.append((first, first + rows.height - 1, str(path)))
        self.indexes.append(rows.select(*_INDEX))
        return self.indexes[-1]

    def index(self) -> pl.DataFrame:
        return pl.concat(self.indexes, rechunk=True)

    def write_shards(self, order: pl.DataFrame, out: Path, shard_size: int) -> list[str]:
        """Text shard files of the staged rows `order` names (seq, row; by row), shard_size rows each."""
        paths = []
        for start in range(0, order.height, shard_size):
            wanted = order.slice(start, shard_size)
            low, high = wanted["seq"].min(), wanted["seq"].max()
            shard = (pl.scan_ipc([path for first, last, path in self.parts if first <= high and last >= low])
                     .filter(pl.col("seq").is_between(low, high)).join(wanted.lazy(), on="seq").sort("row")
                     .select(*TEXT_SHARD).collect())
            path = out / f"{self.kind}-{len(paths):05d}.parquet"
            check(TEXT_SHARD, shard, path.name).write_parquet(path, compression="lz4")
            paths.append(str(path))
        return paths


def _first_of_each_text(index: pl.DataFrame) -> pl.DataFrame:
    """One row per text hash: the first read (seq, id, text_hash), numbered `row` in that order."""
    return (index.sort("seq").unique("text_hash", keep="first", maintain_order=True)
            .select("seq", "id", "text_hash").with_row_index("row"))


class _Ingest:
    """What a run has read so far: its files, rejects, accepted rows (by file) and the two text pools."""

    def __init__(self, cfg: InputConfig, staging: Path) -> None:
        self.cfg = cfg
        self.files: list[InputFile] = []
        self.rejects: list[pl.DataFrame] = [pl.DataFrame(schema={**REJECTS, "file": pl.UInt32})]
        self.accepted: list[pl.Series] = []
        self.docs, self.queries = _Pool(staging, "corpus"), _Pool(staging, "query")

    def _read(self, spec: str, fields: dict[str, Field]) -> Iterator[pl.DataFrame]:
        files = input_files(spec, self.cfg.format)
        numbered_from = len(self.files)
        self.files += files
        for batch in read_input(files, fields, numbered_from):
            self.rejects.append(batch.rejects)
            yield batch.rows

    def _reject(self, rows: pl.DataFrame, field_name: str, reason: pl.Expr, raw: str) -> None:
        """Reject `rows` (file, line, ...) for `reason`, showing their column `raw`."""
        sources = pl.Series([f.path for f in self.files], dtype=pl.String)
        self.rejects.append(rows.select(sources.gather(rows["file"]).alias("source"), "line",
                                        pl.lit(field_name).alias("field"), reason.alias("reason"),
                                        pl.col(raw).str.head(RAW_LIMIT).alias("raw"), "file"))

    def _settle_ids(self, index: pl.DataFrame, id_field: str) -> pl.DataFrame:
        """The rows whose id stands: an id with two texts rejects all its rows, the first one too (which one is
        right cannot be told); an id repeated with the same text keeps its first row."""
        reason = (pl.when(pl.col("text_hash").n_unique().over("id") > 1).then(pl.lit("duplicate_id_conflict"))
                  .when(pl.col("seq") != pl.col("seq").min().over("id")).then(pl.lit("duplicate_id_same_text")))
        marked = index.with_columns(reason.alias("reason"))
        self._reject(marked.filter(pl.col("reason").is_not_null()), id_field, pl.col("reason"), "id")
        kept = marked.filter(pl.col("reason").is_null()).drop("reason")
        self.accepted.append(kept["file"])
        return kept

    def read_corpus(self) -> pl.DataFrame:
        """Documents whose id stands (index rows)."""
        cfg = self.cfg
        fields = {"id": Field(cfg.doc_id_field), "text": Field(cfg.doc_text_field)}
        if cfg.doc_title_field:
            fields["title"] = Field(cfg.doc_title_field, required=False)
        try:
            text = document_texts(cfg.doc_template, pl.col("title") if cfg.doc_title_field else pl.lit(""),
                                  pl.col("text"))
        except ValueError as error:
            raise InputError(str(error)) from None
        for rows in self._read(cfg.corpus, fields):
            self.docs.add(rows.select("file", "line", "id", text.alias("text")))
        return self._settle_ids(self.docs.index(), cfg.doc_id_field)

    def read_queries(self) -> pl.DataFrame:
        """Queries whose id stands (index rows)."""
        fields = {"id": Field(self.cfg.query_id_field), "text": Field(self.cfg.query_text_field)}
        for rows in self._read(self.cfg.queries, fields):
            self.queries.add(rows)
        return self._settle_ids(self.queries.index(), self.cfg.query_id_field)

    def read_qrels(self, queries: pl.DataFrame, documents: pl.DataFrame) -> pl.DataFrame:
        """Judgements above the threshold (query_hash, row, positive_id), in file order; a qrel naming an unknown
        query or document is rejected."""
        table = read_qrels(self.cfg.qrels, self.cfg.format, len(self.files))
        self.files += table.files
        self.rejects.append(table.rejects)
        rows = (table.rows
                .join(queries.select(pl.col("id").alias("query_id"), pl.col("text_hash").alias("query_hash")),
                      on="query_id", how="left", maintain_order="left")
                .join(documents.select(pl.col("id").alias("doc_id"), "row"), on="doc_id", how="left",
                      maintain_order="left"))
        unknown_query, unknown_doc = pl.col("query_hash").is_null(), pl.col("row").is_null()
        self._reject(rows.filter(unknown_query), QRELS["query_id"].column, pl.lit("unknown_query"), "query_id")
        self._reject(rows.filter(~unknown_query & unknown_doc), QRELS["doc_id"].column, pl.lit("unknown_document"),
                     "doc_id")
        kept = rows.filter(~unknown_query & ~unknown_doc)
        self.accepted.append(kept["file"])
        return kept.filter(pl.col("score") > self.cfg.positive_threshold).select(
            "query_hash", "row", pl.col("doc_id").alias("positive_id"))

    def read_pairs(self) -> pl.DataFrame:
        """(query_hash, doc_hash) of every pair, in file order."""
        fields = {"anchor": Field(self.cfg.anchor_field), "positive": Field(self.cfg.positive_field)}
        pairs = [pl.DataFrame(schema={"query_hash": pl.String, "doc_hash": pl.String})]
        for path in self.cfg.pairs:
            for rows in self._read(path, fields):
                anchors = self.queries.add(rows.select("file", "line", pl.col("anchor").alias("text")), "q-")
                positives = self.docs.add(rows.select("file", "line", pl.col("positive").alias("text")), "d-")
                pairs.append(pl.DataFrame([anchors["text_hash"].alias("query_hash"),
                                           positives["text_hash"].alias("doc_hash")]))
                self.accepted.append(rows["file"])
        return pl.concat(pairs)

    def accounting(self) -> list[dict[str, Any]]:
        """Per-file counts; accepted and rejected rows must add up to the rows read, or rows were lost."""
        n = len(self.files)
        accepted = np.bincount(pl.concat([pl.Series([], dtype=pl.UInt32), *self.accepted]).to_numpy(), minlength=n)
        rejected = np.bincount(pl.concat(self.rejects)["file"].to_numpy(), minlength=n)
        inputs = []
        for file, a, r in zip(self.files, accepted.tolist(), rejected.tolist()):
            if a + r != file.rows_read:
                raise AssertionError(f"{file.path}: {a} accepted + {r} rejected != {file.rows_read} read")
            inputs.append({"path": file.path, "sha256": file.sha256, "rows_read": file.rows_read,
                           "rows_accepted": a, "rows_rejected": r})
        return inputs


def _reject_summary(rejects: pl.DataFrame) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Count per reason, commonest first, and the first SAMPLES rejects of each as `file:line field: raw`."""
    counts = (rejects.with_row_index("at").group_by("reason")
              .agg(pl.len().alias("n"), pl.col("at").min().alias("first"))
              .sort(["n", "first"], descending=[True, False]))
    samples = rejects.group_by("reason", maintain_order=True).head(SAMPLES).select(
        "reason", pl.format("{}:{} {}: {}", pl.col("source").str.split("/").list.last(), "line", "field",
                            pl.col("raw").str.head(80)).alias("sample"))
    return (dict(zip(counts["reason"].to_list(), counts["n"].to_list())),
            {r: samples.filter(pl.col("reason") == r)["sample"].to_list() for r in counts["reason"].to_list()})


def _check_reject_fraction(read: int, reasons: dict[str, int], cfg: InputConfig, rejects_path: Path) -> None:
    rejected = sum(reasons.values())
    if read and rejected / read > cfg.max_reject_fraction:
        common = ", ".join(f"{reason} ({count})" for reason, count in list(reasons.items())[:3])
        raise InputError(f"{rejected} of {read} input rows rejected ({rejected / read:.1%}), above "
                         f"input.max_reject_fraction={cfg.max_reject_fraction}; commonest: {common}. "
                         f"Rejected rows: {rejects_path}")


def ingest(cfg: InputConfig, out_dir: str | Path, shard_size: int) -> Ingested:
    """Parse all inputs into text shards, a positives table and a rejects table under `out_dir`."""
    out = Path(out_dir)
    staging = out / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        return _ingest(cfg, out, staging, shard_size)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ingest(cfg: InputConfig, out: Path, staging: Path, shard_size: int) -> Ingested:
    run = _Ingest(cfg, staging)
    documents = run.read_corpus() if cfg.corpus else pl.DataFrame(schema=_INDEX)
    if cfg.pairs is not None:
        corpus_rows = run.docs.index().height
        pairs = run.read_pairs()
        texts = _first_of_each_text(pl.concat([documents, run.docs.index().slice(corpus_rows)]))
        queries = query_texts = _first_of_each_text(run.queries.index())
        positives = pairs.join(texts.select(pl.col("text_hash").alias("doc_hash"), "row", pl.col("id").alias(
            "positive_id")), on="doc_hash", maintain_order="left").select("query_hash", "row", "positive_id")
    else:
        queries = run.read_queries()
        texts, query_texts = _first_of_each_text(documents), _first_of_each_text(queries)
        positives = run.read_qrels(queries, documents.join(texts.select("text_hash", "row"), on="text_hash"))

    rejects = pl.concat(run.rejects).sort(["file", "line"], maintain_order=True)
    rejects_path = out / "rejects.parquet"
    rejects.select(*REJECTS).write_parquet(rejects_path)
    inputs = run.accounting()
    reasons, samples = _reject_summary(rejects)
    _check_reject_fraction(sum(f.rows_read for f in run.files), reasons, cfg, rejects_path)

    positives = positives.unique(["query_hash", "row"], keep="first", maintain_order=True)
    if positives.is_empty():
        raise InputError("no query has a positive: check input.qrels and input.positive_threshold")
    used = positives.select("query_hash").unique(maintain_order=True).with_row_index("query_row")
    positives = (positives  # queries numbered in the order their first positive appeared
                 .join(used, on="query_hash", maintain_order="left")
                 .join(query_texts.select(pl.col("text_hash").alias("query_hash"), pl.col("id").alias("query_id"),
                                          "seq"), on="query_hash", maintain_order="left")
                 .join(texts.select("row", "text_hash", pl.col("id").alias("text_id")), on="row", maintain_order="left")
                 .sort("query_row", maintain_order=True))
    table = positives.select("query_row", "query_id", pl.col("row").alias("doc_row"), "positive_id", "text_hash",
                             (pl.col("positive_id") == pl.col("text_id")).alias("canonical"))
    check(POSITIVES, table, "positives").write_parquet(out / "positives.parquet")
    query_order = positives.unique("query_row", keep="first", maintain_order=True).select(
        "seq", pl.col("query_row").alias("row"))
    texts_table = Texts(query_files=tuple(run.queries.write_shards(query_order, out, shard_size)),
                        corpus_files=tuple(run.docs.write_shards(texts.select("seq", "row"), out, shard_size)),
                        positives=str(out / "positives.parquet"),
                        max_positives=int(table.group_by("query_row").len()["len"].max()))
    counts = IngestCounts(documents=documents.height or texts.height, unique_texts=texts.height,
                          queries_read=queries.height, queries_used=used.height,
                          queries_unused=query_texts.height - used.height, positives=table.height,
                          rows_rejected=rejects.height)
    result = Ingested(texts=texts_table, counts=counts, inputs=tuple(inputs), rejects_path=str(rejects_path),
                      reject_reasons=reasons, reject_samples=samples)
    (out / "summary.json").write_text(json.dumps(asdict(result), indent=2, allow_nan=False))
    return result
