"""Read inputs in batches of checked rows, never crashing on a bad row: each row is accepted or a reject with a reason.

An input is a file, a folder or a glob (its member files sorted by name, hidden and `_` files skipped, one format),
local or any fsspec URL, plain or compressed (.gz, .bz2, .xz, .zst). Each member is hashed as stored, while read, so
the manifest names exactly which bytes were used. Rows are parsed in bulk (pyarrow's JSON reader, polars, pyarrow's
parquet batches); only a batch that bulk parsing cannot take exactly (a malformed line, a field of mixed JSON types,
quoted csv) is parsed row by row, with the same outcome.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import lzma
import posixpath
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, BinaryIO, Literal

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import zstandard
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import infer_compression

from negforge.schemas.console_text import quoted, shortened
from negforge.schemas.tables import REJECTS
from negforge.tasks.ingest.text import WHITESPACE

RAW_LIMIT = 200
BATCH_BYTES = 32 << 20  # text read per batch
ROWS_PER_BATCH = 16_384  # parquet rows, or csv rows parsed one by one, per batch
BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """An input that cannot be used at all (missing, unreadable, a named column absent); names the file."""


@dataclass(frozen=True)
class Field:
    """A column to read. `text`: a string or an integer (its digits); `number`: anything Python's float() takes."""

    column: str
    kind: Literal["text", "number"] = "text"
    required: bool = True


@dataclass
class InputFile:
    """One file of an input and what reading it found; `sha256` is of the bytes as stored, set once it is read."""

    path: str
    format: str
    fs: Any = field(repr=False)
    fs_path: str = field(repr=False)
    sha256: str = ""
    rows_read: int = 0


@dataclass(frozen=True)
class Checked:
    """A batch: rows whose fields passed (`file`, `line` and one column per field) and rejects (tables.REJECTS and
    `file`); `file` numbers the files of all inputs read."""

    rows: pl.DataFrame
    rejects: pl.DataFrame


QRELS = {"query_id": Field("query-id"), "doc_id": Field("corpus-id"), "score": Field("score", "number")}


@dataclass
class _Parsed:
    """Rows as parsed: per field its value and `<name>:wrong` (present, of a type the field does not take)."""

    rows: pl.DataFrame
    rejects: pl.DataFrame  # rows that are no record at all (line, reason, raw)
    record: Callable[[int], dict[str, Any]]  # row i as the file has it, for the raw text of a field reject


def _raw_text(value: Any) -> str:
    """A rejected value as the rejects table shows it: strings as they are, anything else as its repr, cut short."""
    return (value if isinstance(value, str) else repr(value))[:RAW_LIMIT]


def detect_format(path: str, configured: str) -> str:
    """The configured format, or the one the file's suffix names (before any compression suffix)."""
    if configured != "auto":
        return configured
    suffixes = [s.lower() for s in PurePosixPath(path.split("?")[0]).suffixes]
    for suffix in reversed(suffixes):
        if suffix in (".jsonl", ".ndjson"):
            return "jsonl"
        if suffix == ".json":
            return "json"  # an array of objects, or JSON lines
        if suffix in (".parquet", ".pq"):
            return "parquet"
        if suffix in (".csv", ".tsv"):
            return suffix[1:]
    raise InputError(f"{path}: cannot tell the format from the file name; set input.format")


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def input_files(spec: str, configured_format: str) -> list[InputFile]:
    """The files of an input: the file itself, or a folder's or glob's files sorted by name, hidden and `_` ones
    skipped (as Hugging Face `datasets` does); all of one format."""
    fs, root = fsspec.core.url_to_fs(spec)
    shown = (lambda p: p) if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol
    if glob.has_magic(root):
        base = root[:min(root.find(c) for c in "*?[" if c in root)].rpartition("/")[0]
        paths = [p for p, info in fs.glob(root, detail=True).items() if info["type"] == "file"]
    elif fs.isdir(root):
        base, paths = root, fs.find(root)
    elif fs.exists(root):
        return [InputFile(spec, detect_format(spec, configured_format), fs, root)]
    else:
        raise InputError(f"{spec}: file not found")
    paths = sorted(p for p in paths if not _hidden(posixpath.relpath(p, base or "/")))
    if not paths:
        raise InputError(f"{spec}: no data files (hidden and _-prefixed files are skipped)")
    files = [InputFile(shown(p), detect_format(shown(p), configured_format), fs, p) for p in paths]
    if len({f.format for f in files}) > 1:
        other = next(f for f in files if f.format != files[0].format)
        raise InputError(f"{spec}: one input holds one format, but {files[0].path} is {files[0].format} and "
                         f"{other.path} is {other.format}")
    return files


class _Sha256Reader(io.RawIOBase):
    """A raw file that hashes every byte read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256 = raw, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        self.sha256.update(memoryview(buffer)[:n])
        return n

    def hexdigest(self) -> str:
        """The hash of the whole file, reading what a decompressor left unread."""
        while self.read(1 << 20):
            pass
        return self.sha256.hexdigest()


def _decompressed(raw: BinaryIO, codec: str) -> BinaryIO:
    if codec == "zstd":  # fsspec's zstd reader stops after the first frame; a .zst file may hold several
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return fsspec.compression.compr[codec](raw, mode="rb")


@contextmanager
def _opened(file: InputFile) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed as its suffix says; sets `file.sha256` (of the bytes as stored) once read."""
    codec = infer_compression(file.path.split("?")[0])
    try:
        with file.fs.open(file.fs_path, "rb") as handle:
            hashing = _Sha256Reader(handle)
            buffered = io.BufferedReader(hashing, 1 << 20)
            yield _decompressed(buffered, codec) if codec else buffered
            file.sha256 = hashing.hexdigest()
    except FileNotFoundError:
        raise InputError(f"{file.path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{file.path}: is a folder, not a file") from None
    except (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as error:  # truncated or corrupt
        raise InputError(f"{file.path}: not a readable {codec or 'input'} file ({error})") from None


def _byte_batches(stream: BinaryIO) -> Iterator[bytes]:
    """The stream in pieces of about BATCH_BYTES that end at a line end, a leading UTF-8 BOM removed."""
    pending = stream.read(BATCH_BYTES)
    if pending.startswith(BOM):
        pending = pending[len(BOM):]
    while chunk := stream.read(BATCH_BYTES):
        cut = chunk.rfind(b"\n") + 1
        if cut:
            yield pending + chunk[:cut]
            pending = chunk[cut:]
        else:
            pending += chunk
    if pending:
        yield pending


def _line_spans(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (without the break) of every line; breaks are \\n, \\r\\n or \\r, as for bytes.splitlines."""
    array = np.frombuffer(data, np.uint8)
    if b"\r" in data:
        breaks = np.flatnonzero((array == 10) | (array == 13))
        ends = breaks[~((array[breaks] == 10) & (breaks > 0) & (array[breaks - 1] == 13))]  # the \n of a \r\n
        pair = np.zeros(len(ends), bool)
        inside = ends + 1 < len(array)
        pair[inside] = (array[ends[inside]] == 13) & (array[ends[inside] + 1] == 10)
        starts = np.concatenate([[0], ends + 1 + pair])
    else:
        ends = np.flatnonzero(array == 10)
        starts = np.concatenate([[0], ends + 1])
    ends = np.append(ends, len(array))
    if starts[-1] == len(array):  # the data ends with a break: no empty last line
        starts, ends = starts[:-1], ends[:-1]
    return starts, ends


_BLANK_BYTES = b" \t\n\r\x0b\x0c"  # what bytes.strip() removes: a line of only these is no row
_STARTS_TEXT = np.ones(256, bool)
_STARTS_TEXT[list(_BLANK_BYTES)] = False


def _nonblank(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of the lines that hold more than whitespace (only lines that start with whitespace are searched)."""
    if not len(starts):
        return starts
    has_text = _STARTS_TEXT[np.frombuffer(data, np.uint8)[starts]] & (ends > starts)
    for i in np.flatnonzero(~has_text & (ends > starts)):
        has_text[i] = bool(data[starts[i]:ends[i]].strip(_BLANK_BYTES))
    return np.flatnonzero(has_text)


def _reject_frame(lines: list[int], reasons: list[str], raws: list[str]) -> pl.DataFrame:
    """Rows that are no record at all (field `*`); the source is filled in by `_checked`."""
    return pl.DataFrame({"source": [""] * len(lines), "line": lines, "field": ["*"] * len(lines),
                         "reason": reasons, "raw": [r[:RAW_LIMIT] for r in raws]}, schema=REJECTS)


def _text_column(values: pl.Series, name: str) -> list[pl.Series]:
    """A text field from a typed column: strings and integers taken, null when absent, anything else wrong."""
    if values.dtype == pl.String or values.dtype.is_integer():
        return [values.cast(pl.String).alias(name), pl.repeat(False, len(values), eager=True).alias(f"{name}:wrong")]
    return [pl.repeat(None, len(values), dtype=pl.String, eager=True).alias(name),
            values.is_not_null().alias(f"{name}:wrong")]


def _floats(values: pl.Series) -> pl.Series:
    """Strings as floats the way Python's float() reads them (null where it refuses); bulk, then one by one
    only where the bulk parse refused (float() also takes '1_000', ' 2 ', 'Infinity')."""
    parsed = values.cast(pl.Float64, strict=False)
    refused = (values.is_not_null() & parsed.is_null()).arg_true()
    if refused.len():
        parsed = parsed.scatter(refused, [_python_float(v) for v in values.gather(refused).to_list()])
    return parsed


def _python_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _number_column(values: pl.Series, name: str) -> list[pl.Series]:
    if values.dtype == pl.String:
        return [_floats(values).alias(name)]
    if values.dtype.is_numeric() or values.dtype == pl.Boolean:
        return [values.cast(pl.Float64).alias(name)]
    return [pl.repeat(None, len(values), dtype=pl.Float64, eager=True).alias(name)]


def _typed(frame: pl.DataFrame, lines: pl.Series, fields: dict[str, Field]) -> pl.DataFrame:
    """The fields of a bulk-parsed frame, one value column (and for text, its wrong-type flag) each."""
    columns = [lines.alias("line")]
    for name, spec in fields.items():
        values = frame[spec.column] if spec.column in frame.columns else pl.repeat(None, frame.height, eager=True)
        columns += (_text_column if spec.kind == "text" else _number_column)(values, name)
    return pl.DataFrame(columns)


def _from_records(records: list[dict[str, Any]], lines: list[int], fields: dict[str, Field]) -> pl.DataFrame:
    """The same columns as `_typed`, from records parsed one by one."""
    columns: dict[str, Any] = {"line": pl.Series(lines, dtype=pl.Int64)}
    for name, spec in fields.items():
        values = [r.get(spec.column) for r in records]
        if spec.kind == "number":
            columns[name] = pl.Series([None if v is None else _python_float(v) for v in values], dtype=pl.Float64)
            continue
        taken = [v is None or (isinstance(v, (str, int)) and not isinstance(v, bool)) for v in values]
        columns[name] = pl.Series([str(v) if ok and v is not None else None for v, ok in zip(values, taken)],
                                  dtype=pl.String)
        columns[f"{name}:wrong"] = pl.Series([not ok for ok in taken], dtype=pl.Boolean)
    return pl.DataFrame(columns)


def _records_one_by_one(data: bytes, spans: list[tuple[int, int, int]], fields: dict[str, Field],
                        seen: set[str]) -> _Parsed:
    """JSON lines parsed each on its own: the path for batches that bulk parsing refused."""
    records, lines, bad = [], [], ([], [], [])
    for number, start, end in spans:
        raw = data[start:end]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad[0].append(number), bad[1].append("invalid_utf8"), bad[2].append(raw.decode("utf-8", "replace"))
            continue
        try:
            record = json.loads(text)
        except ValueError:
            bad[0].append(number), bad[1].append("malformed_json"), bad[2].append(text)
            continue
        if not isinstance(record, dict):
            bad[0].append(number), bad[1].append("not_an_object"), bad[2].append(text)
            continue
        seen.update(record)
        records.append(record)
        lines.append(number)
    return _Parsed(_from_records(records, lines, fields), _reject_frame(*bad), records.__getitem__)


def _valid_utf8(buffer: pa.Buffer) -> None:
    """Raise pa.ArrowInvalid unless the bytes are valid UTF-8 (checked in place, without copying them)."""
    offsets = pa.py_buffer(np.array([0, buffer.size], np.int64))
    pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, buffer]).validate(full=True)


def _tells_json_type(dtype: pl.DataType) -> bool:
    """Whether a bulk-parsed column tells each value's JSON type: not for floats (1 and 1.0 read alike) nor for
    timestamps (pyarrow reads date-like strings as timestamps)."""
    return dtype.is_integer() or dtype in (pl.String, pl.Null, pl.Boolean) or isinstance(dtype, (pl.List, pl.Struct))


def _json_lines(data: bytes, first_line: int, fields: dict[str, Field], seen: set[str]) -> tuple[_Parsed, int]:
    """One batch of JSON lines, and how many lines it held."""
    starts, ends = _line_spans(data)
    rows = _nonblank(data, starts, ends)
    numbers = first_line + rows
    try:
        buffer = pa.py_buffer(data)
        _valid_utf8(buffer)  # pyarrow's JSON reader lets some invalid UTF-8 through
        longest = int((ends - starts).max()) if len(starts) else 0
        table = pa_json.read_json(buffer, read_options=pa_json.ReadOptions(block_size=max(4 << 20, longest + 2)))
        frame = pl.from_arrow(table)
        if frame.height != len(rows) or not all(  # a line of two objects; a type that hides what a value was
                _tells_json_type(frame.schema.get(f.column, pl.Null)) for f in fields.values() if f.kind == "text"):
            raise ValueError
    except ValueError:  # pyarrow.ArrowInvalid: a malformed line, a type that changes, invalid UTF-8
        spans = [(int(n), int(starts[i]), int(ends[i])) for n, i in zip(numbers, rows)]
        return _records_one_by_one(data, spans, fields, seen), len(starts)
    seen.update(frame.columns)
    parsed = _typed(frame, pl.Series(numbers, dtype=pl.Int64), fields)
    return _Parsed(parsed, _reject_frame([], [], []),
                   lambda i: json.loads(data[starts[rows[i]]:ends[rows[i]]])), len(starts)


def _json_array(data: bytes, path: str, fields: dict[str, Field], seen: set[str]) -> _Parsed:
    """A .json file holding one array: each element is a row, numbered by its position."""
    try:
        elements = json.loads(data)
    except UnicodeDecodeError:
        raise InputError(f"{path}: not valid UTF-8") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    records = [e for e in elements if isinstance(e, dict)]
    for record in records:
        seen.update(record)
    numbers = [i for i, e in enumerate(elements, start=1) if isinstance(e, dict)]
    others = [(i, json.dumps(e)) for i, e in enumerate(elements, start=1) if not isinstance(e, dict)]
    return _Parsed(_from_records(records, numbers, fields),
                   _reject_frame([i for i, _ in others], ["not_an_object"] * len(others), [t for _, t in others]),
                   records.__getitem__)


def _json_batches(stream: BinaryIO, file: InputFile, fields: dict[str, Field], seen: set[str]) -> Iterator[_Parsed]:
    batches = _byte_batches(stream)
    first = next(batches, b"")
    if file.format == "json" and first.lstrip().startswith(b"["):
        yield _json_array(first + b"".join(batches), file.path, fields, seen)
        return
    line = 1
    for data in _chain(first, batches):
        parsed, lines = _json_lines(data, line, fields, seen)
        line += lines
        yield parsed


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _split_header(data: bytes, delimiter: str, path: str) -> tuple[list[str], bytes]:
    """The header row (names stripped) and the bytes after it."""
    cut = _line_spans(data[:1 << 20])
    end = int(cut[1][0]) if len(cut[0]) else len(data)
    after = int(cut[0][1]) if len(cut[0]) > 1 else len(data)
    header = next(csv.reader([data[:end].decode("utf-8", "replace")], delimiter=delimiter), [])
    header = [h.strip() for h in header]
    if not header:
        raise InputError(f"{path}: no header row")
    if len(header) < 2:
        raise InputError(f"{path}: header has one column ({quoted(header[0])}); is the delimiter {delimiter!r} right?")
    return header, data[after:]


def _delimited_fast(data: bytes, first_line: int, header: list[str], delimiter: str,
                    fields: dict[str, Field]) -> tuple[_Parsed, int] | None:
    """A batch with no quote, no lone \\r and valid UTF-8, split in bulk (and how many lines it held); None for any
    other batch."""
    if b'"' in data or data.count(b"\r") != data.count(b"\r\n"):
        return None
    try:
        text = pl.Series("text", [data.decode("utf-8")])
    except UnicodeDecodeError:
        return None
    lines = text.str.strip_suffix("\n").str.split("\n").explode().str.strip_suffix("\r")
    frame = pl.DataFrame([lines]).with_row_index("at").with_columns(
        (pl.col("at").cast(pl.Int64) + first_line).alias("line"),
        (pl.col("text").str.count_matches(delimiter, literal=True) + 1).alias("columns"))
    frame = frame.filter(pl.col("text").str.replace_all(delimiter, "", literal=True).str.strip_chars(WHITESPACE) != "")
    wrong, good = frame.filter(pl.col("columns") != len(header)), frame.filter(pl.col("columns") == len(header))
    last = {name: i for i, name in enumerate(header)}  # a repeated name: the last column wins, as in a dict
    values = good.select(pl.col("text").str.split(delimiter).list.get(last[f.column]).alias(f.column)
                         for f in fields.values() if f.column in last)
    rejects = _reject_frame(wrong["line"].to_list(), ["wrong_column_count"] * wrong.height, wrong["text"].to_list())
    return (_Parsed(_typed(values, good["line"], fields), rejects,
                    lambda i: dict(zip(header, good["text"][i].split(delimiter)))), lines.len())


def _delimited_one_by_one(batches: Iterator[bytes], first_line: int, header: list[str], delimiter: str,
                          fields: dict[str, Field]) -> Iterator[_Parsed]:
    """The rest of a file through Python's csv module, in batches: quoted fields (which may hold line breaks), a
    lone \\r, a row of invalid UTF-8."""
    text = (line for data in batches for line in io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    reader = csv.reader(text, delimiter=delimiter)
    records, lines, bad, previous_end = [], [], ([], [], []), 0
    for values in reader:
        number, previous_end = first_line + previous_end, reader.line_num
        if not any(v.strip() for v in values):
            continue
        raw = delimiter.join(values)
        if any("\udc80" <= ch <= "\udcff" for ch in raw):
            bad[0].append(number), bad[1].append("invalid_utf8")
            bad[2].append(raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        elif len(values) != len(header):
            bad[0].append(number), bad[1].append("wrong_column_count"), bad[2].append(raw)
        else:
            records.append(dict(zip(header, values)))
            lines.append(number)
        if len(records) + len(bad[0]) == ROWS_PER_BATCH:
            yield _Parsed(_from_records(records, lines, fields), _reject_frame(*bad), records.__getitem__)
            records, lines, bad = [], [], ([], [], [])
    yield _Parsed(_from_records(records, lines, fields), _reject_frame(*bad), records.__getitem__)


def _delimited_batches(stream: BinaryIO, file: InputFile, fields: dict[str, Field],
                       seen: set[str]) -> Iterator[_Parsed]:
    delimiter = "\t" if file.format == "tsv" else ","
    batches = _byte_batches(stream)
    first = next(batches, b"")
    if not first.strip():
        return  # an empty file
    header, rest = _split_header(first, delimiter, file.path)
    seen.update(header)
    line = 2
    pending = _chain(rest, batches)
    for data in pending:
        fast = _delimited_fast(data, line, header, delimiter, fields)
        if fast is None:
            yield from _delimited_one_by_one(_chain(data, pending), line, header, delimiter, fields)
            return
        parsed, lines = fast
        line += lines
        yield parsed


def _parquet_batches(file: InputFile, fields: dict[str, Field], seen: set[str]) -> Iterator[_Parsed]:
    if infer_compression(file.path.split("?")[0]):
        raise InputError(f"{file.path}: a compressed parquet file; parquet compresses its columns itself, give the "
                         "plain .parquet file")
    with _opened(file) as stream:  # hashes the file as stored
        while stream.read(1 << 24):
            pass
    try:
        with file.fs.open(file.fs_path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            seen.update(parquet.schema_arrow.names)
            wanted = sorted({f.column for f in fields.values()} & set(parquet.schema_arrow.names))
            first = 1
            for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, columns=wanted):
                frame = pl.from_arrow(pa.Table.from_batches([batch]))
                lines = pl.int_range(first, first + frame.height, dtype=pl.Int64, eager=True)
                first += frame.height
                yield _Parsed(_typed(frame, lines, fields), _reject_frame([], [], []),
                              lambda i, rows=batch: rows.slice(i, 1).to_pylist()[0])
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{file.path}: not a readable parquet file ({type(error).__name__})") from None


def _parsed_batches(file: InputFile, fields: dict[str, Field], seen: set[str]) -> Iterator[_Parsed]:
    if file.format == "parquet":
        yield from _parquet_batches(file, fields, seen)
        return
    with _opened(file) as stream:
        if file.format in ("jsonl", "json"):
            yield from _json_batches(stream, file, fields, seen)
        else:
            yield from _delimited_batches(stream, file, fields, seen)


def _field_rejects(parsed: _Parsed, fields: dict[str, Field]) -> tuple[pl.Series, pl.Series]:
    """Per row, the first field that fails (in the order given) and why; nulls where all pass."""
    reasons, names = [], []
    for name, spec in fields.items():
        value = pl.col(name)
        if spec.kind == "number":
            reason = pl.when(value.is_null() | value.is_nan()).then(pl.lit("bad_score"))
        elif spec.required:
            reason = (pl.when(pl.col(f"{name}:wrong")).then(pl.lit("wrong_type"))
                      .when(value.is_null()).then(pl.lit("missing_field"))
                      .when(value.str.strip_chars(WHITESPACE) == "").then(pl.lit("empty_text")))
        else:
            reason = pl.when(pl.col(f"{name}:wrong")).then(pl.lit("wrong_type"))
        reasons.append(reason)
        names.append(pl.when(reason.is_not_null()).then(pl.lit(spec.column)))
    out = parsed.rows.select(pl.coalesce(reasons).alias("reason"), pl.coalesce(names).alias("field"))
    return out["reason"], out["field"]


def _field_raw(parsed: _Parsed, index: int, column: str, reason: str, value: Any) -> str:
    if reason == "empty_text":
        return _raw_text(value)
    record = parsed.record(index)
    return _raw_text(record if reason == "missing_field" else record.get(column))


def _checked(parsed: _Parsed, fields: dict[str, Field], file: InputFile, number: int) -> Checked:
    """Apply the field rules in bulk; only rejected rows are looked at one by one (for their raw text)."""
    reasons, failing = _field_rejects(parsed, fields)
    bad = reasons.is_not_null()
    spots = bad.arg_true().to_list()
    by_column = {spec.column: name for name, spec in fields.items()}
    raws = [_field_raw(parsed, i, failing[i], reasons[i], parsed.rows[by_column[failing[i]]][i]) for i in spots]
    field_rejects = pl.DataFrame({"source": [file.path] * len(spots), "line": parsed.rows["line"].gather(spots),
                                  "field": failing.gather(spots), "reason": reasons.gather(spots), "raw": raws},
                                 schema=REJECTS)
    rejects = (pl.concat([parsed.rejects.with_columns(pl.lit(file.path).alias("source")), field_rejects])
               .sort("line", maintain_order=True).with_columns(pl.lit(number, pl.UInt32).alias("file")))
    rows = parsed.rows.filter(~bad).select(pl.lit(number, pl.UInt32).alias("file"), "line",
                                           *(pl.col(n).fill_null("") if f.kind == "text" else pl.col(n)
                                             for n, f in fields.items()))
    file.rows_read += parsed.rows.height + parsed.rejects.height
    return Checked(rows, rejects)


def read_input(files: list[InputFile], fields: dict[str, Field], numbered_from: int = 0) -> Iterator[Checked]:
    """Every file's rows in batches: values of the named fields that pass their rules, and the rejects; file i is
    numbered `numbered_from + i`.

    Fails at once on a file that cannot be read, or at its end when it has rows but no row has a column for a
    required field (the config, not the data, is wrong)."""
    for index, file in enumerate(files):
        seen: set[str] = set()
        records = 0
        for parsed in _parsed_batches(file, fields, seen):
            records += parsed.rows.height
            yield _checked(parsed, fields, file, numbered_from + index)
        if not file.rows_read:
            raise InputError(f"{file.path}: " + ("file has no rows" if seen else "file is empty"))
        missing = [f.column for f in fields.values() if f.required and f.column not in seen]
        if records and missing:
            raise InputError(f"{file.path}: no column {missing[0]!r} (columns found: "
                             f"{shortened(', '.join(sorted(seen)), 300) or 'none'})")


@dataclass(frozen=True)
class Table:
    """A whole input read into memory (for small ones: qrels, evaluation queries)."""

    files: list[InputFile]
    rows: pl.DataFrame
    rejects: pl.DataFrame


def read_table(spec: str, configured_format: str, fields: dict[str, Field], numbered_from: int = 0) -> Table:
    files = input_files(spec, configured_format)
    batches = list(read_input(files, fields, numbered_from))
    return Table(files, pl.concat([b.rows for b in batches]), pl.concat([b.rejects for b in batches]))


def read_qrels(spec: str, configured_format: str, numbered_from: int = 0) -> Table:
    """Qrels (query-id, corpus-id, score), the one reader of them: ingest, the audit and the quality gate."""
    return read_table(spec, configured_format, QRELS, numbered_from)
