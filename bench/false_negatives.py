"""How many mined negatives are really positives, per mining setting, on SciFact train.

For the train queries with several positives, one positive is kept and the others are hidden from mining and given
to the audit (`audit.qrels`) as held-out judgements. Each setting is a real `negforge build` (top sampling,
5 negatives, range_max 50; the embedding store is shared, so only the first run embeds). Prints one JSON line per
setting: setting, n_queries, false_negative_rate, ci95, coverage, mean_negative_score.

    .venv/bin/python bench/false_negatives.py [--data ../shared/data/scifact] [--work /tmp/negforge-bench]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench_args import DEMO_CONFIG, ROOT, data_and_work
SETTINGS = {  # each on top of the config defaults, with max_positive_similarity off unless named
    "plain top-k": ["mine.relative_margin=null"],
    "relative_margin 0.05": ["mine.relative_margin=0.05"],
    "relative_margin 0.1": ["mine.relative_margin=0.1"],
    "absolute_margin 0.1": ["mine.relative_margin=null", "mine.absolute_margin=0.1"],
    "relative_margin 0.05, max_score 0.7": ["mine.relative_margin=0.05", "mine.max_score=0.7"],
    "relative_margin 0.05, max_positive_similarity 0.8": ["mine.relative_margin=0.05",
                                                          "mine.max_positive_similarity=0.8"],
}


def split_qrels(source: Path, work: Path) -> tuple[Path, Path, int]:
    """Training qrels with one positive per query, and the hidden positives as held-out judgements."""
    rows = [line.split("\t") for line in source.read_text().splitlines()[1:] if line.strip()]
    rows = list({(q, d): (q, d, s) for q, d, s in rows}.values())  # a repeated qrel is one positive
    seen: set[str] = set()
    train, hidden = [], []
    for query, doc, score in rows:
        (hidden if query in seen else train).append(f"{query}\t{doc}\t{score}")
        seen.add(query)
    header = "query-id\tcorpus-id\tscore"
    (work / "train-one.tsv").write_text("\n".join([header, *train]) + "\n")
    (work / "hidden.tsv").write_text("\n".join([header, *hidden]) + "\n")
    return work / "train-one.tsv", work / "hidden.tsv", len({h.split("\t")[0] for h in hidden})


def main() -> None:
    data, work = data_and_work(__doc__.splitlines()[0])
    (work / "audit").mkdir(parents=True, exist_ok=True)
    train, hidden, hidden_queries = split_qrels(data / "qrels" / "train.tsv", work / "audit")
    print(f"{hidden_queries} queries have hidden positives", file=sys.stderr)
    for number, (name, overrides) in enumerate(SETTINGS.items()):
        command = [sys.executable, "-m", "negforge.flows.cli", "build", "--config", str(DEMO_CONFIG)]
        for override in [f"input.corpus={data / 'corpus.jsonl'}", f"input.queries={data / 'queries.jsonl'}",
                         f"input.qrels={train}", f"audit.qrels={hidden}", "validate.eval_qrels=null",
                         "mine.num_negatives=5", "mine.range_max=50", "output.exports=[]",
                         f"publish.registry={work / 'audit' / 'registry'}", f"publish.dataset=audit-{number}",
                         f"runtime.workdir={work / 'negforge'}", "mine.max_positive_similarity=null", *overrides]:
            command += ["--set", override]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name}: negforge build failed:\n{done.stderr[-2000:]}")
        manifest = json.loads((Path(done.stdout.strip().splitlines()[-1]) / "manifest.json").read_text())
        report = manifest["audit"]
        print(json.dumps({"setting": name, "n_queries": report["n_queries"],
                          "false_negative_rate": report["false_negative_rate"], "ci95": report["ci95"],
                          "coverage": report["coverage"], "mean_negative_score": report["negative_score"]["mean"],
                          "by_reason": report["by_reason"]}), flush=True)


if __name__ == "__main__":
    main()
