"""The reference and negforge on the same BEIR data, each in a fresh process: commands, time and memory, agreement.

The reference is sentence-transformers' `mine_hard_negatives` (use_faiss=True); negforge is `negforge build` with
the same model, batch size and mining options, and with its own extra filters off (the reference has neither a
near-duplicate rule nor a positive-similarity rule). Memory is sampled every second over the whole process tree
(the Dask workers and the local Prefect server included): PSS from /proc/<pid>/smaps_rollup, which counts shared pages
once, and RSS beside it.

Reading smaps_rollup walks the process's page tables under its memory-map lock, so the sampler takes cores from what
it measures, more the more processes there are: one sample of negforge's tree (flow, server, two workers) took 57 ms
of CPU and ~120 ms of wall time: ~18% of a core when sampled every 0.2 s on this 2-core machine. Two Dask workers
encoding 400 SciFact abstracts (measured 2026-11-27): 16.7 s unsampled, 17.8-18.3 s sampled every 0.2 s, 16.9 s every
second; one process with two threads (the reference's layout): 17.0 s, 20.3 s, 18.8 s (runs vary by ~10%).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import psutil
from bench_args import DEMO_CONFIG, ROOT

BATCH_SIZE = 32
MINING = {"relative_margin": 0.05, "range_max": 50, "num_negatives": 5, "sampling_strategy": "top"}
# The reference has no near-duplicate rule, positive-similarity bound, calibration, adaptive depth or quality gate:
# those are off (mine.strategy fixed), and the coverage gate accepts what such mining leaves short.
NEGFORGE_SETTINGS = {"embed.batch_size": BATCH_SIZE, "output.exports": "[]", "dedup.eps": "null",
                     "mine.max_positive_similarity": "null", "mine.strategy": "fixed", "mine.max_depth": "null",
                     "validate.min_coverage": 0,
                     **{f"mine.{k}": v for k, v in MINING.items()}}

REFERENCE = """
import json, sys
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives
data, model_path, out, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
docs = {d["_id"]: f"{d['title']} {d['text']}".strip() for d in map(json.loads, open(f"{data}/corpus.jsonl"))}
queries = {q["_id"]: q["text"] for q in map(json.loads, open(f"{data}/queries.jsonl"))}
qrels = [line.rstrip("\\n").split("\\t") for line in open(f"{data}/qrels/train.tsv")][1:]
pairs = Dataset.from_dict({"anchor": [queries[q] for q, d, s in qrels], "positive": [docs[d] for q, d, s in qrels]})
model = SentenceTransformer(model_path, device="cpu")
rows = mine_hard_negatives(pairs, model, corpus=list(docs.values()), output_format="n-tuple", use_faiss=True,
                           verbose=False, **options)
rows.to_parquet(out)
"""


@dataclass(frozen=True)
class Measured:
    """One command's wall seconds, CPU seconds of its process tree (user + system), peak memory of the tree (PSS and
    RSS, MiB) and stdout."""

    seconds: float
    cpu_seconds: float
    peak_pss_mb: float
    peak_rss_mb: float
    stdout: str


SAMPLE_SECONDS = 1.0  # see the module docstring: sampling more often slows the measured processes


def _tree_memory(roots: list[psutil.Process]) -> tuple[float, float]:
    pss = rss = 0
    for process in [tree for root in roots for tree in (root, *root.children(recursive=True))]:
        try:
            info = process.memory_full_info()  # reads smaps_rollup
        except psutil.Error:  # exited between listing and reading
            continue
        pss, rss = pss + info.pss, rss + info.rss
    return pss / 2**20, rss / 2**20


def run_measured(args: list[str], log: Path, others: tuple[psutil.Process, ...] = ()) -> Measured:
    """Run a command from the repository root, stderr to `log`; stop the benchmark if it fails.

    CPU time counts every process of the tree that its parent waited for (all of negforge's and the reference's):
    on a shared machine it shows the work apart from the wait for a core. Peak memory also counts the trees of
    `others` (an external cluster's processes, which the command only talks to)."""
    start, used = time.perf_counter(), _children_cpu()
    with log.open("w") as errors:
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True)
        root, peak_pss, peak_rss = psutil.Process(process.pid), 0.0, 0.0
        while process.poll() is None:
            try:
                pss, rss = _tree_memory([root, *others])
                peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            except psutil.NoSuchProcess:
                pass
            time.sleep(SAMPLE_SECONDS)
        seconds = time.perf_counter() - start
        output = process.stdout.read()
    cpu = _children_cpu() - used
    if process.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(args[:4])} failed with exit code {process.returncode} (log: {log}):\n{tail}")
    return Measured(seconds, cpu, peak_pss, peak_rss, output)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reference_command(data: Path, model: str, out: Path) -> list[str]:
    options = MINING | {"batch_size": BATCH_SIZE}
    return [sys.executable, "-c", REFERENCE, str(data), model, str(out), json.dumps(options)]


def build_command(data: Path, work: Path, dataset: str, settings: dict[str, Any]) -> list[str]:
    """`negforge build` of the BEIR folder `data` into a registry and workdir under `work`, with `settings` on top of
    the benchmark's mining options."""
    command = [sys.executable, "-m", "negforge.flows.cli", "build", "--config", str(DEMO_CONFIG)]
    paths = {"input.corpus": data / "corpus.jsonl", "input.queries": data / "queries.jsonl",
             "input.qrels": data / "qrels" / "train.tsv", "publish.registry": work / "registry",
             "publish.dataset": dataset, "runtime.workdir": work / "negforge"}
    for key, value in (paths | NEGFORGE_SETTINGS | settings).items():
        command += ["--set", f"{key}={value}"]
    return command


def published_version(stdout: str) -> Path:
    """The version folder a build printed as its last line."""
    return Path(stdout.strip().splitlines()[-1])


def negatives_by_anchor(rows: pl.DataFrame) -> dict[str, set[str]]:
    columns = [c for c in rows.columns if c.startswith("negative_")]
    return {r["anchor"]: {r[c] for c in columns} for r in rows.iter_rows(named=True)}


def mean_jaccard(ours: Path, theirs: Path) -> float:
    """Mean over anchors (of either side) of the Jaccard index of the two negative sets; an anchor one side lacks
    counts 0."""
    a, b = negatives_by_anchor(pl.read_parquet(ours)), negatives_by_anchor(pl.read_parquet(theirs))
    anchors = set(a) | set(b)
    scores = [len(a.get(x, set()) & b.get(x, set())) / len(a.get(x, set()) | b.get(x, set())) for x in anchors]
    return sum(scores) / len(scores)


def median_and_spread(values: list[float], digits: int = 1) -> tuple[float, list[float]]:
    """The median and the [min, max] of repeated measurements."""
    def rounded(value: float) -> float:
        return round(value, digits or None)

    return rounded(statistics.median(values)), [rounded(min(values)), rounded(max(values))]


def migrate_prefect_database() -> None:
    """Bring the Prefect home's database up to date before anything is timed: a fresh home's migration takes about a
    minute, once, and is not negforge's work."""
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
