"""The version manifest (`manifest.json`): what a published version is, typed.

A manifest is written with only the fields it was given (`exclude_unset`), top-level keys in the order they were
given (a remine's entries come in another order than a build's), so the file stays byte for byte what the untyped
dict gave. Manifests published by
earlier code lack newer fields: those read as None (or empty), and unknown keys are kept (`extra="allow"`), so every
published manifest reads and writes back unchanged. The registry's own tests publish minimal manifests, so no field
is required.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

from negforge.schemas.config import NOT_PUBLISHED, BuildConfig, apply_overrides, validate_config
from negforge.schemas.evaluation import Evaluated

Number = int | float


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class Model(_Part):
    """The embedding model: its name, the sha256 of its weights, the embedding store's fingerprints."""

    name: str | None = None
    weights_sha256: str | None = None
    fingerprints: dict[str, str] = {}


class Embed(_Part):
    """What the embedding stage did (a remine embeds nothing and records no store repairs)."""

    texts_embedded: int = 0
    texts_cached: int = 0
    store_repaired: list[str] = []


class Probe(_Part):
    """An approximate index's recall probe (tasks/search/ann_index.py Probe)."""

    index: str
    kind: str
    knob: int
    recall: Number
    negatives_changed: Number | None = None
    queries: int
    met_target: bool


class Search(_Part):
    """The search window and depth mined with; the index and its recall probe (a build's only: a remine's search
    is the stored candidates')."""

    depth: int | None = None
    range_max: int | None = None
    index: str = "flat"
    probe: Probe | None = None


class Counts(_Part):
    """Ingest counts (schemas.stages.IngestCounts) and the rows written."""

    documents: int = 0
    unique_texts: int = 0
    queries_read: int = 0
    queries_used: int = 0
    queries_unused: int = 0
    positives: int = 0
    rows_rejected: int = 0
    rows: int = 0
    id_rows: int = 0


class Input(_Part):
    """One input file: where it was, its sha256 and its rows."""

    path: str
    sha256: str | None = None
    rows_read: int | None = None
    rows_accepted: int | None = None
    rows_rejected: int | None = None


class Rejects(_Part):
    """The rejected rows: their table, the count per reason and samples per reason."""

    path: str | None = None
    reasons: dict[str, int] = {}
    samples: dict[str, list[str]] = {}


class ShortQueries(_Part):
    count: int = 0
    ids: list[str] = []


class ScoreStats(_Part):
    """schemas.stages.ScoreStats as written (None where there are no scores)."""

    count: int = 0
    mean: Number | None = None
    min: Number | None = None
    median: Number | None = None
    max: Number | None = None


class Scores(_Part):
    positive: ScoreStats = ScoreStats()
    negative: ScoreStats = ScoreStats()


class Validation(_Part):
    """The candidate's gate (tasks/gate/gates.py check_candidate)."""

    success: bool | None = None
    expectations: int = 0
    warnings: list[str] = []
    data_docs: str | None = None
    shared_positives_with_eval: int | None = None
    eval_qrels: str | None = None


class Files(_Part):
    """The training set's files per config (data, ids), the exports, and the bytes of each config."""

    data: list[str] = []
    ids: list[str] = []
    exports: list[str] | None = None
    bytes: dict[str, int] = {}


class FileEntry(_Part):
    sha256: str
    size: int


class TopicBound(_Part):
    """What `mine.topic_quantile` derived (tasks/mining/topic.py with_topic_bound): the bound, from how many
    positives of how many queries."""

    quantile: Number
    max_topic_centrality: Number
    positives: int = 0
    queries: int = 0


class CalibrationRow(_Part):
    """One setting of the calibration's table, measured over all folds (tasks/calibration/calibrate.py `_row`);
    `difference_interval`: its rate less the starting setting's, paired bootstrap."""

    setting: str
    false_negative_rate: Number | None = None
    ci95: list[Number] | None = None
    vs_plain: Number | None = None
    vs_plain_ci95: list[Number] | None = None
    hidden_kept: int = 0
    coverage: Number = 0.0
    hardness: Number | None = None
    mean_negative_score: Number | None = None
    negatives: int = 0
    difference_interval: list[Number] | None = None


class CalibrationEstimate(_Part):
    """The chosen setting's false-negative rate over plain top-k's, with its 95% interval (None: too few hidden
    positives among plain top-k's negatives)."""

    vs_plain: Number | None = None
    ci95: list[Number] | None = None
    false_negative_reduction: Number | None = None


class Calibration(_Part):
    """What calibration chose and why (`outcome`: default, fewer_false_negatives, lowest_false_negative_rate,
    highest_coverage, hardest_with_coverage, or fallback), the chosen setting's fields, and the whole table;
    `skipped` names the grid settings that could not be applied, with the reason; `estimate` (None: nothing to
    measure on); `compared_with`: the setting the choice started from (the table's `difference_interval` is against
    it)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    outcome: str
    choice: str | None = None
    settings: dict[str, Any] = {}
    message: str = ""
    queries: int = 0
    folds: int = 0
    table: list[CalibrationRow] = []
    skipped: dict[str, str] = {}
    estimate: CalibrationEstimate | None = None
    compared_with: str | None = None

    def row(self, setting: str) -> CalibrationRow | None:
        return next((row for row in self.table if row.setting == setting), None)


class Provenance(BaseModel):
    """The manifest entries only the run knows, from what its stages returned (a build's: ingest, embedding, search,
    calibration; a remine's: its parent's and its calibration's); the publishing tail adds the rest
    (flows/stages/publishing.py). Sub-entries a run does not know are left unset, so they are not written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    created_at: str
    inputs: list[Input]
    model: Model
    embed: Embed
    search: Search
    counts: Counts
    rejects: Rejects
    remined_from: str | None = None
    calibration: Calibration | None = None
    topic: TopicBound | None = None
    run_dir: str
    task_runs: dict[str, int]
    corpus_dedup: dict[str, Any] | None = None


class Manifest(BaseModel):
    """A version's manifest, in manifest.json's order."""

    model_config = ConfigDict(extra="allow")
    _order: list[str] = PrivateAttr(default_factory=list)

    dataset: str | None = None
    version: str | None = None
    parent: str | None = None
    data_hash: str | None = None
    code_version: str | None = None
    packages: dict[str, str | None] = {}
    config: dict[str, Any] = {}
    created_at: str | None = None
    inputs: list[Input] = []
    model: Model = Model()
    embed: Embed = Embed()
    search: Search = Search()
    counts: Counts = Counts()
    rejects: Rejects = Rejects()
    remined_from: str | None = None
    calibration: Calibration | None = None
    topic: TopicBound | None = None
    run_dir: str | None = None
    task_runs: dict[str, int] = {}
    corpus_dedup: dict[str, Any] | None = None
    reasons: dict[str, int] = {}
    reasons_per_query: dict[str, dict[str, Number]] = {}
    short_queries: ShortQueries = ShortQueries()
    adaptive_depth: dict[str, int | None] | None = None
    suspected_positives: dict[str, Number | bool] | None = None
    dropped_eval_queries: list[str] = []
    audit: dict[str, Any] | None = None
    side_inputs: list[dict[str, Any]] = []
    scores: Scores = Scores()
    validation: Validation = Validation()
    charts: dict[str, str] = {}
    files: Files = Files()
    timings: dict[str, float] = {}
    checksums: dict[str, FileEntry] | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Any) -> Manifest:
        manifest = handler(data)
        if isinstance(data, dict):
            manifest._order = list(data)
        return manifest

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def as_dict(self) -> dict[str, Any]:
        """The manifest as manifest.json holds it: only the fields it was given, in the order given; fields set
        later (checksums) last."""
        dumped = self.model_dump(mode="json", exclude_unset=True)
        return {key: dumped[key] for key in self._order if key in dumped} | dumped

    def json_text(self) -> str:
        return json.dumps(self.as_dict(), indent=2, allow_nan=False)

    def build_config(self, changes: dict[str, dict[str, Any]] | None = None, overrides: list[str] | None = None,
                     source: str | None = None) -> BuildConfig:
        """The config this version was built with, validated: `changes` merged into its sections, then `--set`
        overrides. A config the current code refuses raises ConfigError naming the version (`source`)."""
        raw = self.config | {section: (self.config.get(section) or {}) | values
                             for section, values in (changes or {}).items()}
        return validate_config(apply_overrides(raw, overrides or []),
                               source or f"{self.dataset}@{self.version} config")

    def built_with(self, config: BuildConfig) -> bool:
        """Whether this version was built with the settings of `config` that determine the published data."""
        return config.content_dict() == {key: value for key, value in self.config.items()
                                         if key not in NOT_PUBLISHED}


class Published(BaseModel):
    """What a build or remine flow returns: its version (newly published, or the latest one found up to date), what
    the version holds in brief, what embedding did and the stages' timings; the CLI adds the evaluation it chained."""

    version_dir: str
    published: bool
    version: str
    counts: Counts
    short_queries: int
    reasons: dict[str, int]
    embed: Embed
    timings: dict[str, float]
    evaluation: Evaluated | None = None

    @classmethod
    def of(cls, version_dir: object, manifest: Manifest, published: bool, timings: dict[str, float],
           embed: Embed | None = None) -> Published:
        """`version_dir`: the version's folder or object-store location; `embed`: what this run embedded (default:
        what the manifest's run did)."""
        return cls(version_dir=str(version_dir), published=published, version=str(version_dir).rsplit("/", 1)[-1],
                   counts=manifest.counts, short_queries=manifest.short_queries.count, reasons=manifest.reasons,
                   embed=embed or manifest.embed, timings=timings)
