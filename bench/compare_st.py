"""negforge against sentence-transformers' `mine_hard_negatives` on SciFact train, each run in a fresh process.

Same model (bundled all-MiniLM-L6-v2), batch size 32 and options (relative_margin 0.05, range_max 50, 5 negatives,
top; negforge's near-duplicate and positive-similarity rules off, `mine.strategy: fixed`, `mine.max_depth: null`
and `validate.min_coverage: 0`, since the reference has none of them). Each of --runs
rounds runs the reference (use_faiss=True), a cold `negforge build` (empty embedding store and registry), a warm
rebuild, and a build of a copy of the corpus with 1% new documents (synthetic, bench/synthetic.py) on the warm store;
memory is sampled over each process tree (Dask workers and the Prefect server included; PSS, RSS beside it). Prints
one JSON line per round, then, as its last line, one JSON object of medians over the rounds: st_s,
negforge_cold_s, negforge_warm_s, negforge_plus1_s, ratio (cold / reference), warm_ratio and plus1_ratio (over
cold; each the median of the rounds' ratios), st_cpu_s and negforge_cold_cpu_s (CPU seconds of the process tree),
st_peak_mb, negforge_peak_mb (PSS; *_rss_mb beside), jaccard, stages (the median cold round's manifest timings) and
spread ([min, max] of each). With --object-store the negforge builds read their inputs from, and keep their
workdir and registry on, an S3 API on loopback (bench/s3_loopback.py), and run on an external cluster of two
workers that share nothing with the flow (bench/scale.py `external_cluster`); each round has its own prefixes, and
the cluster stays up across the rounds, as a long-lived one does.

    .venv/bin/python bench/compare_st.py [--runs 3] [--object-store] [--data ../shared/data/scifact]
        [--work /tmp/negforge-bench]
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psutil
from bench_args import parser
from s3_loopback import s3_loopback
from scale import external_cluster, private_mounts
from side_by_side import (
    build_command,
    mean_jaccard,
    median_and_spread,
    migrate_prefect_database,
    reference_command,
    run_measured,
)
from synthetic import SentencePool, digest, make_documents, write_corpus

from negforge.tasks.embedding.model import resolve_model

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PLUS = 0.01  # share of new documents in the plus-one build
SEED = 0


def corpus_plus_one_percent(data: Path, out: Path) -> Path:
    """A copy of the corpus with 1% new documents appended (new texts, made from the corpus's own sentences)."""
    existing = pl.read_ndjson(data / "corpus.jsonl", schema={"_id": pl.String, "title": pl.String,
                                                             "text": pl.String})
    taken = {digest(f"{title} {text}") for title, text in existing.select("title", "text").iter_rows()}
    count = max(1, round(PLUS * existing.height))
    documents = make_documents(SentencePool.read(data / "corpus.jsonl"), count, np.random.default_rng(SEED), taken)
    write_corpus(documents, [f"plus1-{i}" for i in range(count)], out / "new.jsonl")
    with (out / "corpus.jsonl").open("wb") as corpus:
        corpus.write((data / "corpus.jsonl").read_bytes().rstrip(b"\n") + b"\n")
        corpus.write((out / "new.jsonl").read_bytes())
    return out / "corpus.jsonl"


@dataclass(frozen=True)
class Store:
    """Where --object-store builds keep things: settings over the local ones, the cluster's processes (their memory
    counts), and the plus-one corpus's URL."""

    settings: dict[str, str]
    processes: tuple[psutil.Process, ...]
    plus_one: str


def one_round(data: Path, model: str, plus_one: Path, work: Path, store: Store | None) -> dict[str, Any]:
    """Reference, cold build, warm rebuild and the plus-one build, on an empty workdir and registry."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    st = run_measured(reference_command(data, model, work / "st.parquet"), work / "st.log")
    print(f"reference: {st.seconds:.1f} s, {st.peak_pss_mb:.0f} MB", file=sys.stderr, flush=True)
    build = build_command(data, work, "scifact-train", {"embed.model": MODEL} | (store.settings if store else {}))
    others = store.processes if store else ()
    cold = run_measured(build, work / "cold.log", others)
    print(f"negforge cold: {cold.seconds:.1f} s, {cold.peak_pss_mb:.0f} MB", file=sys.stderr, flush=True)
    warm = run_measured(build, work / "warm.log", others)
    print(f"negforge warm: {warm.seconds:.1f} s, {warm.peak_pss_mb:.0f} MB", file=sys.stderr, flush=True)
    plus = run_measured(build + ["--set", f"input.corpus={store.plus_one if store else plus_one}"],
                        work / "plus1.log", others)
    print(f"negforge +1%: {plus.seconds:.1f} s, {plus.peak_pss_mb:.0f} MB", file=sys.stderr, flush=True)
    return {"st_s": round(st.seconds, 1), "negforge_cold_s": round(cold.seconds, 1),
            "negforge_warm_s": round(warm.seconds, 1), "negforge_plus1_s": round(plus.seconds, 1),
            "st_cpu_s": round(st.cpu_seconds, 1), "negforge_cold_cpu_s": round(cold.cpu_seconds, 1),
            "ratio": round(cold.seconds / st.seconds, 3), "warm_ratio": round(warm.seconds / cold.seconds, 3),
            "plus1_ratio": round(plus.seconds / cold.seconds, 3),
            "st_peak_mb": round(st.peak_pss_mb), "st_peak_rss_mb": round(st.peak_rss_mb),
            "negforge_peak_mb": round(max(cold.peak_pss_mb, warm.peak_pss_mb, plus.peak_pss_mb)),
            "negforge_peak_rss_mb": round(max(cold.peak_rss_mb, warm.peak_rss_mb, plus.peak_rss_mb)),
            "jaccard": round(mean_jaccard(_local_copy(cold.stdout, work) / "data", work / "st.parquet"), 4),
            "stages": json.loads((_local_copy(cold.stdout, work) / "manifest.json").read_text())["timings"]}


def _local_copy(stdout: str, work: Path) -> Path:
    """The published version as a local folder (downloaded from the store once)."""
    version = stdout.strip().splitlines()[-1]
    if "://" not in version:
        return Path(version)
    from negforge.tasks.storage.location import Location

    target = work / "published"
    return target if target.exists() else Location.of(version).download(target)


def _on_object_store(stack: contextlib.ExitStack, data: Path, plus_one: Path) -> Store:
    """The loopback S3 API with the inputs on it, and the external cluster, for the rest of the benchmark."""
    import boto3

    from negforge.flows.orchestration.prefect_server import free_port
    from negforge.tasks.storage.location import Location

    stack.enter_context(s3_loopback(free_port()))
    boto3.client("s3").create_bucket(Bucket="bench")
    Location.of("s3://bench/input").upload(data)
    Location.of("s3://bench/plus1/corpus.jsonl").write_bytes(plus_one.read_bytes())
    address, processes = stack.enter_context(external_cluster(private=private_mounts()))
    settings = {"input.corpus": "s3://bench/input/corpus.jsonl", "input.queries": "s3://bench/input/queries.jsonl",
                "input.qrels": "s3://bench/input/qrels/train.tsv", "runtime.dask_address": address}
    return Store(settings, tuple(psutil.Process(p.pid) for p in processes), "s3://bench/plus1/corpus.jsonl")


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--runs", type=int, default=3, help="rounds; the summary gives their medians")
    arguments.add_argument("--object-store", action="store_true",
                           help="negforge's builds on an S3 API on loopback and an external cluster")
    args = arguments.parse_args()
    if args.runs < 1:
        arguments.error("--runs must be at least 1")
    model = resolve_model(MODEL).path
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "plus1").mkdir(parents=True)
    plus_one = corpus_plus_one_percent(args.data, args.work / "plus1")
    migrate_prefect_database()
    with contextlib.ExitStack() as stack:
        store = _on_object_store(stack, args.data, plus_one) if args.object_store else None
        rounds = []
        for number in range(args.runs):
            own = store and replace(store, settings=store.settings | {
                "runtime.workdir": f"s3://bench/round-{number + 1}/work",
                "publish.registry": f"s3://bench/round-{number + 1}/registry"})
            rounds.append(one_round(args.data, model, plus_one, args.work / f"round-{number + 1}", own))
            print(json.dumps({"round": number + 1} | rounds[-1]), flush=True)
    summary, spread = {}, {}
    for key in [k for k in rounds[0] if k != "stages"]:
        digits = 3 if "ratio" in key else 4 if key == "jaccard" else 1 if key.endswith("_s") else 0
        summary[key], spread[key] = median_and_spread([r[key] for r in rounds], digits)
    middle = sorted(rounds, key=lambda r: r["negforge_cold_s"])[len(rounds) // 2]
    print(json.dumps(summary | {"runs": args.runs, "stages": middle["stages"], "spread": spread}))


if __name__ == "__main__":
    main()
