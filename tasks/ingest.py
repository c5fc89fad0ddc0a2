"""Ingest: parse inputs, reject bad rows with reasons, dedup texts exactly, merge equal queries, write shards.

Everything downstream works on ids and row numbers; texts stay in the shard files and come back only when the
training set is written.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from negforge.schemas.config import InputConfig
from negforge.schemas.stages import IngestCounts, Ingested, Texts
from negforge.schemas.tables import POSITIVES, REJECTS, TEXT_SHARD, frame
from negforge.tasks.readers import FileRows, InputError, Reject, read_rows, require_columns
from negforge.tasks.text import document_text, text_hash

QREL_QUERY, QREL_DOC, QREL_SCORE = "query-id", "corpus-id", "score"


@dataclass
class _Texts:
    """Unique texts in first-seen order, each with the id of the first row that had it."""

    hashes: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    row_of: dict[str, int] = field(default_factory=dict)

    def add(self, item_id: str, text: str, digest: str) -> int:
        row = self.row_of.get(digest)
        if row is None:
            row = self.row_of[digest] = len(self.hashes)
            self.hashes.append(digest)
            self.ids.append(item_id)
            self.texts.append(text)
        return row


class _Checker:
    """Pulls typed fields out of records, turning each problem into a reject of that file."""

    def __init__(self, rows: FileRows) -> None:
        self.rows = rows

    def reject(self, line: int, field_name: str, reason: str, raw: Any) -> None:
        self.rows.rejects.append(Reject.of(self.rows.path, line, field_name, reason, raw))

    def string(self, line: int, record: dict[str, Any], name: str, *, required: bool = True) -> str | None:
        value = record.get(name)
        if value is None:
            if required:
                self.reject(line, name, "missing_field", record)
                return None
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.reject(line, name, "wrong_type", value)
            return None
        value = str(value)
        if required and not value.strip():
            self.reject(line, name, "empty_text", value)
            return None
        return value

    def pair(self, line: int, record: dict[str, Any], first: str, second: str) -> tuple[str, str] | None:
        """Two required fields, checked in order: None, with one reject, when either is bad."""
        a = self.string(line, record, first)
        b = self.string(line, record, second) if a is not None else None
        return (a, b) if b is not None else None


def _open(path: str, cfg: InputConfig, columns: list[str]) -> tuple[FileRows, _Checker]:
    rows = read_rows(path, cfg.format)
    require_columns(rows, columns)
    return rows, _Checker(rows)


def _accounting(rows: FileRows) -> dict[str, Any]:
    """Per-file counts; accepted and rejected rows must add up to the rows read, or rows were lost."""
    rejected = len(rows.rejects)
    if rows.accepted + rejected != rows.rows_read:
        raise AssertionError(f"{rows.path}: {rows.accepted} accepted + {rejected} rejected != {rows.rows_read} read")
    return {"path": rows.path, "sha256": rows.sha256, "rows_read": rows.rows_read,
            "rows_accepted": rows.accepted, "rows_rejected": rejected}


def _add_identified(check: _Checker, line: int, id_field: str, item_id: str, text: str, texts: _Texts,
                    id_rows: dict[str, int]) -> None:
    """Accept an (id, text) row, or reject it when its id was seen before (with the same or another text)."""
    digest = text_hash(text)
    if item_id in id_rows:
        same = texts.hashes[id_rows[item_id]] == digest
        check.reject(line, id_field, "duplicate_id_same_text" if same else "duplicate_id_conflict", item_id)
        return
    id_rows[item_id] = texts.add(item_id, text, digest)
    check.rows.accepted += 1


def _read_corpus(path: str, cfg: InputConfig, texts: _Texts, doc_rows: dict[str, int]) -> FileRows:
    rows, check = _open(path, cfg, [cfg.doc_id_field, cfg.doc_text_field])
    for line, record in rows.records:
        fields = check.pair(line, record, cfg.doc_id_field, cfg.doc_text_field)
        title = fields and (check.string(line, record, cfg.doc_title_field, required=False)
                            if cfg.doc_title_field else "")
        if not fields or title is None:
            continue
        doc_id, body = fields
        full = document_text(cfg.doc_template, title, body)
        _add_identified(check, line, cfg.doc_id_field, doc_id, full, texts, doc_rows)
    return rows


def _read_queries(path: str, cfg: InputConfig, queries: _Texts, query_rows: dict[str, int]) -> FileRows:
    rows, check = _open(path, cfg, [cfg.query_id_field, cfg.query_text_field])
    for line, record in rows.records:
        fields = check.pair(line, record, cfg.query_id_field, cfg.query_text_field)
        if fields:
            _add_identified(check, line, cfg.query_id_field, *fields, queries, query_rows)
    return rows


def _read_qrels(path: str, cfg: InputConfig, query_rows: dict[str, int], doc_rows: dict[str, int],
                positives: dict[int, dict[int, str]]) -> FileRows:
    rows, check = _open(path, cfg, [QREL_QUERY, QREL_DOC, QREL_SCORE])
    for line, record in rows.records:
        fields = check.pair(line, record, QREL_QUERY, QREL_DOC)
        if not fields:
            continue
        query_id, doc_id = fields
        raw_score = record.get(QREL_SCORE)
        try:
            score = float(raw_score)
        except (TypeError, ValueError):
            check.reject(line, QREL_SCORE, "bad_score", raw_score)
            continue
        if score != score:
            check.reject(line, QREL_SCORE, "bad_score", raw_score)
        elif query_id not in query_rows:
            check.reject(line, QREL_QUERY, "unknown_query", query_id)
        elif doc_id not in doc_rows:
            check.reject(line, QREL_DOC, "unknown_document", doc_id)
        else:
            rows.accepted += 1
            if score > cfg.positive_threshold:
                positives.setdefault(query_rows[query_id], {}).setdefault(doc_rows[doc_id], doc_id)
    return rows


def _read_pairs(path: str, cfg: InputConfig, texts: _Texts, queries: _Texts,
                positives: dict[int, dict[int, str]]) -> FileRows:
    rows, check = _open(path, cfg, [cfg.anchor_field, cfg.positive_field])
    for line, record in rows.records:
        fields = check.pair(line, record, cfg.anchor_field, cfg.positive_field)
        if not fields:
            continue
        anchor, positive = fields
        anchor_hash, positive_hash = text_hash(anchor), text_hash(positive)
        query_row = queries.add(f"q-{anchor_hash[:16]}", anchor, anchor_hash)
        doc_row = texts.add(f"d-{positive_hash[:16]}", positive, positive_hash)
        positives.setdefault(query_row, {}).setdefault(doc_row, texts.ids[doc_row])
        rows.accepted += 1
    return rows


def _write_shards(out: Path, kind: str, hashes: list[str], ids: list[str], texts: list[str],
                  shard_size: int) -> list[str]:
    paths = []
    for start in range(0, len(hashes), shard_size):
        stop = min(start + shard_size, len(hashes))
        path = out / f"{kind}-{len(paths):05d}.parquet"
        frame(TEXT_SHARD, {"row": range(start, stop), "text_hash": hashes[start:stop], "id": ids[start:stop],
                           "text": texts[start:stop]}).write_parquet(path)
        paths.append(str(path))
    return paths


def _check_reject_fraction(files: list[FileRows], cfg: InputConfig, rejects_path: Path) -> None:
    read = sum(f.rows_read for f in files)
    rejects = [r for f in files for r in f.rejects]
    if read and len(rejects) / read > cfg.max_reject_fraction:
        common = Counter(r.reason for r in rejects).most_common(3)
        reasons = ", ".join(f"{reason} ({count})" for reason, count in common)
        raise InputError(f"{len(rejects)} of {read} input rows rejected ({len(rejects) / read:.1%}), above "
                         f"input.max_reject_fraction={cfg.max_reject_fraction}; commonest: {reasons}. "
                         f"Rejected rows: {rejects_path}")


def ingest(cfg: InputConfig, out_dir: str | Path, shard_size: int) -> Ingested:
    """Parse all inputs into text shards, a positives table and a rejects table under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts, queries = _Texts(), _Texts()
    doc_rows: dict[str, int] = {}
    query_rows: dict[str, int] = {}
    positives: dict[int, dict[int, str]] = {}  # query text row -> {doc text row: positive id}, in first-seen order
    files: list[FileRows] = []
    if cfg.corpus:
        files.append(_read_corpus(cfg.corpus, cfg, texts, doc_rows))
    if cfg.pairs is not None:
        files.extend(_read_pairs(path, cfg, texts, queries, positives) for path in cfg.pairs)
    else:
        files.append(_read_queries(cfg.queries, cfg, queries, query_rows))
        files.append(_read_qrels(cfg.qrels, cfg, query_rows, doc_rows, positives))

    rejects_path = out / "rejects.parquet"
    frame(REJECTS, {name: [getattr(r, name) for f in files for r in f.rejects] for name in REJECTS}).write_parquet(
        rejects_path)
    inputs = [_accounting(f) for f in files]
    _check_reject_fraction(files, cfg, rejects_path)

    used = list(positives)  # queries in the order their first positive appeared
    if not used:
        raise InputError("no query has a positive: check input.qrels and input.positive_threshold")
    query_hashes = [queries.hashes[r] for r in used]
    query_ids = [queries.ids[r] for r in used]
    frame(POSITIVES, {
        "query_row": [i for i, r in enumerate(used) for _ in positives[r]],
        "query_id": [queries.ids[r] for r in used for _ in positives[r]],
        "doc_row": [d for r in used for d in positives[r]],
        "positive_id": [pid for r in used for pid in positives[r].values()],
        "text_hash": [texts.hashes[d] for r in used for d in positives[r]],
        "canonical": [pid == texts.ids[d] for r in used for d, pid in positives[r].items()],
    }).write_parquet(out / "positives.parquet")
    texts_table = Texts(
        query_files=tuple(_write_shards(out, "query", query_hashes, query_ids, [queries.texts[r] for r in used],
                                        shard_size)),
        corpus_files=tuple(_write_shards(out, "corpus", texts.hashes, texts.ids, texts.texts, shard_size)),
        positives=str(out / "positives.parquet"),
        max_positives=max(len(p) for p in positives.values()))
    counts = IngestCounts(
        documents=len(doc_rows) or len(texts.hashes), unique_texts=len(texts.hashes),
        queries_read=len(query_rows) or len(queries.hashes), queries_used=len(used),
        queries_unused=len(queries.hashes) - len(used), positives=sum(len(p) for p in positives.values()),
        rows_rejected=sum(len(f.rejects) for f in files))
    result = Ingested(texts=texts_table, counts=counts, inputs=tuple(inputs), rejects_path=str(rejects_path),
                      reject_reasons=dict(Counter(r.reason for f in files for r in f.rejects).most_common()))
    (out / "summary.json").write_text(json.dumps(asdict(result), indent=2, allow_nan=False))
    return result
