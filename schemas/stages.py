"""What stages hand each other: frozen dataclasses of paths and small metadata, never tables or vectors.

A missing field is a bug (AttributeError with a traceback), not a user error; the tables the paths point to are
declared in schemas/tables.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
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
    task_runs: int = 0


@dataclass(frozen=True)
class CorpusDeduplicated:
    """Corpus deduplication's result: the dropped rows (for search), the record of groups, and counts."""

    excluded_docs: str
    corpus_duplicates: str
    dropped: int
    task_runs: int


@dataclass(frozen=True)
class Partition:
    """A contiguous range of query rows [first, stop) searched and mined by one task."""

    number: int
    first: int
    stop: int


@dataclass(frozen=True)
class CandidateFiles:
    """What search hands mining (per partition, or stored in a version): hits (tables.HITS + rank, pos_sim,
    topic_centrality, and bm25 or rescore when there are such scores), the positives' scores, and near-duplicate
    candidate pairs (tables.NEAR_PAIRS)."""

    hits: str
    positive_scores: str
    near_pairs: str


@dataclass(frozen=True)
class Deepened:
    """Adaptive depth: queries short of negatives at the options' depth, how many were mined deeper, how many
    stayed short, the deepest depth mined, and the short queries whose stored hits end before the depth a build
    would search (a remine cannot fill them)."""

    queries_short: int = 0
    queries_deepened: int = 0
    still_short: int = 0
    depth: int = 0
    needs_deeper: int = 0

    @staticmethod
    def total(reports: list[Deepened]) -> Deepened:
        """The reports of several partitions as one."""
        return Deepened(*(sum(getattr(r, name) for r in reports) for name in
                          ("queries_short", "queries_deepened", "still_short")),
                        depth=max((r.depth for r in reports), default=0),
                        needs_deeper=sum(r.needs_deeper for r in reports))


@dataclass(frozen=True)
class MinedPartition:
    """One partition after search and mining: its candidates, every candidate's reason (tables.CANDIDATES), and
    its adaptive-depth report."""

    partition: Partition
    candidates: CandidateFiles
    mined: str
    deepened: Deepened


@dataclass(frozen=True)
class ApproximateSearch:
    """An approximate index (tasks/search/ann_index.py) and its search setting: nprobe (ivf) or efSearch (hnsw)."""

    index: str
    kind: str
    knob: int


@dataclass(frozen=True)
class SearchJob:
    """What every partition task of a build shares: the texts and vectors, the depths (the search depth and the
    adaptive-depth bound), the documents a search can return, the BM25 index, and where to write."""

    texts: Texts
    queries: VectorFile
    corpus: VectorFile
    depth: int
    range_max: int
    rows_per_block: int
    out_dir: str
    progress_dir: str
    searchable: int
    bound: int | None = None
    excluded_docs: str | None = None
    approximate: ApproximateSearch | None = None
    lexical_index: str | None = None


@dataclass(frozen=True)
class ScoreStats:
    """Count, mean, min, median and max of some scores (None where there are no scores)."""

    count: int
    mean: float | None = None
    min: float | None = None
    median: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Mined:
    """All partitions mined: the ids table and every candidate with its reason (files), the positives the rows use
    (promoted suspected positives included), and what the manifest and the quality gate need to know of them."""

    ids: str
    candidates: str
    positive_scores: str
    reasons: dict[str, int]
    reasons_per_query: dict[str, dict[str, float | int]]
    short_queries: tuple[str, ...]
    dropped_eval_queries: tuple[str, ...]
    audit: dict[str, Any] | None
    positive_score_stats: ScoreStats
    negative_score_stats: ScoreStats
    positives: str | None = None  # None: the ingested positives, unchanged
    suspected: dict[str, int] = field(default_factory=dict)
    negatives_missing: int = 0


@dataclass(frozen=True)
class StoreMeta:
    """What stored candidates are: the search depth (short queries may go deeper), the most positives of a query,
    the corpus size and how many documents a search could return, and whether they carry BM25 scores and topic
    similarities."""

    depth: int
    max_positives: int
    documents: int
    searchable: int
    lexical: bool = False
    topic: bool = False


@dataclass(frozen=True)
class StoredCandidates:
    """The candidates kept inside a version, for re-mining: the texts they name, the candidates, what they are,
    the corpus deduplication record, the calibration's candidates and the topic sample when there were some."""

    texts: Texts
    files: CandidateFiles
    meta: StoreMeta
    corpus_duplicates: str | None = None
    calibration: CalibrationFiles | None = None
    topic_sample: str | None = None


@dataclass(frozen=True)
class CalibrationFiles:
    """The calibration's candidates (tasks/calibration/calibrate.py), in one folder: its multi-positive queries searched
    with every positive known to `depth`, and the positive each of `folds` folds hides; the sizes its settings need."""

    folder: str
    queries: int
    depth: int
    folds: int
    seed: int
    max_positives: int
    documents: int
    searchable: int


@dataclass(frozen=True)
class EvaluationSplit:
    """An evaluation split (tasks/evaluation/split.py): its BEIR files, which split, how many queries are measured,
    and `key`, a hash of the files' bytes, the split and how its texts are read, which names its results."""

    folder: str
    split: str
    corpus: str
    queries: str
    qrels: str
    doc_template: str
    positive_threshold: float
    max_queries: int | None
    key: str
    files: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class Encoder:
    """A model as it is evaluated (tasks/evaluation/base_model.py): its folder, weights hash, prompts and the
    evaluation's max_seq_length (null: the model's own), and the device."""

    name: str
    path: str
    weights_sha256: str
    query_prompt: str
    corpus_prompt: str
    max_seq_length: int | None
    device: str | None

    @property
    def fingerprint(self) -> str:
        """Hash of the weights and the settings that change its vectors: keys the base model's cached metrics."""
        import hashlib
        import json

        key = asdict(self) | {"name": None, "path": None, "device": None}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Retrieval:
    """One model measured on an evaluation split: nDCG@10, MRR@10 and Recall@100 over its queries, nDCG@10 per
    query id (what the paired bootstrap resamples), and the seconds it took."""

    metrics: dict[str, float]
    per_query: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class WrittenSet:
    """The training set as written (tasks/registry/training_set.py): its rows and id rows, its files per config
    (data, ids, and exports when there are some), and the bytes of each config."""

    rows: int
    id_rows: int
    files: dict[str, list[str]]
    bytes: dict[str, int]
