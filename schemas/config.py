"""The build configuration: one pydantic tree, read from YAML, overridable with `--set`, and the flow's parameter.

Every field has a default and a description, so the Prefect UI draws a documented form from it. Everything outside
`runtime` may change what is published; `runtime` never does (the content hash excludes it), nor do `schedule` and
`evaluate`.
"""

from __future__ import annotations

import copy
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from negforge.schemas.console_text import printable, quoted, shortened

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FileFormat = Literal["auto", "jsonl", "parquet", "csv", "tsv"]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field path."""


class _Section(BaseModel):
    # allow_inf_nan=False: no float setting takes NaN or infinity (`.nan`, `.inf` in YAML). Every comparison with NaN
    # is false, so a NaN margin would silently switch its filter off; and neither is valid JSON in the manifest.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False)


class InputConfig(_Section):
    corpus: str | None = Field(None, description="Corpus file (BEIR corpus.jsonl: _id, title, text); path or fsspec URL.")
    queries: str | None = Field(None, description="Queries file (BEIR queries.jsonl: _id, text); path or fsspec URL.")
    qrels: str | None = Field(None, description="Qrels file (tsv: query-id, corpus-id, score) naming the positives.")
    pairs: list[str] | None = Field(
        None, description="Files of (anchor, positive) pairs, instead of queries+qrels; paths or fsspec URLs."
    )
    format: FileFormat = Field("auto", description="File format of all inputs; auto picks it from the file suffix.")
    doc_id_field: str = Field("_id", description="Corpus column holding the document id.")
    doc_title_field: str | None = Field("title", description="Corpus column holding the title (null: no title).")
    doc_text_field: str = Field("text", description="Corpus column holding the document text.")
    query_id_field: str = Field("_id", description="Queries column holding the query id.")
    query_text_field: str = Field("text", description="Queries column holding the query text.")
    anchor_field: str = Field("anchor", description="Pairs column holding the anchor (query) text.")
    positive_field: str = Field("positive", description="Pairs column holding the positive document text.")
    doc_template: str = Field(
        "{title} {text}", description="How a document's embedded text is built from its title and text (stripped)."
    )
    positive_threshold: float = Field(0.0, description="A qrel is a positive when its score is above this value.")
    max_reject_fraction: float = Field(
        0.01, ge=0, le=1, description="Stop before embedding when more than this fraction of input rows is rejected."
    )

    @field_validator("pairs", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_input_layout(self) -> InputConfig:
        if self.pairs is None and not (self.corpus and self.queries and self.qrels):
            raise ValueError("give either input.pairs, or input.corpus, input.queries and input.qrels")
        if self.pairs is not None and (self.queries or self.qrels):
            raise ValueError("input.pairs cannot be combined with input.queries/input.qrels")
        return self


class EmbedConfig(_Section):
    model: str = Field(
        DEFAULT_MODEL,
        description="sentence-transformers model name or folder (a folder starting with ./ or ../ is relative to the "
                    "YAML); the default is the offline copy shipped on PyPI.",
    )
    batch_size: int = Field(32, gt=0, description="Texts per encode batch.")
    max_seq_length: int | None = Field(None, gt=0, description="Truncate texts to this many tokens (null: model's).")
    query_prompt: str | None = Field(None, description="Raw prompt prepended to queries (wins over query_prompt_name).")
    query_prompt_name: str | None = Field(None, description="Name of a prompt in the model's prompts for queries.")
    corpus_prompt: str | None = Field(None, description="Raw prompt prepended to documents.")
    corpus_prompt_name: str | None = Field(None, description="Name of a prompt in the model's prompts for documents.")


class SearchConfig(_Section):
    depth: int | None = Field(
        None, gt=0, description="Candidates retrieved per query (null: range_max + the most positives of any query)."
    )
    index: Literal["flat", "ivf", "hnsw"] = Field(
        "flat", description="flat: exact search (the reference for correctness); ivf or hnsw: FAISS approximate "
                            "indexes (8-bit vectors) that propose candidates, scored exactly, measured every run.")
    nlist: int | None = Field(None, gt=0, description="ivf: inverted lists (null: about sqrt(documents)).")
    nprobe: int | None = Field(None, gt=0, description="ivf: lists searched per query (null: tuned to target_recall).")
    hnsw_m: int = Field(32, gt=1, description="hnsw: graph neighbours per node.")
    ef_search: int | None = Field(None, gt=0, description="hnsw: search breadth (null: tuned to target_recall).")
    target_recall: float | None = Field(
        0.98, gt=0, le=1, description="ivf/hnsw: the recall probe's target for the candidate window; nprobe or "
                                      "ef_search grows until it is met (null: use them as set).")
    probe_queries: int = Field(200, gt=0, description="ivf/hnsw: queries (seeded sample) searched exactly to measure "
                                                      "the index every run.")
    seed: int = Field(0, description="Seed of the index's training sample, its k-means and the probe's queries.")

    @model_validator(mode="after")
    def _tunable(self) -> SearchConfig:
        knob = {"ivf": self.nprobe, "hnsw": self.ef_search}.get(self.index, 0)
        if knob is None and self.target_recall is None:
            raise ValueError(f"search.index={self.index} needs search.target_recall or a fixed "
                             f"search.{'nprobe' if self.index == 'ivf' else 'ef_search'}")
        return self


class MineConfig(_Section):
    num_negatives: int = Field(5, ge=1, description="Negatives per query.")
    range_min: int = Field(0, ge=0, description="Skip this many of the best surviving candidates.")
    range_max: int | None = Field(
        None, gt=0, description="Consider only this many best surviving candidates (null: derived as in the reference)."
    )
    max_score: float | None = Field(None, description="Drop candidates scoring above this.")
    min_score: float | None = Field(None, description="Drop candidates scoring below this.")
    absolute_margin: float | None = Field(
        None, ge=0, description="Keep n only if s(q,n) <= s_p - margin (s_p: lowest positive)."
    )
    relative_margin: float | None = Field(
        0.05, ge=0, lt=1,
        description="Keep n only if s(q,n) <= s_p - |s_p| * margin (0.05: at most 95% of the positive score).",
    )
    sampling_strategy: Literal["top", "random", "softmax", "simans"] = Field(
        "top", description="top: hardest survivors; random: uniform; softmax: p ~ exp(s/t); simans: p ~ "
                           "exp(-a (s - s_p - b)^2)."
    )
    softmax_temperature: float = Field(
        0.05, gt=0, description="softmax sampling temperature t on cosine scores (0.05: strongly prefers hard ones)."
    )
    simans_a: float = Field(20.0, gt=0, description="SimANS sharpness a on cosine scores.")
    simans_b: float = Field(-0.1, description="SimANS centre b: preferred negatives score about s_p + b.")
    max_uses_per_negative: int | None = Field(
        None, ge=1, description="A document is a negative of at most this many queries (null: no cap)."
    )
    max_positive_similarity: float | None = Field(
        0.8, description="Drop a candidate whose cosine to any positive of its query is at least this (paraphrases; "
                         "0.8 chosen by bench/false_negatives.py)."
    )
    max_topic_centrality: float | None = Field(
        None, description="Drop a candidate at least this central to its query's topic: its cosine to the normalized "
                          "mean of the query's 10 best-ranked candidates, less their mean cosine to it (null: off).",
    )
    topic_quantile: float | None = Field(
        None, gt=0, lt=1,
        description="Set max_topic_centrality from the data: this quantile of the known positives' centralities to "
                    "their own queries' topics (0.1: drop a candidate at least as central to its query's topic as 90% "
                    "of known positives are to theirs; null: off).",
    )
    max_depth: int | Literal["auto"] | None = Field(
        "auto", description="Search queries left short of negatives deeper, doubling the search depth up to this "
                            "bound (auto: DEPTH_MULTIPLE x the search depth, at most the corpus size; null: off)."
    )
    strategy: Literal["fixed", "auto"] = Field(
        "auto", description="fixed: mine with these options as set; auto: calibrate on this dataset first (hide each "
                            "positive of multi-positive queries in turn, try the declared grid, leave the declared "
                            "default only for a setting shown to keep fewer hidden positives at full coverage and "
                            "hardness) and mine with its choice; too few multi-positive queries: the default.",
    )
    calibration_folds: int = Field(
        3, ge=2, description="auto: at most this many folds; fold f hides the f-th positive (in a seeded order) of "
                             "each query with several, so each positive of a query with two is hidden once.",
    )
    promote_suspected: bool = Field(
        False, description="Add suspected positives (ranked at or above the lowest positive by every signal that is "
                           "on) as extra positives (RLHN's relabel), instead of only listing them.",
    )
    max_promoted_per_positive: int | None = Field(
        3, ge=1, description="promote_suspected: promote at most this many suspected positives per known positive of "
                             "the query, the best-ranked; the others are dropped as suspected_not_promoted, neither "
                             "positive nor negative (null: no bound).",
    )
    seed: int = Field(42, description="Seed of the per-query random streams (and of the calibration folds).")
    include_positives: bool = Field(False, description="Let positives be candidates (for reranking evaluation sets).")

    @field_validator("max_depth", mode="before")
    @classmethod
    def _depth_is_a_number_or_auto(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError(f"must be an integer of at least 1, auto, or null (got {value!r})")
        return value

    @model_validator(mode="after")
    def _one_topic_bound(self) -> MineConfig:
        if self.max_topic_centrality is not None and self.topic_quantile is not None:
            raise ValueError("set max_topic_centrality (a cosine) or topic_quantile (derived from the positives), "
                             "not both")
        return self

    @model_validator(mode="after")
    def _score_bounds_ordered(self) -> MineConfig:
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(f"min_score ({self.min_score}) must not be above max_score ({self.max_score})")
        return self

    @model_validator(mode="after")
    def _window_fits(self) -> MineConfig:
        if self.range_max is not None:
            if self.range_min >= self.range_max:
                raise ValueError(f"range_min ({self.range_min}) must be smaller than range_max ({self.range_max})")
            if self.num_negatives > self.range_max - self.range_min:
                raise ValueError(
                    f"num_negatives ({self.num_negatives}) does not fit the window range_min..range_max "
                    f"({self.range_min}..{self.range_max})"
                )
        return self

    def score_filters(self, score: Any, lowest_positive: Any, tolerance: float = 0.0) -> dict[str, Any]:
        """The score filters that are set, in mining order: {reason: true where a candidate breaks it}.

        The margins anchor on the query's lowest positive score; the quality gate passes its `tolerance`. Works on
        numpy arrays (float32 stays float32) and polars expressions alike, so mining and the gate apply one rule.
        """
        rules = {}
        if self.absolute_margin is not None:
            rules["absolute_margin"] = score + self.absolute_margin > lowest_positive + tolerance
        if self.relative_margin is not None:
            rules["relative_margin"] = score > lowest_positive - abs(lowest_positive) * self.relative_margin + tolerance
        if self.max_score is not None:
            rules["max_score"] = score > self.max_score + tolerance
        if self.min_score is not None:
            rules["min_score"] = score < self.min_score - tolerance
        return rules

    def effective_range_max(self, max_positives: int) -> int:
        """The window size, derived like sentence-transformers' mine_hard_negatives when range_max is unset: ten
        times the negatives when a filter removes candidates (its margins and max_score, and negforge's bounds on
        the similarity to the positives and to the query's topic), else the negatives alone."""
        if self.range_max is not None:
            return self.range_max
        filtered = any(bound is not None for bound in (
            self.absolute_margin, self.relative_margin, self.max_score, self.max_positive_similarity,
            self.max_topic_centrality, self.topic_quantile))
        return self.range_min + self.num_negatives * (10 if filtered else 1) + max_positives


# mine.max_depth: auto searches short queries at most this many times as deep as the search depth (4 doublings).
DEPTH_MULTIPLE = 16


class LexicalConfig(_Section):
    ratio: float | None = Field(
        None, gt=0, description="Drop a candidate whose BM25 score is above ratio x the query's lowest positive BM25 "
                                "score (null: off).",
    )
    fusion: Literal["rrf"] | None = Field(
        None, description="rrf: drop a candidate whose reciprocal-rank fusion of its dense and BM25 ranks (among the "
                          "query's candidates and positives) is ahead of the lowest positive's (null: off).",
    )
    rrf_k: int = Field(60, ge=1, description="rrf: the constant k of 1 / (k + rank).")
    k1: float = Field(1.5, ge=0, description="BM25 term-frequency saturation.")
    b: float = Field(0.75, ge=0, le=1, description="BM25 length normalization.")
    stopwords: Literal["en"] | None = Field("en", description="Stopwords removed before BM25 (en: English; null: none).")

    def rules_on(self) -> bool:
        """Whether a lexical rule removes candidates."""
        return self.ratio is not None or self.fusion is not None

    def index_settings(self) -> dict[str, Any]:
        """The settings that determine BM25 scores (the rules do not)."""
        return self.model_dump(include={"k1", "b", "stopwords"})


class DedupConfig(_Section):
    eps: float | None = Field(
        0.02, ge=0, le=0.1,
        description="Near-duplicates have cosine >= 1 - eps (SemDeDup; 0.01 strict, 0.07 loose); null turns the "
                    "near-duplicate rules off.",
    )
    corpus: bool = Field(
        False,
        description="Drop near-duplicate documents from the corpus before searching: documents are visited "
                    "positives first, then in corpus order, and one within eps of a kept document is dropped "
                    "(positives never are); dropped ids and the kept document of their group are recorded.",
    )

    @model_validator(mode="after")
    def _corpus_needs_eps(self) -> DedupConfig:
        if self.corpus and self.eps is None:
            raise ValueError("corpus deduplication needs eps")
        return self


class RescoreConfig(_Section):
    model: str | None = Field(
        None, description="A second model that rescores the candidates and positives (name or folder, relative to "
                          "the YAML when it starts with ./ or ../; null: no rescoring).",
    )
    kind: Literal["guide", "cross-encoder"] = Field(
        "guide", description="guide: a sentence-transformers bi-encoder (GISTEmbed rule); cross-encoder: a "
                             "sentence-transformers CrossEncoder (RocketQA rule).",
    )
    margin_strategy: Literal["absolute", "relative"] = Field(
        "absolute", description="guide: drop n if g(q,n) > g(q,p) - margin (absolute) or > g(q,p) - |g(q,p)| * "
                                "margin (relative); g(q,p) is the lowest positive under the guide.",
    )
    margin: float = Field(0.0, ge=0, description="guide: the margin of the GISTEmbed rule (0: above the positive).")
    threshold: float | None = Field(
        None, description="cross-encoder: drop n if its score is above this, on the model's own output scale "
                          "(RocketQA used 0.1 on a probability scale); required for cross-encoder.",
    )
    batch_size: int = Field(32, gt=0, description="Texts or pairs per model batch.")
    max_length: int | None = Field(None, gt=0, description="Truncate inputs to this many tokens (null: model's).")
    query_prompt: str | None = Field(None, description="guide: raw prompt prepended to queries.")
    corpus_prompt: str | None = Field(None, description="guide: raw prompt prepended to documents.")

    @model_validator(mode="after")
    def _threshold_for_cross_encoder(self) -> RescoreConfig:
        if self.model and self.kind == "cross-encoder" and self.threshold is None:
            raise ValueError("a cross-encoder rescorer needs a threshold on its own output scale")
        return self

    def bound(self, lowest_positive: Any) -> Any:
        """The highest rescore a negative may have: the threshold (cross-encoder), or the lowest positive's rescore
        less the margin (guide). Works on numbers, numpy arrays and polars expressions alike, so mining and the
        quality gate apply one rule."""
        if self.kind == "cross-encoder":
            return self.threshold
        return lowest_positive - self.margin * (abs(lowest_positive) if self.margin_strategy == "relative" else 1)

    def scoring_settings(self) -> dict[str, Any]:
        """The settings that determine the rescorer's scores (the rule's margin and threshold do not)."""
        return self.model_dump(include={"model", "kind", "max_length", "query_prompt", "corpus_prompt"})


class OutputConfig(_Section):
    format: Literal["n-tuple", "triplet", "labeled-pair", "labeled-list"] = Field(
        "n-tuple", description="Training-set layout, as in sentence-transformers' mine_hard_negatives."
    )
    scores: bool = Field(False, description="Add the similarity scores (and the rescorer's, when set) to the training "
                                            "set, for distillation losses.")
    exports: list[Literal["flagembedding", "tevatron"]] = Field(
        default_factory=list, description="Extra formats written beside the dataset (flagembedding: hn_mine jsonl; "
                                          "tevatron: query_id, query, positive_passages, negative_passages jsonl)."
    )
    rows_per_file: int = Field(100_000, gt=0, description="Training rows per parquet file.")
    keep_candidates: bool = Field(
        False, description="Add each query's dropped candidates, their scores and reasons to the ids config."
    )


class ValidateConfig(_Section):
    eval_qrels: str | None = Field(
        None, description="Qrels of an evaluation split (e.g. test.tsv): its queries must not be training anchors."
    )
    eval_queries: str | None = Field(None, description="Queries file of the evaluation split (null: input.queries).")
    drop_eval_queries: bool = Field(
        False, description="Leave out training queries whose text equals an evaluation query (else the gate fails)."
    )
    min_rows: int = Field(1, ge=0, description="Fewest training rows a version may have.")
    min_coverage: float = Field(
        0.9, ge=0, le=1, description="Least fraction of used queries that must get all their negatives (with adaptive "
                                     "depth, short queries are searched deeper first)."
    )
    score_tolerance: float = Field(1e-5, ge=0, description="Slack on the [-1, 1] cosine range and on the filters.")
    max_row_change: float = Field(
        0.5, ge=0, description="Drift: largest relative change of the row count from the previous version."
    )
    max_score_shift: float = Field(
        0.05, ge=0, description="Drift: largest change of the mean positive or negative score from the previous version."
    )
    drift_fails: bool = Field(False, description="Fail the build on drift instead of warning in the report.")


class AuditConfig(_Section):
    qrels: str | None = Field(
        None, description="Held-out relevance judgements (qrels) for the false-negative audit; never used to mine."
    )


class PublishConfig(_Section):
    registry: str = Field("./registry", description="Registry holding <dataset>/vNNNN versions: a folder, or an "
                                                    "object-store URL (s3://bucket/prefix; see the storage section).")
    dataset: str = Field("negforge-dataset", description="Dataset name inside the registry.")

    @field_validator("registry")
    @classmethod
    def _plain_local_registry(cls, value: str) -> str:
        return value.removeprefix("file://")

    @field_validator("dataset")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (at most 100), starting with a letter or digit")
        return value


class RuntimeConfig(_Section):
    dask_address: str | None = Field(None, description="Run tasks on this Dask scheduler (null: start a local cluster).")
    n_workers: int | None = Field(None, gt=0, description="Local cluster worker processes (null: one per CPU core).")
    threads_per_worker: int = Field(1, gt=0, description="Threads per local worker (torch threads follow it).")
    shard_size: int = Field(65_536, gt=0, description="Unique texts per ingest text file (a storage granularity only: "
                                                      "task sizes follow memory_budget_mb and the workers).")
    memory_budget_mb: int | None = Field(
        None, gt=0, description="Memory one task may use, in MiB; work is cut into tasks no bigger than this (null: "
                                "derived from the machine: the smaller of 1 GiB and half the available memory per worker).")
    tasks_per_worker: int = Field(2, gt=0, description="Tasks per worker per stage, when the memory budget allows "
                                                      "fewer, larger ones (more: finer progress and retries).")
    workdir: str = Field("./.negforge", description="Run workspaces and the content-addressed embedding store: a "
                                                    "folder, or an object-store URL (s3://bucket/work) that the flow "
                                                    "and each worker mirror locally.")
    cache_dir: str | None = Field(None, description="Local cache of what must be opened as local files (a version of "
                                                    "an object-store registry, the mirror of an object-store workdir; "
                                                    "null: a temporary folder).")
    device: str | None = Field(None, description="torch device for the model (null: sentence-transformers picks).")


class ScheduleConfig(_Section):
    cron: str | None = Field(None, description="When the dataset's deployment runs (cron; null: on demand only).")
    timezone: str = Field("UTC", description="Time zone of the cron schedule (IANA name, e.g. Europe/Berlin).")
    active: bool = Field(True, description="Whether the schedule is on when the deployment is registered.")

    @model_validator(mode="after")
    def _valid_schedule(self) -> ScheduleConfig:
        from prefect.client.schemas.schedules import CronSchedule

        if self.cron is not None:
            CronSchedule(cron=self.cron, timezone=self.timezone)  # Prefect's own check of both fields
        return self


class EvaluateConfig(_Section):
    """Does a version train a better model? Fine-tune a base model on it and measure both on an evaluation split."""

    eval: str | None = Field(
        None, description="BEIR folder of the evaluation data (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); set "
                          "here, every newly published version is evaluated (null: only `negforge evaluate` does).")
    split: str = Field("test", description="The qrels split evaluated (qrels/<split>.tsv).")
    max_queries: int | None = Field(
        None, gt=0, description="Evaluate only the split's first queries, by id (null: all; for quick checks).")
    model: str | None = Field(
        None, description="Base model to fine-tune (name or folder; null: the build's embed.model, with its prompts).")
    loss: Literal["MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"] = Field(
        "MultipleNegativesRankingLoss", description="sentence-transformers loss over the anchor, the positive and "
                                                    "every hard negative of a row (in-batch negatives too).")
    steps: int | None = Field(None, gt=0, description="Training steps (null: one epoch over the version's rows).")
    batch_size: int = Field(32, gt=0, description="Training rows per step.")
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (linear warm-up and decay).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of the steps spent warming up.")
    max_length: int = Field(128, gt=0, description="Tokens per text while training (evaluation uses the build's "
                                                   "embed.max_seq_length, else the model's).")
    seeds: int = Field(1, ge=1, description="Fine-tuning runs with seeds seed, seed+1, ...; intervals take all.")
    seed: int = Field(0, description="The first training seed (data order, initialization of new layers).")
    eval_batch_size: int = Field(64, gt=0, description="Texts per encode batch while evaluating.")

    def training_settings(self) -> dict[str, Any]:
        """What changes a fine-tuned model (beside the base model and the data): part of an evaluation's key."""
        return self.model_dump(exclude={"eval", "split", "max_queries", "model", "eval_batch_size"})


# Sections that never change what is published: the data hash and the no-op check leave them out.
NOT_PUBLISHED = {"runtime", "schedule", "evaluate", "storage"}
NOT_RECORDED = {"storage"}  # credentials may be there: never in a manifest or a deployment's parameters


class BuildConfig(_Section):
    input: InputConfig = Field(description="Where the queries, corpus and positives come from.")
    embed: EmbedConfig = Field(default_factory=EmbedConfig, description="The embedding model and prompts.")
    search: SearchConfig = Field(default_factory=SearchConfig, description="Nearest-neighbour search.")
    mine: MineConfig = Field(default_factory=MineConfig, description="Which candidates become negatives.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Near-duplicate negatives and positives.")
    rescore: RescoreConfig = Field(
        default_factory=RescoreConfig, description="Optional second model that removes candidates it finds relevant."
    )
    lexical: LexicalConfig = Field(
        default_factory=LexicalConfig, description="A lexical second opinion (BM25) that removes candidates it finds "
                                                   "relevant; no model needed.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Layout of the published training set.")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="False-negative audit of the negatives.")
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate",
                                      description="The quality gate every version must pass.")
    publish: PublishConfig = Field(default_factory=PublishConfig, description="Registry and dataset name.")
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="Where and how the work runs; never changes what is published."
    )
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="When the dataset's deployment runs; never changes what is published."
    )
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig, description="Fine-tune and evaluate a model on each newly published version "
                                                    "(with evaluate.eval set); never changes what is published.")
    storage: dict[str, Any] = Field(
        default_factory=dict, description="fsspec storage_options for an object-store publish.registry (endpoint_url, "
                                          "key, secret, ...; the environment's AWS_* variables work too); never "
                                          "written into a manifest.")

    def window_and_depth(self, max_positives: int) -> tuple[int, int]:
        """The mining window (range_max, derived as the reference does when unset) and the search depth: search.depth,
        else range_max + the most positives of any query (positives are removed from the candidates first)."""
        range_max = self.mine.effective_range_max(max_positives)
        return range_max, self.search.depth or range_max + max_positives

    def depth_bound(self, max_positives: int, documents: int) -> int | None:
        """How deep short queries are searched (mine.max_depth; auto: DEPTH_MULTIPLE x the search depth, at most
        `documents`, the corpus size); None when adaptive depth is off."""
        depth = self.window_and_depth(max_positives)[1]
        bound = self.mine.max_depth
        if bound == "auto":
            bound = min(documents, DEPTH_MULTIPLE * depth)
        return bound if bound is not None and bound > depth else None

    def lexical_scores(self) -> bool:
        """Whether candidates get BM25 scores: a lexical rule is set, or calibration may choose one."""
        return self.lexical.rules_on() or self.mine.strategy == "auto"

    def content_dict(self) -> dict[str, Any]:
        """The settings that determine the published data (everything but NOT_PUBLISHED)."""
        return self.model_dump(mode="json", by_alias=True, exclude=NOT_PUBLISHED)


class StorageConfig(BaseModel):
    """Only where a build keeps things (registry, workdir, the store's options), for commands such as `gc` that read
    nothing else."""

    model_config = ConfigDict(extra="ignore")
    publish: PublishConfig = Field(default_factory=PublishConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    storage: dict[str, Any] = Field(default_factory=dict)


Config = TypeVar("Config", bound=BaseModel)

_PATH_FIELDS = {("input", "corpus"), ("input", "queries"), ("input", "qrels"), ("publish", "registry"),
                ("runtime", "workdir"), ("validate", "eval_qrels"), ("validate", "eval_queries"), ("audit", "qrels"),
                ("evaluate", "eval")}


# A model field names a hub model (org/name) or a folder: only ./, ../ or an absolute path make it a folder path.
_MODEL_FIELDS = {("embed", "model"), ("rescore", "model"), ("evaluate", "model")}


def _is_model_folder(value: str) -> bool:
    return value.startswith(("./", "../")) or Path(value).is_absolute()


def map_paths(raw: dict[str, Any], convert: Callable[[str], str]) -> dict[str, Any]:
    """Apply `convert` to every path of a raw config mapping (the path fields, each of input.pairs, and the model
    fields that name a folder), in place."""
    sections = {name: value for name, value in raw.items() if isinstance(value, dict)}  # validation names the rest
    for section, field in _PATH_FIELDS | _MODEL_FIELDS:
        value = sections.get(section, {}).get(field)
        if isinstance(value, str) and ((section, field) in _PATH_FIELDS or _is_model_folder(value)):
            raw[section][field] = convert(value)
    pairs = sections.get("input", {}).get("pairs")
    if isinstance(pairs, str):
        pairs = [pairs]
    if isinstance(pairs, list):
        raw["input"]["pairs"] = [convert(p) if isinstance(p, str) else p for p in pairs]
    return raw


def _is_local(value: str) -> bool:
    return "://" not in value and not Path(value).is_absolute()


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the YAML's relative local paths relative to the YAML file, not the working directory."""
    map_paths(raw, lambda value: str((base / value).resolve()) if _is_local(value) else value)


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (`*name`): a config is a handful of values, and a few lines of aliases can expand to
    billions (billion laughs), which validation or an error message would then walk or print."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} refused: configs take no YAML "
                                                          f"aliases (write the value out)", event.start_mark)
        return super().compose_node(parent, index)


def _yaml_value(text: str, source: str) -> Any:
    """`text` parsed as YAML (no aliases); ConfigError naming `source` and the line when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = shortened(" ".join(part for part in (error.problem, error.context) if part), 300)
        raise ConfigError(f"{source}: not valid YAML: {where}{problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    except (yaml.YAMLError, ValueError) as error:  # ValueError: a bad date, an integer of over 4300 digits
        raise ConfigError(f"{source}: not valid YAML: {shortened(str(error))}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.field=value`; the value is parsed as YAML, so `null`, numbers and lists work."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {quoted(text)}: expected section.field=value")
    return key.strip().split("."), _yaml_value(value, f"--set {quoted(text)}") if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of the raw config mapping with each `a.b=value` deep-set (a section given as null is an empty one).
    The mapping given is left as it was: callers compare it with the result (what a remine may not change)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"--set {quoted(text)}: {shortened(part)} is not a section (it is "
                                  f"{quoted(node[part])})")
            node = node[part]
        node[path[-1]] = value
    return raw


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted field path."""
    lines = []
    for item in error.errors():
        path = shortened(".".join(str(p) for p in item["loc"])) or "(top level)"
        message = "unknown field" if item["type"] == "extra_forbidden" else shortened(item["msg"], 300)
        got = f" (got {quoted(item['input'])})" if item["type"] != "missing" and not isinstance(item["input"],
                                                                                              dict) else ""
        lines.append(f"{printable(source)}: {path}: {message}{got}")
    return "\n".join(lines)


def validate_config(raw: dict[str, Any], source: str = "config", model: type[Config] = BuildConfig) -> Config:
    """Validate a raw mapping as `model`, raising ConfigError with field paths."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> BuildConfig:
    """Read a YAML build config, resolve its paths against its folder, apply `--set` overrides, validate."""
    return validate_config(read_config(path, overrides), str(path))


MAX_CONFIG_BYTES = 1 << 20  # configs are a few KB; anything this large is not one


def read_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw mapping of a YAML build config, its paths resolved against its folder, `--set` overrides applied."""
    path = Path(path)
    raw = _yaml_value(_config_text(path), printable(str(path))) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{printable(str(path))}: expected a mapping of sections at the top level")
    _resolve_paths(raw, path.parent.resolve())
    return apply_overrides(raw, overrides or [])


def _config_text(path: Path) -> str:
    """The text of a config file: a regular file of at most MAX_CONFIG_BYTES of UTF-8. A device (/dev/zero), FIFO,
    socket or folder is refused before it is opened, so nothing reads without end or blocks."""
    shown = printable(str(path))  # a path is shown whole: the user needs it to act
    try:
        status = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {shown}") from None
    if not stat.S_ISREG(status.st_mode):
        kind = "a folder" if stat.S_ISDIR(status.st_mode) else "a FIFO" if stat.S_ISFIFO(status.st_mode) else \
            "a device or socket"
        raise ConfigError(f"{shown}: not a regular file ({kind}); give a YAML config file")
    # non-blocking and bounded: the path may have been replaced by a FIFO or a device since stat
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{shown}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{shown}: not UTF-8 text (byte {error.start})") from None
