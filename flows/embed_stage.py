"""The embedding stage (interim: one task per text file; the store helper replaces this module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from negforge.flows.task_options import negforge_task
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Embedded, Texts, VectorFile
from negforge.tasks.embed import embed_shard
from negforge.tasks.model import EncoderSpec, ModelRef, named_prompt, resolve_model

embed_task = negforge_task(embed_shard, "embed shard", retried=True)


def _encoder(ref: ModelRef, config: BuildConfig, prompt: str | None, prompt_name: str | None) -> EncoderSpec:
    text = prompt if prompt is not None else (named_prompt(ref, prompt_name) if prompt_name else "")
    return EncoderSpec(ref.path, ref.weights_sha256, text, config.embed.max_seq_length, config.embed.batch_size,
                       config.runtime.device)


def embed_stage(texts: Texts, config: BuildConfig, run_dir: Path, workers: int) -> Embedded:
    ref = resolve_model(config.embed.model)
    specs = {"query": _encoder(ref, config, config.embed.query_prompt, config.embed.query_prompt_name),
             "corpus": _encoder(ref, config, config.embed.corpus_prompt, config.embed.corpus_prompt_name)}
    run_dir.mkdir(parents=True, exist_ok=True)
    import json
    (run_dir / "fingerprints.json").write_text(json.dumps(sorted({s.fingerprint for s in specs.values()})))
    store = str(Path(config.runtime.workdir) / "embeddings")
    files = {"query": texts.query_files, "corpus": texts.corpus_files}
    out, embedded, cached, task_runs = {}, 0, 0, 0
    for kind in ("query", "corpus"):
        futures = [embed_task.submit(path, specs[kind], store, str(run_dir / "vectors" / f"{Path(path).stem}.npy"))
                   for path in files[kind]]
        results = [f.result() for f in futures]
        task_runs += len(futures)
        matrix = np.concatenate([np.load(r["vectors"]) for r in results])
        path = run_dir / "vectors" / f"{kind}.npy"
        np.save(path, matrix)
        out[kind] = VectorFile(str(path), matrix.shape[0], matrix.shape[1])
        embedded += sum(r["embedded"] for r in results)
        cached += sum(r["cached"] for r in results)
    return Embedded(queries=out["query"], corpus=out["corpus"], texts_embedded=embedded, texts_cached=cached,
                    fingerprints={kind: spec.fingerprint for kind, spec in specs.items()}, task_runs=task_runs)
