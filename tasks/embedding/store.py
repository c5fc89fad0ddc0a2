"""A content-addressed embedding store on disk: vectors keyed by (model fingerprint, text hash).

One folder per fingerprint holds:

- `part-<keys>-<sha256>.parquet`: `text_hash` and `vector` (a float32 row as fixed-size binary, which parquet decodes
  as one copy). `<sha256>` is of the file's bytes and is checked whenever vectors are read; `<keys>` hashes the part's
  text hashes, so a task run again finds the part its killed attempt wrote. A part is serialized in memory, written
  under a temporary name and renamed: a killed writer leaves no visible part.
- `index.parquet`: (key, part, part_row) of the parts, sorted by key, where key is the text hash's first 64 bits: a
  run learns which of its texts are stored in one join on integers with it. Vectors are used only after the part's
  full text hash at part_row is compared, so a key collision costs an embedding, never a wrong vector. It is a
  cache: parts it does not list are added, and parts that are gone dropped, at the next lookup.
- `damaged-*`: parts found unreadable or failing their checksum, set aside so that no lookup finds them again (their
  texts are embedded again); `remove_damaged` deletes them.
- `.lock`: held while compacting, writing the index or removing damaged parts.

A store that is a symlink, or holds one, is refused when opened (tasks/runtime/containment.py): nothing is read or
written through a link, nor is one removed.

Compaction merges small parts (incremental runs) and writes the merged part and the index before it deletes the
small ones, so a reader that finds a part gone looks its keys up again and finds them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from negforge.tasks.runtime.containment import inside, refuse_link
from negforge.tasks.storage.mirror import fetch, push_now

PART_BYTES = 32 << 20  # target size of a part: what a killed embedding task can lose, and what compaction merges to
COMPACT_AT = 8  # compaction runs once this many parts are under half of PART_BYTES
STALE_TEMPORARY_S = 3600  # a temporary file this old belongs to a killed writer
INDEX = "index.parquet"
KEY = pl.col("text_hash").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("key")
INDEX_SCHEMA = {"key": pl.UInt64, "part": pl.Categorical, "part_row": pl.UInt32}


class DamagedPart(Exception):
    """A part that cannot be read or fails its checksum; it has been set aside."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part


def part_rows(dim: int) -> int:
    """How many vectors of `dim` floats fill a part."""
    return max(1, PART_BYTES // (4 * dim + 32))


def _index_keys(hashes: pl.Series) -> pl.Series:
    return hashes.to_frame("text_hash").select(KEY).to_series()


def _entries(part: str, hashes: pl.Series) -> pl.DataFrame:
    """Index entries of one part."""
    return pl.DataFrame({"key": _index_keys(hashes),
                         "part": pl.repeat(part, len(hashes), eager=True),
                         "part_row": np.arange(len(hashes), dtype=np.uint32)}, schema=INDEX_SCHEMA)


def _combined(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Index entries in index order: by key, then part name (a key stored twice is found in the first)."""
    return pl.concat(frames).sort("key", pl.col("part").cast(pl.String))


def _keys_digest(hashes: pl.Series) -> str:
    return hashlib.blake2b("\n".join(hashes.to_list()).encode(), digest_size=8).hexdigest()


class EmbeddingStore:
    """The parts of one model fingerprint: `<root>/<fingerprint>/`."""

    def __init__(self, root: str | Path, fingerprint: str) -> None:
        """Refuses (OSError ELOOP) a store reached through a symlink or holding one: reads would leave the workdir,
        writes land outside it, and compaction and `gc` delete there (tasks/runtime/containment.py)."""
        self.folder = inside(refuse_link(Path(root)), fingerprint, entries=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        fetch(self.folder)  # a workdir on an object store: its parts, into this process's mirror

    def parts(self) -> list[Path]:
        """The part files; a symlink is no part (it would make reads and `gc` reach outside the store)."""
        return sorted(p for p in self.folder.glob("part-*.parquet") if not p.is_symlink())

    # --- writing --------------------------------------------------------------------------------------------------

    def put(self, hashes: pl.Series, vectors: np.ndarray) -> str:
        """Store vectors (rows in `hashes` order) as one new part; returns its name."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        rows = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * vectors.shape[1]), len(vectors),
                                                    [None, pa.py_buffer(vectors)])
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"text_hash": hashes.cast(pl.String).to_arrow(), "vector": rows}), sink,
                       compression="none")
        data = sink.getvalue()
        name = f"part-{_keys_digest(hashes)}-{hashlib.sha256(data).hexdigest()[:32]}.parquet"
        tmp = self.folder / f".{name}.tmp-{uuid.uuid4().hex[:12]}"
        with tmp.open("wb") as handle:
            handle.write(data)
        os.replace(tmp, self.folder / name)
        push_now(self.folder / name)  # a workdir on an object store: a killed task keeps the parts it wrote
        return name

    def written(self, hashes: pl.Series) -> str | None:
        """The part holding exactly `hashes` in that order, if one was written (by an earlier try of a task)."""
        found = [p for p in self.parts() if p.name.startswith(f"part-{_keys_digest(hashes)}-")]
        return found[0].name if found else None

    # --- reading --------------------------------------------------------------------------------------------------

    def read(self, part: str) -> tuple[pl.Series, np.ndarray]:
        """The text hashes and vectors of a part, after checking its checksum.

        Raises:
            DamagedPart: unreadable or not matching its checksum (the part is set aside).
            FileNotFoundError: the part is gone (compacted away since it was looked up).
        """
        data = (self.folder / part).read_bytes()
        if hashlib.sha256(data).hexdigest()[:32] != part.rsplit("-", 1)[-1].removesuffix(".parquet"):
            raise self._set_aside(part, "checksum mismatch (corrupt or truncated)")
        try:
            # not read_table: it imports pandas. No pyarrow thread pool: parts are uncompressed (decoding is a copy),
            # and a short process (`negforge gc`) whose pool threads were still there at exit once aborted with
            # "terminate called without an active exception" (apache/arrow#34314)
            table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
            vectors = table.column("vector").combine_chunks()
            width = vectors.type.byte_width
            flat = np.frombuffer(vectors.buffers()[1], dtype="<f4", count=len(vectors) * width // 4,
                                 offset=vectors.offset * width)
            return pl.Series("text_hash", table.column("text_hash")), flat.reshape(len(vectors), width // 4)
        except (pa.ArrowException, KeyError, AttributeError, ValueError) as error:
            raise self._set_aside(part, f"unreadable ({error})") from None

    def dim(self) -> int | None:
        """The vector width of the stored parts (None: no readable part)."""
        for path in self.parts():
            try:
                return pq.read_schema(path).field("vector").type.byte_width // 4
            except (pa.ArrowException, OSError, KeyError, AttributeError):
                continue
        return None

    def _set_aside(self, part: str, reason: str) -> DamagedPart:
        try:
            os.replace(self.folder / part, self.folder / f"damaged-{part}")
        except FileNotFoundError:
            pass  # another reader set it aside first
        return DamagedPart(part, reason)

    # --- the key index --------------------------------------------------------------------------------------------

    def lookup(self, wanted: pl.DataFrame) -> tuple[pl.DataFrame, tuple[str, ...]]:
        """`wanted` (a text_hash column and any others) with the `part` and `part_row` of each stored text (null:
        not stored), in one join with the key index; and the parts found damaged while bringing the index up to
        date."""
        index, damaged = self.index()
        first = index.filter((pl.col("key") != pl.col("key").shift(1)).fill_null(True))  # stored twice: 1st part
        found = wanted.with_columns(KEY).join(first, on="key", how="left", maintain_order="left")
        return found.drop("key"), damaged

    def index(self) -> tuple[pl.DataFrame, tuple[str, ...]]:
        """Every (text_hash, part, part_row) of the present parts: the saved index less the parts that are gone, plus
        the keys of parts it does not list (saved back when it changed); and the parts found unreadable."""
        listed = {path.name for path in self.parts()}
        saved, token = self._saved_index()
        kept = saved.filter(pl.col("part").cast(pl.String).is_in(listed))
        added, damaged = [], []
        for part in sorted(listed - set(kept["part"].unique().cast(pl.String).to_list())):
            try:
                keys = pq.ParquetFile(self.folder / part).read(columns=["text_hash"], use_threads=False)["text_hash"]
            except FileNotFoundError:
                continue  # compacted away since the listing
            except (pa.ArrowException, OSError, KeyError) as error:
                damaged.append(self._set_aside(part, f"unreadable ({error})").part)
                continue
            added.append(_entries(part, pl.Series("text_hash", keys)))
        if not added and kept.height == saved.height:
            return saved, tuple(damaged)
        index = _combined([kept, *added])
        with self._locked(wait=False) as held:
            if held and self._index_token() == token:  # nobody rewrote it since we read it
                self._save_index(index)
        return index, tuple(damaged)

    def _index_token(self) -> tuple[int, int] | None:
        try:
            stat = (self.folder / INDEX).stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def _saved_index(self) -> tuple[pl.DataFrame, tuple[int, int] | None]:
        token = self._index_token()
        try:
            return pl.read_parquet(self.folder / INDEX).cast(INDEX_SCHEMA), token  # type: ignore[arg-type]
        except (FileNotFoundError, pl.exceptions.PolarsError, OSError):
            return pl.DataFrame(schema=INDEX_SCHEMA), token  # absent or unreadable: rebuilt from the parts

    def _save_index(self, index: pl.DataFrame) -> None:
        tmp = self.folder / f".{INDEX}.tmp-{uuid.uuid4().hex[:12]}"
        index.write_parquet(tmp)
        os.replace(tmp, self.folder / INDEX)

    @contextmanager
    def _locked(self, wait: bool) -> Iterator[bool]:
        """The store's exclusive lock; yields False at once when `wait` is false and another process holds it."""
        fd = os.open(self.folder / ".lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- upkeep ---------------------------------------------------------------------------------------------------

    def _small_parts(self) -> list[Path]:
        small = []
        for path in self.parts():
            try:
                if path.stat().st_size < PART_BYTES // 2:
                    small.append(path)
            except FileNotFoundError:
                continue
        return small

    def needs_compaction(self) -> bool:
        return len(self._small_parts()) >= COMPACT_AT

    def compact(self) -> list[str] | None:
        """Merge the small parts into parts of up to PART_BYTES, once there are COMPACT_AT of them.

        Returns:
            The merged parts written (empty: nothing to do), or None when another process holds the lock.
        """
        with self._locked(wait=False) as held:
            if not held:
                return None
            small = self._small_parts()
            if len(small) < COMPACT_AT:
                return []
            index, _ = self.index()
            names = [path.name for path in small]
            elsewhere = index.filter(~pl.col("part").cast(pl.String).is_in(names))["key"]
            groups, size = [[]], 0
            for path in small:
                if groups[-1] and size + path.stat().st_size > PART_BYTES:
                    groups.append([])
                    size = 0
                groups[-1].append(path.name)
                size += path.stat().st_size
            groups = [group for group in groups if len(group) > 1]
            merged = [entries for group in groups if (entries := self._merge(group, elsewhere)) is not None]
            gone = [name for group in groups for name in group]
            kept = index.filter(~pl.col("part").cast(pl.String).is_in(gone))
            self._save_index(_combined([kept, *merged]))
            for name in gone:  # only now: a reader that finds them gone finds their keys in the merged parts
                (self.folder / name).unlink(missing_ok=True)
            return [entries["part"][0] for entries in merged]

    def _merge(self, parts: list[str], elsewhere: pl.Series) -> pl.DataFrame | None:
        """One part with the distinct keys of `parts` that no other part holds (damaged ones are set aside); returns
        its index entries."""
        hashes, vectors = [], []
        for part in parts:
            try:
                keys, rows = self.read(part)
            except (DamagedPart, FileNotFoundError):
                continue
            hashes.append(keys)
            vectors.append(rows)
        if not hashes:
            return None
        keys = pl.concat(hashes)
        keep = (~_index_keys(keys).is_in(elsewhere) & keys.is_first_distinct()).to_numpy()
        if not keep.any():
            return None
        return _entries(self.put(keys.filter(keep), np.concatenate(vectors)[keep]), keys.filter(keep))

    def remove_damaged(self) -> list[str]:
        """For `gc`: check every part's checksum and delete those that fail, those set aside by builds, and the
        temporary files of killed writers. Returns the names removed."""
        with self._locked(wait=True):
            for path in self.parts():
                try:
                    self.read(path.name)
                except (DamagedPart, FileNotFoundError):
                    continue
            removed = list(self.folder.glob("damaged-*"))
            removed += [path for path in self.folder.glob(".*.tmp-*")
                        if time.time() - path.lstat().st_mtime > STALE_TEMPORARY_S]
            for path in removed:
                path.unlink(missing_ok=True)
            return sorted(path.name for path in removed)


def compact_stores(root: str | Path, fingerprints: list[str]) -> dict[str, list[str] | None]:
    """Compact the store of each fingerprint (see EmbeddingStore.compact); returns the merged parts of each."""
    return {fingerprint: EmbeddingStore(root, fingerprint).compact() for fingerprint in fingerprints}
