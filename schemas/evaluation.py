"""Evaluation records, typed: what `negforge evaluate` writes beside a dataset's versions
(tasks/evaluation/records.py) and what its flow returns.

The JSON keys are those records have always had (`ndcg@10_gain`, `per_query_ndcg@10`, ...: aliases here), so records
written before read unchanged; unknown keys are kept (`extra="allow"`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Metrics = dict[str, float]  # nDCG@10, MRR@10, Recall@100 (tasks/evaluation/metrics.py METRICS)
PerQuery = dict[str, float]  # nDCG@10 per query id


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def as_json(self) -> dict[str, Any]:
        """The record as its file holds it: JSON types, the file's key names, only the fields given."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Interval(_Record):
    """A paired bootstrap interval of a mean difference (tasks/evaluation/bootstrap.py)."""

    mean: float
    ci: list[float]
    level: float
    queries: int
    seeds: int
    samples: int

    def text(self) -> str:
        """e.g. `+0.0312 (95% interval +0.0101 to +0.0530, 300 queries x 1 seeds)`."""
        return (f"{self.mean:+.4f} ({int(self.level * 100)}% interval {self.ci[0]:+.4f} to {self.ci[1]:+.4f}, "
                f"{self.queries} queries x {self.seeds} seeds)")


class EvaluatedSplit(_Record):
    """The evaluation split (schemas.stages.EvaluationSplit) with `queries`: how many queries were measured."""

    folder: str
    split: str
    corpus: str
    queries: int
    qrels: str
    doc_template: str
    positive_threshold: float
    max_queries: int | None = None
    key: str
    files: list[dict[str, str]] = []


class EvaluatedModel(_Record):
    """The base model (schemas.stages.Encoder) with its fingerprint."""

    name: str
    path: str
    weights_sha256: str
    query_prompt: str
    corpus_prompt: str
    max_seq_length: int | None = None
    device: str | None = None
    fingerprint: str


class BaseMeasurement(_Record):
    """The base model's metrics on a split, cached per (model fingerprint, split key); `cached` is not written: it
    says whether this run read it."""

    model: EvaluatedModel
    split_key: str
    metrics: Metrics
    per_query: PerQuery
    seconds: float
    cached: bool = Field(False, exclude=True)


class FineTuning(_Record):
    """What one fine-tuning run did (tasks/evaluation/fine_tune.py)."""

    steps: int
    rows: int
    train_loss: float
    seconds: float


class SeedRun(_Record):
    """One fine-tuning run (one seed) and its measurement."""

    seed: int
    metrics: Metrics
    per_query: PerQuery = Field(alias="per_query_ndcg@10")
    training: FineTuning
    eval_seconds: float
    saved_to: str | None = None


class BaseRun(_Record):
    per_query: PerQuery = Field(alias="per_query_ndcg@10")
    seconds: float
    cached: bool


class TrainingRows(_Record):
    rows: int
    rows_left_out: int
    negatives_per_row: int


class MetricsPair(_Record):
    base: Metrics
    fine_tuned: Metrics  # the mean over seeds


class EvaluationRecord(_Record):
    """One training set fine-tuned with every seed and measured against its base model:
    `<registry>/<dataset>/evaluations/<version>-<key>.json`."""

    dataset: str
    version: str
    data_hash: str | None = None
    key: str
    created_at: str
    evaluation: EvaluatedSplit
    model: EvaluatedModel
    settings: dict[str, Any]  # the training settings (schemas.config.EvaluateConfig.training_settings)
    seeds: list[int]
    training: TrainingRows
    metrics: MetricsPair
    gain: Interval = Field(alias="ndcg@10_gain")
    base: BaseRun
    fine_tuned: list[SeedRun]
    timings: dict[str, float]
    charts: list[str] = []


class Baseline(_Record):
    """How a baseline training set was made: re-mined from a version with these mining options."""

    remined_from: str
    mine: dict[str, Any]
    record: EvaluationRecord


class Side(_Record):
    """One side of a comparison: a version (or a baseline) and its fine-tuned metrics."""

    name: str
    data_hash: str | None = None
    metrics: Metrics
    baseline: Baseline | None = None


class Comparison(_Record):
    """Two training sets trained with the same seeds, B against A:
    `<registry>/<dataset>/evaluations/compare-<A>-vs-<B>-<key>.json`."""

    dataset: str
    key: str
    seeds: list[int]
    created_at: str
    evaluation: EvaluatedSplit
    a: Side
    b: Side
    base: Metrics
    difference: Interval = Field(alias="ndcg@10_difference")
    per_query_difference: PerQuery
    charts: list[str] = []


class Evaluated(BaseModel):
    """What the evaluation flow returns: the (first) version's record, the comparison when one was asked for, and
    the file of the last of them."""

    record: EvaluationRecord
    comparison: Comparison | None = None
    path: str
