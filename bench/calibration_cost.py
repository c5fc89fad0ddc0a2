"""What `mine.strategy: auto` (calibration) adds to a build whose embeddings are warm and whose mining options
changed: SciFact train, `negforge build` with the defaults, `auto` against `fixed`, each in a fresh process.

A first build embeds the corpus and builds the BM25 index (both cached by content). Then each round changes the
mining options (`mine.num_negatives` 6, 7, ...) and builds once with each strategy, into two datasets, alternating
which goes first. Prints one JSON line per round (wall seconds of each command, the ratio, and the auto build's
calibration stages) and the median ratio with its spread (issue 11's target: auto <= 1.2x fixed).

    .venv/bin/python bench/calibration_cost.py [--data ../shared/data/scifact] [--rounds 3]
        [--work /tmp/negforge-bench-calibration]
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench_args import parser, timed_build


def build(data: Path, work: Path, strategy: str, negatives: int) -> tuple[float, dict]:
    """One `negforge build` of SciFact train with `strategy`: its wall seconds and manifest."""
    manifest, seconds, _ = timed_build(
        [f"input.corpus={data / 'corpus.jsonl'}", f"input.queries={data / 'queries.jsonl'}",
         f"input.qrels={data / 'qrels' / 'train.tsv'}", "validate.eval_qrels=null", "output.exports=[]",
         f"mine.strategy={strategy}", f"mine.num_negatives={negatives}", f"publish.registry={work / 'registry'}",
         f"publish.dataset=cost-{strategy}", f"runtime.workdir={work / 'negforge'}"], strategy)
    return seconds, manifest


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], work="/tmp/negforge-bench-calibration")
    arguments.add_argument("--rounds", type=int, default=3)
    args = arguments.parse_args()
    seconds, _ = build(args.data, args.work, "auto", 5)
    print(json.dumps({"warm_up_seconds": round(seconds, 1)}), flush=True)
    ratios = []
    for number in range(args.rounds):
        negatives = 6 + number
        order = ("fixed", "auto") if number % 2 == 0 else ("auto", "fixed")
        measured = {strategy: build(args.data, args.work, strategy, negatives) for strategy in order}
        (fixed, _), (auto, manifest) = measured["fixed"], measured["auto"]
        ratios.append(auto / fixed)
        print(json.dumps({"round": number, "num_negatives": negatives, "first": order[0],
                          "fixed_seconds": round(fixed, 1), "auto_seconds": round(auto, 1),
                          "ratio": round(auto / fixed, 3),
                          "calibrate_seconds": manifest["timings"].get("calibrate"),
                          "lexical_index_seconds": manifest["timings"].get("lexical_index"),
                          "chosen": manifest["calibration"]["choice"]}), flush=True)
    print(json.dumps({"rounds": len(ratios), "ratio_median": round(statistics.median(ratios), 3),
                      "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3)}), flush=True)


if __name__ == "__main__":
    main()
