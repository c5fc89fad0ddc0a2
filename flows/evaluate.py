"""The `evaluate-training-set` flow: does a version train a better model?

It fine-tunes a base model (the version's embedding model, its prompts and device) on the version's rows, measures
the base and the fine-tuned model on a BEIR evaluation split with InformationRetrievalEvaluator, and records the
result beside the version (tasks/evaluation/records.py), with a paired bootstrap interval of the nDCG@10 gain over
the evaluation queries (and the seeds). With `compare`, a second training set is trained with the same seeds and the
two are compared the same way: another version, or a baseline (`plain` top-k or `random` negatives) re-mined from
the first version's stored candidates into a scratch registry, never published and forgotten afterwards.

Everything that can be refused (the split, the rows, leakage, the base model) is checked before any training, and
nothing is written to evaluations/ before then.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from negforge.flows.orchestration.artifact_keys import slug
from negforge.flows.orchestration.console_lines import escape_console_lines
from negforge.flows.orchestration.task_options import dataset_tags, negforge_task, untagged_task_runs
from negforge.flows.stages.run_report import image_markdown
from negforge.schemas.config import BuildConfig, EvaluateConfig
from negforge.schemas.evaluation import (
    Baseline,
    BaseMeasurement,
    BaseRun,
    Comparison,
    Evaluated,
    EvaluatedModel,
    EvaluatedSplit,
    EvaluationRecord,
    MetricsPair,
    SeedRun,
    Side,
    TrainingRows,
)
from negforge.schemas.manifest import Manifest
from negforge.schemas.stages import Encoder, EvaluationSplit, Retrieval
from negforge.tasks.evaluation.base_model import base_encoder, load
from negforge.tasks.evaluation.bootstrap import paired_interval
from negforge.tasks.evaluation.charts import comparison_chart, record_chart, versions_chart
from negforge.tasks.evaluation.examples import refuse_leakage, training_examples
from negforge.tasks.evaluation.fine_tune import fine_tune
from negforge.tasks.evaluation.metrics import METRICS, measure
from negforge.tasks.evaluation.records import (
    FOLDER,
    base_path,
    evaluations_folder,
    read_record,
    record_key,
    record_path,
    version_records,
    write_record,
)
from negforge.tasks.evaluation.split import EvaluationError, evaluation_split
from negforge.tasks.registry.registries import on_object_store, open_registry
from negforge.tasks.registry.versions import Registry
from negforge.tasks.runtime.containment import inside

BASELINES = {
    # Mining without any of negforge's filters, in the first version's window: its hardest candidates (plain) or
    # uniform ones (random).
    "plain": {"sampling_strategy": "top"},
    "random": {"sampling_strategy": "random"},
}
UNFILTERED = {"strategy": "fixed", "relative_margin": None, "absolute_margin": None, "max_score": None,
              "min_score": None, "max_positive_similarity": None, "max_topic_centrality": None,
              "topic_quantile": None, "max_uses_per_negative": None, "max_depth": None, "promote_suspected": False,
              "range_min": 0}


@dataclass(frozen=True)
class TrainingSet:
    """A training set checked for evaluation: a version (or a baseline re-mined from one) and its rows."""

    name: str
    folder: Path
    manifest: Manifest
    rows: pl.DataFrame
    rows_left_out: int


@dataclass(frozen=True)
class Request:
    """An evaluation checked and ready to run: the split, the base model and the first training set."""

    registry: Registry
    records: Path  # the local dataset folder holding evaluations/ (an object-store registry's: a mirror)
    settings: EvaluateConfig
    evaluation: EvaluationSplit
    encoder: Encoder
    first: TrainingSet
    key: str


def _version(registry: Registry, version: str) -> tuple[str, Manifest]:
    name = registry.latest() if version == "latest" else version
    if not name:
        raise EvaluationError(f"{registry.folder}: no LATEST version to evaluate")
    return name, registry.whole_manifest(name)


def training_set(name: str, folder: Path, manifest: Manifest, evaluation: EvaluationSplit) -> TrainingSet:
    """A version's rows, refused when it has none or when its anchors are evaluation queries."""
    rows, left_out = training_examples(folder, manifest.build_config().mine.num_negatives)
    refuse_leakage(folder, rows, evaluation)
    return TrainingSet(name, folder, manifest, rows, left_out)


def check_request(registry: str, dataset: str, version: str, settings: EvaluateConfig,
                  compare: str | None = None, save_model: str | None = None) -> Request:
    """Everything an evaluation could be refused for, checked before any work: a version compared with itself, saved
    models that would overwrite files, the evaluation split and its qrels, the version (and a compared version) with
    training rows and no leaked anchors, the base model offline."""
    store = open_registry(registry, dataset)
    if not on_object_store(registry):
        inside(registry, store.dataset, FOLDER, entries=True)  # records and charts: never through a symlink
    name, manifest = _version(store, version)
    other = _version(store, compare) if compare and compare not in BASELINES else None  # (name, manifest)
    second = other[0] if other else compare
    if second == name:
        raise EvaluationError(f"compare: {dataset} {name} with itself; give another version, or a baseline re-mined "
                              f"from it ({', '.join(BASELINES)})")
    if save_model:
        _refuse_overwriting_models(Path(save_model), [name, second] if second else [name], _training_seeds(settings))
    if not settings.eval:
        raise EvaluationError("no evaluation data: give --eval BEIR_DIR (or set evaluate.eval in the config)")
    config = manifest.build_config()
    evaluation = evaluation_split(settings.eval, settings.split, settings.max_queries,
                                  config.input.doc_template, config.input.positive_threshold)
    first = training_set(name, store.local_copy(name), manifest, evaluation)
    if other:
        training_set(second, store.local_copy(second), other[1], evaluation)
    encoder = base_encoder(settings.model, config)
    load(encoder)  # loads offline, or refuses now
    return Request(store, store.side_folder(FOLDER), settings, evaluation, encoder, first,
                   record_key(evaluation, encoder, settings))


def _training_seeds(settings: EvaluateConfig) -> list[int]:
    """The seeds of the fine-tuning runs: seed, seed + 1, ... (evaluate.seeds of them)."""
    return [settings.seed + i for i in range(settings.seeds)]


def _saved_model_folder(save_model: str | Path, name: str, seed: int) -> Path:
    """Where --save-model keeps the model fine-tuned on training set `name` with `seed`."""
    return Path(save_model) / f"{name}-seed{seed}"


def _refuse_overwriting_models(folder: Path, names: list[str], seeds: list[int]) -> None:
    """--save-model must be a folder (or not exist yet), and the models' folders in it new or empty: saving writes
    into them, which would mix a new model's files with an old one's."""
    if folder.exists() and not folder.is_dir():
        raise EvaluationError(f"--save-model {folder}: exists and is not a folder")
    for name in names:
        for seed in seeds:
            target = _saved_model_folder(folder, name, seed)
            if target.exists() and not (target.is_dir() and not any(target.iterdir())):
                raise EvaluationError(f"--save-model {folder}: {target.name} exists and is not empty; the model "
                                      f"fine-tuned on {name} with seed {seed} would overwrite it (give another folder)")


def _evaluated_model(encoder: Encoder) -> EvaluatedModel:
    return EvaluatedModel.model_validate(asdict(encoder) | {"fingerprint": encoder.fingerprint})


def _base(request: Request) -> BaseMeasurement:
    """The base model's metrics on the split, cached per (model fingerprint, split key)."""
    path = base_path(request.records, request.encoder, request.evaluation)
    cached = read_record(path, BaseMeasurement)
    if cached:
        return cached.model_copy(update={"cached": True})
    measured = measure(load(request.encoder), request.evaluation, request.encoder, request.settings.eval_batch_size)
    record = BaseMeasurement(model=_evaluated_model(request.encoder), split_key=request.evaluation.key,
                             metrics=measured.metrics, per_query=measured.per_query, seconds=measured.seconds)
    write_record(path, record)
    return record


def _train_and_measure(request: Request, rows: pl.DataFrame, seed: int, save_to: str | None) -> SeedRun:
    model, training = fine_tune(request.encoder, rows, request.settings, seed, save_to)
    measured: Retrieval = measure(model, request.evaluation, request.encoder, request.settings.eval_batch_size)
    return SeedRun(seed=seed, metrics=measured.metrics, per_query=measured.per_query, training=training,
                   eval_seconds=measured.seconds, saved_to=save_to)


base_task = negforge_task(_base, "evaluate base model")
train_task = negforge_task(_train_and_measure, "fine-tune and evaluate")


def _per_query(runs: list[dict[str, float]], queries: list[str]) -> np.ndarray:
    """Per-query nDCG@10 shaped (runs, queries)."""
    return np.array([[run[q] for q in queries] for run in runs])


def _mean_metrics(runs: list[SeedRun]) -> dict[str, float]:
    return {m: round(float(np.mean([run.metrics[m] for run in runs])), 6) for m in METRICS}


def _evaluate(request: Request, trained: TrainingSet, save_model: str | None) -> EvaluationRecord:
    """Fine-tune on one training set with every seed and measure; the record (not yet written)."""
    logger = get_run_logger()
    started = time.perf_counter()
    base = base_task(request)
    logger.info("base model %s: nDCG@10 %.4f (%s)", request.encoder.name, base.metrics["ndcg@10"],
                "cached" if base.cached else f"{base.seconds} s")
    seeds = _training_seeds(request.settings)
    runs: list[SeedRun] = []
    for seed in seeds:
        save_to = str(_saved_model_folder(save_model, trained.name, seed)) if save_model else None
        runs.append(train_task.with_options(task_run_name=f"fine-tune and evaluate {trained.name} seed {seed}")
                    (request, trained.rows, seed, save_to))
        logger.info("%s seed %d: %d steps in %.0f s, nDCG@10 %.4f", trained.name, seed, runs[-1].training.steps,
                    runs[-1].training.seconds, runs[-1].metrics["ndcg@10"])
    queries = sorted(base.per_query)
    gain = paired_interval(_per_query([base.per_query] * len(runs), queries),
                           _per_query([run.per_query for run in runs], queries))
    manifest = trained.manifest
    return EvaluationRecord(
        dataset=request.registry.dataset, version=trained.name, data_hash=manifest.data_hash, key=request.key,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        evaluation=EvaluatedSplit.model_validate(asdict(request.evaluation) | {"queries": len(queries)}),
        model=_evaluated_model(request.encoder), settings=request.settings.training_settings(), seeds=seeds,
        training=TrainingRows(rows=trained.rows.height, rows_left_out=trained.rows_left_out,
                              negatives_per_row=manifest.build_config().mine.num_negatives),
        metrics=MetricsPair(base=base.metrics, fine_tuned=_mean_metrics(runs)), gain=gain,
        base=BaseRun(per_query=base.per_query, seconds=base.seconds, cached=base.cached), fine_tuned=runs,
        timings={"base_seconds": 0.0 if base.cached else base.seconds,
                 "train_seconds": round(sum(r.training.seconds for r in runs), 2),
                 "eval_seconds": round(sum(r.eval_seconds for r in runs), 2),
                 "total_seconds": round(time.perf_counter() - started, 2)},
    )


def _recorded(request: Request, trained: TrainingSet, save_model: str | None) -> EvaluationRecord:
    """A version's evaluation: the stored record when this question was answered before, else a new one, written
    with its charts and shown as an artifact."""
    folder = request.records
    path = record_path(folder, trained.name, request.key)
    record = None if save_model else read_record(path, EvaluationRecord)
    if record:
        get_run_logger().info("%s was evaluated with these settings before: %s", trained.name, path)
        return record
    record = _evaluate(request, trained, save_model)
    charts = evaluations_folder(folder) / "charts"
    record.charts = [record_chart(record, charts / f"{trained.name}-{request.key}.png")]
    write_record(path, record)
    same_key = [r for r in _all_records(folder) if r.key == request.key]
    versions_chart(same_key, charts / f"versions-{request.key}.png")
    _artifact(record, [charts / record.charts[0], charts / f"versions-{request.key}.png"], path)
    return record


def _all_records(folder: Path) -> list[EvaluationRecord]:
    names = sorted({p.name.split("-")[0] for p in evaluations_folder(folder).glob("v*-*.json")})
    return [r for name in names for r in version_records(folder, name)]


def _summary_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    return "\n".join(lines + [f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |" for name, m in rows])


def _artifact(record: EvaluationRecord, charts: list[Path], path: Path) -> None:
    rows = [("base model", record.metrics.base)]
    rows += [(f"fine-tuned, seed {r.seed}", r.metrics) for r in record.fine_tuned]
    rows.append(("fine-tuned, mean", record.metrics.fine_tuned))
    evaluation, timings = record.evaluation, record.timings
    markdown = f"""# {record.dataset} {record.version}: does it train a better model?

Base model `{record.model.name}` fine-tuned on {record.training.rows} rows \
({record.training.rows_left_out} left out, short of negatives), evaluated on `{evaluation.folder}` split \
`{evaluation.split}` ({evaluation.queries} queries, whole corpus).

**nDCG@10 gain: {record.gain.text()}**

{_summary_table(rows)}

{chr(10).join(image_markdown(chart, chart.stem) for chart in charts)}

Timings: base model {timings['base_seconds']} s{' (cached)' if record.base.cached else ''}, training \
{timings['train_seconds']} s, evaluation {timings['eval_seconds']} s. Record: `{path}`.
"""
    create_markdown_artifact(markdown, key=f"{slug(record.dataset)}-evaluation",
                             description=f"negforge evaluation of {record.dataset} {record.version}")


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _baseline(request: Request, baseline: str, scratch: Path) -> TrainingSet:
    """Re-mine the first version's stored candidates with a baseline's mining into a scratch registry (a dataset
    `<dataset>-<baseline>` there, so its run report never takes the real dataset's artifact keys)."""
    from negforge.flows.remine import remine_training_set

    first = request.first
    dataset = f"{request.registry.dataset}-{baseline}"
    shutil.copytree(first.folder, scratch / dataset / first.name, copy_function=_link_or_copy)
    window = {"range_max": first.manifest.search.range_max}  # A's window, derived or set: random draws from it
    config = first.manifest.build_config({
        "mine": UNFILTERED | window | BASELINES[baseline],
        "dedup": {} if first.manifest.build_config().dedup.corpus else {"eps": None},
        "lexical": {"ratio": None, "fusion": None},
        "publish": {"registry": str(scratch), "dataset": dataset}}, source=f"{baseline} baseline")
    with dataset_tags(request.registry.dataset):  # the evaluated dataset's, as before
        result = remine_training_set(first.name, config)
    folder = Path(result.version_dir)
    manifest = Registry(scratch, dataset).manifest(folder.name)
    return training_set(baseline, folder, manifest, request.evaluation)


def _compared(request: Request, second: TrainingSet, save_model: str | None) -> Evaluated:
    """Train the second training set with the same seeds, compare it with the first, record and chart it."""
    folder = request.records
    first = _recorded(request, request.first, save_model)
    if second.name in BASELINES:
        record = _evaluate(request, second, save_model)
    else:
        record = _recorded(request, second, save_model)
    queries = sorted(first.base.per_query)
    before = _per_query([r.per_query for r in first.fine_tuned], queries)
    after = _per_query([r.per_query for r in record.fine_tuned], queries)
    name = f"compare-{first.version}-vs-{second.name}"
    baseline = Baseline(remined_from=first.version, mine=second.manifest.build_config().mine.model_dump(mode="json"),
                        record=record) if second.name in BASELINES else None
    comparison = Comparison(
        dataset=request.registry.dataset, key=request.key, seeds=first.seeds,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), evaluation=first.evaluation,
        a=Side(name=first.version, data_hash=first.data_hash, metrics=first.metrics.fine_tuned),
        b=Side(name=second.name, data_hash=record.data_hash, metrics=record.metrics.fine_tuned,
               **({"baseline": baseline} if baseline else {})),
        base=first.metrics.base, difference=paired_interval(before, after),
        per_query_difference=dict(zip(queries, np.round((after - before).mean(axis=0), 6).tolist())),
    )
    chart = evaluations_folder(folder) / "charts" / f"{name}-{request.key}.png"
    comparison.charts = [comparison_chart(comparison, chart)]
    path = record_path(folder, name, request.key)
    write_record(path, comparison)
    markdown = f"""# {request.registry.dataset}: {comparison.a.name} vs {comparison.b.name}

Both trained with seeds {', '.join(map(str, comparison.seeds))}; evaluated on split \
`{comparison.evaluation.split}` ({len(queries)} queries).

**nDCG@10 of {second.name} minus {first.version}: {comparison.difference.text()}**

{_summary_table([('base model', comparison.base), (comparison.a.name, comparison.a.metrics),
                 (comparison.b.name, comparison.b.metrics)])}

{image_markdown(chart, chart.stem)}

Record: `{path}`.
"""
    create_markdown_artifact(markdown, key=f"{slug(request.registry.dataset)}-comparison",
                             description=f"negforge comparison: {comparison.a.name} vs {second.name}")
    return Evaluated(record=first, comparison=comparison, path=str(path))


@flow(name="evaluate-training-set", flow_run_name="evaluate {dataset}@{version}", validate_parameters=True)
def evaluate_training_set(dataset: str, version: str = "latest", registry: str = "./registry",
                          settings: EvaluateConfig = EvaluateConfig(), compare: str | None = None,
                          save_model: str | None = None) -> Evaluated:
    """Fine-tune a model on a version and measure it against its base model (and, with `compare`, against another
    version or a `plain` / `random` baseline re-mined from it).

    Args:
        version: vNNNN, or `latest`.
        settings: the evaluation split and training settings (the `evaluate` config section).
        compare: another version of the dataset, or `plain` / `random`.
        save_model: a folder to keep the fine-tuned models in (`<version>-seed<seed>`); otherwise they are dropped.

    Returns:
        The (first) version's evaluation record, the comparison when one was asked for, and the last one's file.
    """
    escape_console_lines()  # a served or work-pool run's process: no CLI set it up
    with untagged_task_runs():
        request = check_request(registry, dataset, version, settings, compare, save_model)
        evaluated = _evaluated(request, compare, save_model)
        request.registry.push_side_folder(FOLDER)  # an object store's registry: the records and charts written
        stored = request.registry.folder / Path(evaluated.path).relative_to(request.records).as_posix()
        return evaluated.model_copy(update={"path": str(stored)})


def _evaluated(request: Request, compare: str | None, save_model: str | None) -> Evaluated:
    """The version's evaluation, or its comparison with another version or a baseline; paths in `request.records`."""
    if not compare:
        record = _recorded(request, request.first, save_model)
        return Evaluated(record=record, path=str(record_path(request.records, record.version, request.key)))
    if compare in BASELINES:
        with tempfile.TemporaryDirectory(prefix="negforge-baseline-") as scratch:
            return _compared(request, _baseline(request, compare, Path(scratch)), save_model)
    name, manifest = _version(request.registry, compare)
    return _compared(request, training_set(name, request.registry.local_copy(name), manifest, request.evaluation),
                     save_model)


def evaluate_after_publish(config: BuildConfig, version: str) -> Evaluated | None:
    """The build's last step with `evaluate.eval` set: evaluate the version it just published. A refusal (leakage,
    no rows, ...) is a warning: the version is published either way."""
    try:
        with dataset_tags(config.publish.dataset):
            return evaluate_training_set(config.publish.dataset, version, config.publish.registry,
                                         config.evaluate)
    except EvaluationError as error:
        get_run_logger().warning("evaluation of %s refused: %s", version, error)
        return None
