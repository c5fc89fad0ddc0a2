"""The embedding store at a million vectors (random, 384 wide): one-pass lookup, copy into a run's matrix, compaction,
and how many embedding tasks a 100k-text run gets. Each phase runs in a fresh process; one JSON line per phase with
its seconds and the process's peak resident memory.

    python bench/embedding_store.py [--size 1000000] [--work /tmp/negforge-store-bench]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from negforge.schemas.config import RuntimeConfig
from negforge.schemas.stages import Texts
from negforge.schemas.tables import TEXT_SHARD, frame
from negforge.tasks.embedding.embed import copy_stored, create_matrices, plan_embedding
from negforge.tasks.embedding.model import EncoderSpec, resolve_model
from negforge.tasks.embedding.store import EmbeddingStore, part_rows
from negforge.tasks.ingest.text import text_hash

DIM = 384
NEW_SHARE = 0.01  # the run asks for the stored texts plus 1% new ones
FILE_ROWS = 65_536  # rows per text file, as ingest writes them
WORKERS = 2


def _spec() -> EncoderSpec:
    ref = resolve_model("all-MiniLM-L6-v2")
    return EncoderSpec(ref.path, ref.weights_sha256, "", None, 32, "cpu")


def _texts(count: int) -> list[str]:
    return [f"synthetic document {i}" for i in range(count)]


def _text_files(folder: Path, texts: list[str]) -> tuple[str, ...]:
    """Text files as ingest writes them: rows numbered across the files."""
    folder.mkdir(parents=True, exist_ok=True)
    table = frame(TEXT_SHARD, {"row": range(len(texts)), "text_hash": [text_hash(t) for t in texts],
                               "id": [str(i) for i in range(len(texts))], "text": texts,
                               "length": [len(t) for t in texts]})
    for number, chunk in enumerate(table.iter_slices(FILE_ROWS)):
        chunk.write_parquet(folder / f"corpus-{number:05d}.parquet")
    return tuple(str(path) for path in sorted(folder.glob("corpus-*.parquet")))


def _fill(store: EmbeddingStore, hashes: pl.Series, rows_per_part: int) -> None:
    rng = np.random.default_rng(0)
    for start in range(0, len(hashes), rows_per_part):
        chunk = hashes.slice(start, rows_per_part)
        store.put(chunk, rng.standard_normal((len(chunk), DIM), dtype=np.float32))


def _peak_mb() -> int:
    """This process's peak resident memory so far (the phase's own share is peak_mb - peak_before_mb at most)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def phase(name: str, size: int, work: Path) -> dict:
    spec = _spec()
    store_root, hashes = work / "store", pl.Series([text_hash(t) for t in _texts(size)])
    before_mb, started = _peak_mb(), time.perf_counter()
    if name == "write":  # a cold run's parts: PART_BYTES each
        shutil.rmtree(store_root, ignore_errors=True)
        _fill(EmbeddingStore(store_root, spec.fingerprint), hashes, part_rows(DIM))
        result = {"parts": len(EmbeddingStore(store_root, spec.fingerprint).parts())}
    elif name in ("lookup_cold_index", "lookup"):  # 1M stored, size * (1 + NEW_SHARE) asked
        store = EmbeddingStore(store_root, spec.fingerprint)
        if name == "lookup_cold_index":
            (store.folder / "index.parquet").unlink(missing_ok=True)
        asked = pl.DataFrame({"text_hash": pl.concat([hashes, pl.Series([text_hash(f"new {i}") for i in
                                                                         range(int(size * NEW_SHARE))])])})
        before_mb, started = _peak_mb(), time.perf_counter()
        found, _ = store.lookup(asked)
        result = {"asked": asked.height, "missing": found["part"].null_count()}
    elif name == "plan_and_copy":  # the stage's plan over text files, then its copy tasks one after another
        texts = _texts(size) + [f"new {i}" for i in range(int(size * NEW_SHARE))]
        files = _text_files(work / "texts", texts)
        run = Texts(files[:1], files, "", 1)
        before_mb, started = _peak_mb(), time.perf_counter()
        plan = plan_embedding(run, {"query": spec, "corpus": spec}, str(store_root), str(work / "run" / "embed"),
                              WORKERS, RuntimeConfig())
        planned = time.perf_counter() - started
        create_matrices(plan)
        copied = [copy_stored(plan, i, {"query": spec, "corpus": spec}, str(store_root), str(work / "progress"))
                  for i in range(len(plan.copy_ranges))]
        result = {"plan_s": round(planned, 2), "copy_s": round(time.perf_counter() - started - planned, 2),
                  "copied": sum(c.copied for c in copied), "copy_tasks": len(plan.copy_ranges),
                  "embed_tasks": len(plan.embed_ranges)}
    elif name == "compact":  # the same vectors in 5,000-row parts, as many incremental runs leave them
        small = work / "small-store"
        shutil.rmtree(small, ignore_errors=True)
        store = EmbeddingStore(small, spec.fingerprint)
        _fill(store, hashes, 5_000)
        store.index()
        before = len(store.parts())
        before_mb, started = _peak_mb(), time.perf_counter()
        merged = store.compact()
        result = {"parts_before": before, "parts_after": len(store.parts()), "merged": len(merged or [])}
    elif name == "tasks_100k":  # a cold 100k-text run on this machine's two workers
        files = _text_files(work / "texts-100k", _texts(100_000))
        plan = plan_embedding(Texts(files[:1], files, "", 1), {"query": spec, "corpus": spec},
                              str(work / "empty-store"), str(work / "run-100k" / "embed"), WORKERS, RuntimeConfig())
        result = {"embed_task_runs": len(plan.embed_ranges), "copy_task_runs": len(plan.copy_ranges),
                  "plan_task_runs": 1}
    else:
        raise SystemExit(f"unknown phase {name!r}")
    seconds = round(time.perf_counter() - started, 2)
    return {"phase": name, "size": size, "seconds": seconds, "peak_mb": _peak_mb(), "peak_before_mb": before_mb,
            **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/negforge-store-bench"))
    parser.add_argument("--phase", help="run one phase in this process")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.size, args.work.resolve())), flush=True)
        return
    for name in ("write", "lookup_cold_index", "lookup", "plan_and_copy", "compact", "tasks_100k"):
        subprocess.run([sys.executable, __file__, "--phase", name, "--size", str(args.size), "--work",
                        str(args.work)], check=True)


if __name__ == "__main__":
    main()
