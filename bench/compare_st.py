"""negforge against sentence-transformers' `mine_hard_negatives` on SciFact train, each run in a fresh process.

Same model (bundled all-MiniLM-L6-v2), batch size 32 and options (relative_margin 0.05, range_max 50, 5 negatives,
top; negforge's near-duplicate and positive-similarity rules off, since the reference has neither). Runs the reference (use_faiss=True), a cold `negforge build` (empty embedding store) and a warm rebuild, samples
the memory of each process tree (Dask workers and the Prefect server included) and prints, as its last line, one
JSON object: st_s, negforge_cold_s, negforge_warm_s, ratio, warm_ratio, st_peak_mb, negforge_peak_mb, jaccard, stages.

    .venv/bin/python bench/compare_st.py [--data ../shared/data/scifact] [--work /tmp/negforge-bench]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import psutil

from bench_args import DEMO_CONFIG, ROOT, data_and_work
OPTIONS = {"relative_margin": 0.05, "range_max": 50, "num_negatives": 5, "sampling_strategy": "top"}

REFERENCE = """
import json, sys
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives
from negforge.tasks.model import resolve_model
data, out, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
docs = {d["_id"]: f"{d['title']} {d['text']}".strip() for d in map(json.loads, open(f"{data}/corpus.jsonl"))}
queries = {q["_id"]: q["text"] for q in map(json.loads, open(f"{data}/queries.jsonl"))}
qrels = [line.rstrip("\\n").split("\\t") for line in open(f"{data}/qrels/train.tsv")][1:]
pairs = Dataset.from_dict({"anchor": [queries[q] for q, d, s in qrels], "positive": [docs[d] for q, d, s in qrels]})
model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2").path, device="cpu")
rows = mine_hard_negatives(pairs, model, corpus=list(docs.values()), output_format="n-tuple", use_faiss=True,
                           batch_size=32, verbose=False, **options)
rows.to_parquet(out)
"""


def run_measured(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak resident MB summed over the process tree, and stdout of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root, peak = psutil.Process(process.pid), 0.0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    output = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(args[:4])} failed with exit code {process.returncode}")
    return seconds, peak, output


def negatives_by_anchor(rows: pl.DataFrame) -> dict[str, set[str]]:
    columns = [c for c in rows.columns if c.startswith("negative_")]
    return {r["anchor"]: {r[c] for c in columns} for r in rows.iter_rows(named=True)}


def mean_jaccard(a: dict[str, set[str]], b: dict[str, set[str]]) -> float:
    anchors = set(a) | set(b)
    scores = [len(a.get(x, set()) & b.get(x, set())) / len(a.get(x, set()) | b.get(x, set())) for x in anchors]
    return sum(scores) / len(scores)


def main() -> None:
    data, work = data_and_work(__doc__.splitlines()[0])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    st_s, st_mb, _ = run_measured([sys.executable, "-c", REFERENCE, str(data), str(work / "st.parquet"),
                                   json.dumps(OPTIONS)], ROOT)
    print(f"reference: {st_s:.1f} s, {st_mb:.0f} MB", file=sys.stderr)

    build = [sys.executable, "-m", "negforge.flows.cli", "build", "--config", str(DEMO_CONFIG)]
    for key, value in {"input.corpus": data / "corpus.jsonl", "input.queries": data / "queries.jsonl",
                       "input.qrels": data / "qrels" / "train.tsv", "publish.registry": work / "registry",
                       "publish.dataset": "scifact-train", "runtime.workdir": work / "negforge",
                       "output.exports": "[]", "embed.batch_size": 32, "dedup.eps": "null",
                       "mine.max_positive_similarity": "null",
                       **{f"mine.{k}": v for k, v in OPTIONS.items()}}.items():
        build += ["--set", f"{key}={value}"]
    cold_s, cold_mb, cold_out = run_measured(build, ROOT)
    print(f"negforge cold: {cold_s:.1f} s, {cold_mb:.0f} MB", file=sys.stderr)
    warm_s, warm_mb, _ = run_measured(build, ROOT)
    print(f"negforge warm: {warm_s:.1f} s, {warm_mb:.0f} MB", file=sys.stderr)

    version = Path(cold_out.strip().splitlines()[-1])
    manifest = json.loads((version / "manifest.json").read_text())
    ours = negatives_by_anchor(pl.read_parquet(version / "data"))
    theirs = negatives_by_anchor(pl.read_parquet(work / "st.parquet"))
    print(json.dumps({
        "st_s": round(st_s, 1), "negforge_cold_s": round(cold_s, 1), "negforge_warm_s": round(warm_s, 1),
        "ratio": round(cold_s / st_s, 3), "warm_ratio": round(warm_s / cold_s, 3),
        "st_peak_mb": round(st_mb), "negforge_peak_mb": round(max(cold_mb, warm_mb)),
        "jaccard": round(mean_jaccard(ours, theirs), 4), "stages": manifest["timings"],
    }))


if __name__ == "__main__":
    main()
