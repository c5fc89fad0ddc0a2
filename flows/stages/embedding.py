"""The embedding stage of the build flow: plan on a worker, embed and copy in a few tasks per worker, show progress,
compact the store.

The flow holds the plan (paths and row ranges) and creates the run's vector matrices, one .npy per kind with a row per
text row; the tasks fill disjoint rows of them, so search reads them memory-mapped. With the workdir on an object
store the tasks only store vectors, and one task fills the matrices from the store (tasks/embedding/embed.py).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable

from negforge.flows.orchestration.stage_progress import StageProgress
from negforge.flows.orchestration.task_options import negforge_task
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Embedded, Texts, VectorFile
from negforge.tasks.embedding.embed import (
    Filled,
    copy_stored,
    create_matrices,
    embed_texts,
    fill_matrices,
    plan_embedding,
)
from negforge.tasks.embedding.model import EncoderSpec, ModelRef, named_prompt, resolve_model, warm_up
from negforge.tasks.embedding.store import EmbeddingStore, compact_stores
from negforge.tasks.storage.mirror import in_mirror

plan_task = negforge_task(plan_embedding, "plan embedding", retried=True)
embed_task = negforge_task(embed_texts, "embed texts", retried=True)
copy_task = negforge_task(copy_stored, "copy stored vectors", retried=True)
compact_task = negforge_task(compact_stores, "compact embedding store")
fill_task = negforge_task(fill_matrices, "fill vector matrices", retried=True)


def _encoder(ref: ModelRef, config: BuildConfig, prompt: str | None, prompt_name: str | None) -> EncoderSpec:
    text = prompt if prompt is not None else (named_prompt(ref, prompt_name) if prompt_name else "")
    return EncoderSpec(ref.path, ref.weights_sha256, text, config.embed.max_seq_length, config.embed.batch_size,
                       config.runtime.device)


def encoder_specs(config: BuildConfig) -> dict[str, EncoderSpec]:
    """The encoder of each kind, "query" and "corpus" (same model, each with its prompt)."""
    ref = resolve_model(config.embed.model)
    return {"query": _encoder(ref, config, config.embed.query_prompt, config.embed.query_prompt_name),
            "corpus": _encoder(ref, config, config.embed.corpus_prompt, config.embed.corpus_prompt_name)}


def model_warm_up(config: BuildConfig) -> Callable[[], None]:
    """What loads the build's model into a worker before its first task (flows/orchestration/dask_cluster.py)."""
    return functools.partial(warm_up, encoder_specs(config)["corpus"])


def embed_stage(texts: Texts, config: BuildConfig, run_dir: Path, workers: int) -> Embedded:
    """Fill the run's query and corpus vector matrices: what the store has is copied, the rest embedded and stored."""
    specs = encoder_specs(config)
    store_root = str(Path(config.runtime.workdir) / "embeddings")
    fingerprints = sorted({spec.fingerprint for spec in specs.values()})
    stores = [EmbeddingStore(store_root, fp) for fp in fingerprints]  # a linked store is refused here, not on a worker
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "fingerprints.json").write_text(json.dumps(fingerprints, allow_nan=False))  # for gc

    in_place = not in_mirror(run_dir)
    plan = plan_task.submit(texts, specs, store_root, str(run_dir / "embed"), workers, config.runtime,
                            in_place).result()
    progress_dir = run_dir / "embed" / "progress"
    embeds, copies = len(plan.embed_ranges), len(plan.copy_ranges) if in_place else 0
    if in_place:
        create_matrices(plan)
    futures = [embed_task.with_options(task_run_name=f"embed texts {i + 1}/{embeds}")
               .submit(plan, i, specs, store_root, str(progress_dir)) for i in range(embeds)]
    futures += [copy_task.with_options(task_run_name=f"copy stored vectors {i + 1}/{copies}")
                .submit(plan, i, specs, store_root, str(progress_dir)) for i in range(copies)]
    total = (plan.embed_ranges[-1][1] if embeds else 0) + (plan.copy_ranges[-1][1] if copies else 0)
    filled = StageProgress(config.publish.dataset, "embed", total, str(progress_dir)).results(futures)
    if not in_place:
        stored, repaired = (plan.copy_ranges[-1][1] if plan.copy_ranges else 0), plan.damaged
        plan = plan_task.submit(texts, specs, store_root, str(run_dir / "embed-fill"), workers, config.runtime).result()
        assembled = fill_task.submit(plan, specs, store_root, str(progress_dir)).result()
        filled.append(Filled(embedded=assembled.embedded, copied=stored, damaged=(*repaired, *assembled.damaged)))

    compacted = any(store.needs_compaction() for store in stores)
    if compacted:
        compact_task.submit(store_root, fingerprints).result()
    damaged = set(plan.damaged).union(*(f.damaged for f in filled))
    return Embedded(queries=VectorFile(plan.matrices["query"], plan.rows["query"], plan.dim),
                    corpus=VectorFile(plan.matrices["corpus"], plan.rows["corpus"], plan.dim),
                    texts_embedded=sum(f.embedded for f in filled), texts_cached=sum(f.copied for f in filled),
                    fingerprints={kind: spec.fingerprint for kind, spec in specs.items()},
                    store_repaired=tuple(sorted(damaged)),
                    task_runs=1 + len(futures) + (0 if in_place else 2) + int(compacted))
