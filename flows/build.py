"""The `build-training-set` flow: ingest, validate inputs, embed (a few tasks per worker, on Dask), search (per
shard), merge, candidate similarity, optional deeper search, mine, write, validate the candidate, publish.

Tasks pass paths and small metadata only; tables and vectors live in the run workspace. The task runner
(flows/task_runner.py) reads each run's `runtime` section, so the same flow, run from the CLI, a served deployment or
a worker, uses a local Dask cluster or an existing scheduler as that run's config says.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import polars as pl
from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE

from negforge.flows.embed_stage import embed_stage
from negforge.flows.run_report import publish_artifacts, reject_lines
from negforge.flows.stage_tasks import stage_task as _task  # one definition, shared with flows/embed_stage.py
from negforge.flows.task_runner import BuildTaskRunner
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Texts
from negforge.tasks.audit import audit
from negforge.tasks.candidate_store import save_candidates
from negforge.tasks.corpus_dedup import choose_kept, near_duplicate_pairs
from negforge.tasks.dataset_card import dataset_card
from negforge.tasks.deepen import deepen
from negforge.tasks.ingest import ingest
from negforge.tasks.mine import mine, reason_counts, reasons_per_query
from negforge.tasks.model import EncoderSpec, ModelRef, named_prompt, resolve_model
from negforge.tasks.preflight import preflight, store_shortfall
from negforge.tasks.quality_checks import contaminated_queries
from negforge.tasks.quality_gate import check_candidate, check_inputs
from negforge.tasks.registry import Registry
from negforge.tasks.rescore import attach_rescores, plan_batches, rescore_batch, rescorer_spec
from negforge.tasks.search import merge_hits, search_shard
from negforge.tasks.similarity import candidate_similarity
from negforge.tasks.training_set import ids_table, write_training_set

PACKAGES = ("negforge", "prefect", "prefect-dask", "distributed", "polars", "faiss-cpu", "sentence-transformers",
            "transformers", "torch", "datasets", "numpy", "great-expectations", "pydantic")


ingest_task = _task(ingest, "ingest", retried=True)
search_task = _task(search_shard, "search shard", retried=True)
merge_task = _task(merge_hits, "merge hits")
deepen_task = _task(deepen, "search deeper")
similarity_task = _task(candidate_similarity, "candidate similarity")
pairs_task = _task(near_duplicate_pairs, "corpus near-duplicates", retried=True)
choose_kept_task = _task(choose_kept, "choose kept documents")
rescore_task = _task(rescore_batch, "rescore", retried=True)
attach_task = _task(attach_rescores, "attach rescores")
validate_inputs_task = _task(check_inputs, "validate inputs")
validate_candidate_task = _task(check_candidate, "validate candidate")


@task(name="mine", task_run_name="mine", cache_policy=NO_CACHE)
def mine_task(search: dict[str, str], texts: Texts, config: BuildConfig, range_max: int, depth: int,
              out_dir: str) -> dict[str, Any]:
    """Decide every candidate to `depth`; write the candidates (with reasons) and the ids table to the workspace."""
    positives = pl.read_parquet(texts.positives)
    positive_scores = pl.read_parquet(search["positive_scores"])
    query_ids = pl.read_parquet(texts.query_files, columns=["id"])["id"].to_list()
    hits = pl.read_parquet(search["hits"]).filter(pl.col("rank") < depth)
    candidates = mine(hits, positives, positive_scores, query_ids, config.mine, range_max,
                      pl.read_parquet(search["near_pairs"]), config.dedup.eps, config.rescore)
    ids, short = ids_table(candidates, positives, positive_scores, texts.corpus_files,
                           config.output.format, config.mine.num_negatives, config.output.keep_candidates)
    dropped = contaminated_queries(texts.query_files, config) if config.validate_.drop_eval_queries else []
    ids = ids.filter(~pl.col("query_id").is_in(dropped))
    report = None
    if config.audit.qrels:
        doc_ids = (pl.scan_parquet(texts.corpus_files).select("row", "id")
                   .filter(pl.col("row").is_in(candidates["doc_row"].unique())).collect())
        report = audit(candidates, query_ids, doc_ids, config.audit.qrels, config.input.format,
                       config.input.positive_threshold, config.mine.num_negatives)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    candidates.write_parquet(out / "candidates.parquet")
    ids.write_parquet(out / "ids.parquet")
    return {"ids": str(out / "ids.parquet"), "candidates": str(out / "candidates.parquet"),
            "reasons": reason_counts(candidates), "reasons_per_query": reasons_per_query(candidates, len(query_ids)),
            "short_queries": short, "dropped_eval_queries": dropped, "audit": report,
            "positive_scores": _stats(positive_scores["score"]),
            "negative_scores": _stats(candidates.filter(pl.col("reason").is_null())["score"])}


def _stats(scores: pl.Series) -> dict[str, float | int]:
    if scores.is_empty():
        return {"count": 0}
    return {"count": scores.len(), "mean": round(float(scores.mean()), 6), "min": round(float(scores.min()), 6),
            "median": round(float(scores.median()), 6), "max": round(float(scores.max()), 6)}


@task(name="write training set", task_run_name="write training set", cache_policy=NO_CACHE)
def write_task(mined: dict[str, Any], texts: Texts, config: BuildConfig, staging: str) -> dict[str, Any]:
    """Join texts back and write data/, ids/ and exports into the staging folder."""
    return write_training_set(pl.read_parquet(mined["ids"]), pl.read_parquet(texts.positives),
                              texts.query_files, texts.corpus_files, config.output,
                              config.mine.num_negatives, staging)


@task(name="publish", task_run_name="publish", cache_policy=NO_CACHE)
def publish_task(staging: str, config: BuildConfig, manifest: dict[str, Any], parent: str | None) -> dict[str, Any]:
    """Number the staged version and move it into the registry, unless it equals the newest one and that is whole."""
    registry = Registry(config.publish.registry, config.publish.dataset)
    version_dir, published = registry.publish(Path(staging), manifest | {"parent": parent}, dataset_card)
    return {"version_dir": str(version_dir), "published": published, "version": version_dir.name}


def _encoder(ref: ModelRef, config: BuildConfig, prompt: str | None, prompt_name: str | None) -> EncoderSpec:
    text = prompt if prompt is not None else (named_prompt(ref, prompt_name) if prompt_name else "")
    return EncoderSpec(ref.path, ref.weights_sha256, text, config.embed.max_seq_length, config.embed.batch_size,
                       config.runtime.device)


def _code_version() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5)
        sha = done.stdout.strip() if done.returncode == 0 else ""
    except OSError:
        sha = ""
    return sha or f"negforge {metadata.version('negforge')}"


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def _dedup_corpus(texts: Texts, corpus: list[str], config: BuildConfig, out_dir: Path) -> dict[str, Any]:
    """Find near-duplicate documents shard by shard in parallel, then choose which to drop before searching."""
    out_dir.mkdir(parents=True, exist_ok=True)
    futures = [pairs_task.with_options(task_run_name=f"corpus near-duplicates {i + 1}/{len(corpus)}")
               .submit(i, corpus, config.runtime.shard_size, 1 - config.dedup.eps,
                       str(out_dir / f"pairs-{i:05d}.parquet"))
               for i in range(len(corpus))]
    return choose_kept_task([f.result() for f in futures], texts.positives, texts.corpus_files,
                            str(out_dir))


def _rescore_all(search: dict[str, str], texts: Texts, config: BuildConfig, out_dir: Path) -> dict[str, str]:
    """Score every candidate and positive with the rescorer, in batches of pairs on the workers."""
    spec = rescorer_spec(config.rescore, config.runtime.device)
    batches = plan_batches(search["hits"], texts.positives, config.rescore.pairs_per_task, str(out_dir))
    futures = [rescore_task.with_options(task_run_name=f"rescore batch {i + 1}/{len(batches)}")
               .submit(path, spec, texts.query_files, texts.corpus_files,
                       str(out_dir / f"rescores-{i:05d}.parquet"))
               for i, path in enumerate(batches)]
    return attach_task(search, [f.result() for f in futures], str(out_dir))


def _search_all(texts: Texts, vectors: dict[str, list[str]], config: BuildConfig, depth: int,
                out_dir: Path, excluded_docs: str | None) -> dict[str, str]:
    """Search every corpus shard in parallel, then merge the per-shard top-k exactly."""
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = vectors["corpus"]
    futures = [search_task.with_options(task_run_name=f"search shard {i + 1}/{len(corpus)}")
               .submit(path, i * config.runtime.shard_size, vectors["query"], texts.positives, depth,
                       config.search.query_batch_size, str(out_dir), excluded_docs)
               for i, path in enumerate(corpus)]
    results = [f.result() for f in futures]
    merged = merge_task([r["hits"] for r in results], [r["positive_scores"] for r in results], depth, str(out_dir))
    return merged | similarity_task(merged["hits"], texts.positives, corpus, config.runtime.shard_size,
                                    str(out_dir))


@flow(name="build-training-set", flow_run_name="build {config.publish.dataset}", validate_parameters=True,
      task_runner=BuildTaskRunner())
def build_training_set(config: BuildConfig) -> dict[str, Any]:
    """Build and publish one version of a training set with mined hard negatives.

    Returns:
        The version folder, whether it was newly published, and the manifest's counts.
    """
    with tags("negforge", config.publish.dataset):  # on every task run, so the UI filters a dataset's work
        return _build(config)


def _build(config: BuildConfig) -> dict[str, Any]:
    logger = get_run_logger()
    timings: dict[str, float] = {}
    started = datetime.now(timezone.utc)
    run_dir = Path(config.runtime.workdir) / "runs" / f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    store = str(Path(config.runtime.workdir) / "embeddings")
    preflight(config)

    with _timed(timings, "ingest"):
        ingested = ingest_task(config.input, str(run_dir / "ingest"), config.runtime.shard_size)
    texts, counts = ingested.texts, ingested.counts
    logger.info("ingested %d documents (%d unique texts), %d queries with positives, %d rows rejected",
                counts.documents, counts.unique_texts, counts.queries_used, counts.rows_rejected)
    for line in reject_lines(ingested.reject_reasons, ingested.reject_samples):
        logger.warning("rows rejected: %s", line)
    with _timed(timings, "validate_inputs"):
        validate_inputs_task(ingested, str(run_dir / "validation" / "inputs"))

    with _timed(timings, "embed"):
        ref = resolve_model(config.embed.model)
        shortfall = store_shortfall(config.runtime.workdir, counts.unique_texts, ref.path)
        if shortfall:
            logger.warning(shortfall)
        specs = {"query": _encoder(ref, config, config.embed.query_prompt, config.embed.query_prompt_name),
                 "corpus": _encoder(ref, config, config.embed.corpus_prompt, config.embed.corpus_prompt_name)}
        (run_dir / "fingerprints.json").write_text(json.dumps(sorted({s.fingerprint for s in specs.values()})))
        embedded = embed_stage(texts, specs, store, run_dir, config.runtime, config.publish.dataset)
    logger.info("embedded %d texts, %d from the store", embedded.texts_embedded, embedded.texts_cached)
    if embedded.store_repaired:
        logger.warning("embedding store: %d damaged part(s) set aside and their texts embedded again: %s",
                       len(embedded.store_repaired), ", ".join(embedded.store_repaired))
    # Until search reads the single matrices in blocks: one "shard" file per kind, as long as the corpus.
    vectors = {"query": [embedded.queries.path], "corpus": [embedded.corpus.path]}
    one_shard = config.model_copy(update={"runtime": config.runtime.model_copy(
        update={"shard_size": max(1, embedded.corpus.rows)})})

    corpus_dedup = None
    if config.dedup.corpus:
        with _timed(timings, "dedup_corpus"):
            corpus_dedup = _dedup_corpus(texts, vectors["corpus"], one_shard, run_dir / "corpus-dedup")
        logger.info("corpus deduplication dropped %d near-duplicate documents", corpus_dedup["dropped"])

    range_max = config.mine.effective_range_max(texts.max_positives)
    depth = config.search.depth or range_max + texts.max_positives
    with _timed(timings, "search"):
        excluded_docs = corpus_dedup["excluded_docs"] if corpus_dedup else None
        search = _search_all(texts, vectors, one_shard, depth, run_dir / "search", excluded_docs)
    deepened = None
    if config.mine.max_depth and config.mine.max_depth > depth:
        with _timed(timings, "deepen"):
            search, deepened = deepen_task(search, texts, vectors, one_shard, depth, range_max,
                                           str(run_dir / "deepen"), excluded_docs)
    if config.rescore.model:
        with _timed(timings, "rescore"):
            search = _rescore_all(search, texts, config, run_dir / "rescore")
    if corpus_dedup:
        search = search | {"corpus_duplicates": corpus_dedup["corpus_duplicates"]}

    base = {
        "created_at": started.isoformat(), "inputs": list(ingested.inputs),
        "model": {"name": config.embed.model, "weights_sha256": ref.weights_sha256,
                  "fingerprints": {kind: spec.fingerprint for kind, spec in specs.items()}},
        "embed": {"texts_embedded": embedded.texts_embedded, "texts_cached": embedded.texts_cached,
                  "store_repaired": list(embedded.store_repaired)},
        "search": {"depth": depth, "range_max": range_max},
        "counts": counts.as_dict(),
        "rejects": {"path": ingested.rejects_path, "reasons": ingested.reject_reasons,
                    "samples": ingested.reject_samples},
        "adaptive_depth": deepened, "run_dir": str(run_dir),
        "corpus_dedup": {"dropped": corpus_dedup["dropped"], "record": "candidates/corpus-duplicates.parquet"}
        if corpus_dedup else None,
    }
    return mine_and_publish(config, texts, search, deepened["depth"] if deepened else depth, range_max, run_dir,
                            timings, base, stored_depth=depth)


def mine_and_publish(config: BuildConfig, texts: Texts, search: dict[str, str], depth: int,
                     range_max: int, run_dir: Path, timings: dict[str, float], base: dict[str, Any],
                     parent: str | None = None, stored_depth: int | None = None) -> dict[str, Any]:
    """The tail shared by build and remine: mine, write (with the candidates), validate, publish.

    Args:
        depth: how many candidates per query the options search (a remine mines this prefix of what is stored,
            so that it equals a full build with the same options).
        base: the manifest entries the caller knows (inputs, model, embedding counts, search, counts).
        parent: the version a remine started from (default: the registry's LATEST at publish time).
        stored_depth: the depth of the candidates `search` holds (default: depth).
    """
    logger = get_run_logger()
    with _timed(timings, "mine"):
        mined = mine_task(search, texts, config, range_max, depth, str(run_dir / "mine"))

    registry = Registry(config.publish.registry, config.publish.dataset)
    staging = registry.staging()
    try:
        with _timed(timings, "write"):
            written = write_task(mined, texts, config, str(staging))
            save_candidates(staging / "candidates", search, texts, stored_depth or depth)
        latest = registry.latest()
        with _timed(timings, "validate"):
            validation = validate_candidate_task(str(staging), mined, texts, config,
                                                 registry.manifest(latest) if latest else None,
                                                 str(run_dir / "validation" / "candidate"))
    except Exception:
        registry.discard(staging)  # a refused candidate was already moved to quarantine
        raise
    for warning in validation["warnings"]:
        logger.warning("drift: %s", warning)

    manifest = {
        "dataset": config.publish.dataset, "version": None, "parent": None, "data_hash": None,
        "code_version": _code_version(), "packages": _package_versions(),
        "config": config.model_dump(mode="json", by_alias=True), **base,
        "counts": base["counts"] | {"rows": written["rows"], "id_rows": written["id_rows"]},
        "reasons": mined["reasons"], "reasons_per_query": mined["reasons_per_query"],
        "short_queries": {"count": len(mined["short_queries"]), "ids": mined["short_queries"]},
        "dropped_eval_queries": mined["dropped_eval_queries"], "audit": mined["audit"],
        "scores": {"positive": mined["positive_scores"], "negative": mined["negative_scores"]},
        "validation": validation,
        "files": written["files"] | {"bytes": written["bytes"]}, "timings": timings,
    }
    shutil.copytree(Path(validation["data_docs"]).parent, staging / "validation" / "data_docs")
    with _timed(timings, "publish"):
        published = publish_task(str(staging), config, manifest, parent)
    if published["published"]:
        logger.info("published %s", published["version_dir"])
    else:
        logger.info("up to date: %s", published["version_dir"])
    stored = json.loads((Path(published["version_dir"]) / "manifest.json").read_text())
    publish_artifacts(manifest | {key: stored[key] for key in ("version", "parent", "data_hash")},
                      published["version_dir"], published["published"])
    return published | {"counts": manifest["counts"], "embed": manifest["embed"], "timings": timings,
                        "short_queries": manifest["short_queries"]["count"], "reasons": manifest["reasons"]}
