"""Read input files row by row, never crashing on a bad row: each row is either a record or a reject.

Files are opened through fsspec (local paths and URLs alike) and hashed while read, so the manifest can name exactly
which bytes were used.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import fsspec
import polars as pl

RAW_LIMIT = 200


class InputError(ValueError):
    """An input that cannot be used at all (missing, unreadable, a named column absent); names the file."""


@dataclass(frozen=True)
class Reject:
    """One input row that was not accepted, and why."""

    source: str
    line: int
    field: str
    reason: str
    raw: str

    @classmethod
    def of(cls, source: str, line: int, field_name: str, reason: str, raw: Any) -> Reject:
        text = raw if isinstance(raw, str) else repr(raw)
        return cls(source, line, field_name, reason, text[:RAW_LIMIT])


@dataclass
class FileRows:
    """What one file yielded: parsed records with their line numbers, rejects, and the count of rows read."""

    path: str
    sha256: str
    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    rows_read: int = 0
    accepted: int = 0  # counted by the consumer of `records` as it takes each one


def input_files(cfg: Any) -> list[str]:
    """Every file a build reads rows from (input.corpus, queries, qrels, pairs), as the manifest's inputs name them."""
    return [path for path in (cfg.corpus, *(cfg.pairs or [cfg.queries, cfg.qrels])) if path]


def detect_format(path: str, configured: str) -> str:
    """The configured format, or the one the file's suffix names."""
    if configured != "auto":
        return configured
    suffixes = [s.lower() for s in PurePosixPath(path.split("?")[0]).suffixes]
    for suffix in reversed(suffixes):
        if suffix in (".jsonl", ".ndjson", ".json"):
            return "jsonl"
        if suffix in (".parquet", ".pq"):
            return "parquet"
        if suffix in (".csv", ".tsv"):
            return suffix[1:]
    raise InputError(f"{path}: cannot tell the format from the file name; set input.format")


def _read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a file") from None


def _jsonl_rows(path: str, data: bytes, rows: FileRows) -> None:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        rows.rows_read += 1
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            rows.rejects.append(Reject.of(path, number, "*", "invalid_utf8", line.decode("utf-8", "replace")))
            continue
        try:
            record = json.loads(text)
        except ValueError:
            rows.rejects.append(Reject.of(path, number, "*", "malformed_json", text))
            continue
        if not isinstance(record, dict):
            rows.rejects.append(Reject.of(path, number, "*", "not_an_object", text))
            continue
        rows.records.append((number, record))


def _delimited_rows(path: str, data: bytes, delimiter: str, rows: FileRows) -> None:
    text = data.decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise InputError(f"{path}: no header row")
    header = [h.strip() for h in header]
    if len(header) < 2:
        raise InputError(f"{path}: header has one column ({header[0]!r}); is the delimiter {delimiter!r} right?")
    previous_end = reader.line_num
    for values in reader:
        number, previous_end = previous_end + 1, reader.line_num
        if not any(v.strip() for v in values):
            continue
        rows.rows_read += 1
        raw = delimiter.join(values)
        if any("\udc80" <= ch <= "\udcff" for ch in raw):
            rows.rejects.append(Reject.of(path, number, "*", "invalid_utf8", raw.encode("utf-8", "surrogateescape")
                                          .decode("utf-8", "replace")))
            continue
        if len(values) != len(header):
            rows.rejects.append(Reject.of(path, number, "*", "wrong_column_count", raw))
            continue
        rows.records.append((number, dict(zip(header, values))))


def _parquet_rows(path: str, data: bytes, rows: FileRows) -> None:
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except Exception as error:  # polars raises several types for a corrupt file
        raise InputError(f"{path}: not a readable parquet file ({type(error).__name__})") from None
    for number, record in enumerate(frame.iter_rows(named=True), start=1):
        rows.records.append((number, record))
    rows.rows_read = frame.height


def read_rows(path: str, configured_format: str = "auto") -> FileRows:
    """Read every row of a jsonl, csv, tsv or parquet file into records and rejects."""
    fmt = detect_format(path, configured_format)
    data = _read_bytes(path)
    if not data.strip():
        raise InputError(f"{path}: file is empty")
    rows = FileRows(path=path, sha256=hashlib.sha256(data).hexdigest())
    if fmt == "jsonl":
        _jsonl_rows(path, data, rows)
    elif fmt == "parquet":
        _parquet_rows(path, data, rows)
    else:
        _delimited_rows(path, data, "\t" if fmt == "tsv" else ",", rows)
    return rows


def require_columns(rows: FileRows, columns: list[str]) -> None:
    """Fail at once when a configured column appears in no row at all: the config, not the data, is wrong."""
    if not rows.records:
        return
    seen: set[str] = set()
    for _, record in rows.records:
        seen.update(record)
        if all(c in seen for c in columns):
            return
    missing = [c for c in columns if c not in seen]
    raise InputError(f"{rows.path}: no column {missing[0]!r} (columns found: {', '.join(sorted(seen)) or 'none'})")
