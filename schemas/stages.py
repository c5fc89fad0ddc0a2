"""What stages hand each other: frozen dataclasses of paths and small metadata, never tables or vectors.

A missing field is a bug (AttributeError with a traceback), not a user error; the tables the paths point to are
declared in schemas/tables.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Texts:
    """The texts a run mines over: query and corpus text files (tables.TEXT_SHARD, rows numbered from 0 across the
    files, in order) and the positives table (tables.POSITIVES)."""

    query_files: tuple[str, ...]
    corpus_files: tuple[str, ...]
    positives: str
    max_positives: int


@dataclass(frozen=True)
class IngestCounts:
    """Ingest counts that go into the manifest as they are (a remine copies them from its source)."""

    documents: int
    unique_texts: int
    queries_read: int
    queries_used: int
    queries_unused: int
    positives: int
    rows_rejected: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


COUNT_KEYS = tuple(f.name for f in fields(IngestCounts))


@dataclass(frozen=True)
class Ingested:
    """The result of ingest: the texts, the counts, per-file accounting (every file of every input) and the rejects:
    the count per reason, commonest first, and the first few of each as `file:line field: raw`."""

    texts: Texts
    counts: IngestCounts
    inputs: tuple[dict[str, Any], ...]
    rejects_path: str
    reject_reasons: dict[str, int]
    reject_samples: dict[str, list[str]]


@dataclass(frozen=True)
class VectorFile:
    """A float32 matrix in a .npy file, one row per row of a text table, read memory-mapped or in blocks."""

    path: str
    rows: int
    dim: int


@dataclass(frozen=True)
class Embedded:
    """The result of the embedding stage: the query and corpus vectors, and what the store did."""

    queries: VectorFile
    corpus: VectorFile
    texts_embedded: int
    texts_cached: int
    fingerprints: dict[str, str]
    store_repaired: tuple[str, ...] = ()
