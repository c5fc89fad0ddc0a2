"""The false-negative frontier of mining settings on any BEIR folder, over nested folds of hidden positives.

In each of --folds seeded outer folds, every query with two or more positives hides one of them from mining (the
others stay, so that calibration, inside the build, still sees multi-positive queries) and the hidden one goes to
the audit (`audit.qrels`). Each setting is a real `negforge build` (5 negatives, range_max 50, top sampling; the
embedding store is shared, so only the first build embeds): plain top-k, the old default (relative_margin 0.05,
max_positive_similarity 0.8, no adaptive depth), the new fixed default (`mine.strategy: fixed`, the config's
defaults) and auto (the new defaults). The two new ones keep the default `validate.min_coverage`, so a build that
the coverage gate refuses stops the benchmark; the two old ones run with it at 0 (their coverage is measured).
Prints one JSON line per setting and fold, then the frontier: per setting, the mean over folds of the false-negative
rate, its 95% interval's bounds, the coverage and the hardness (mean negative score over plain top-k's in the same
fold), the build seconds, and what auto chose.

    .venv/bin/python bench/false_negatives.py [--data ../shared/data/scifact] [--qrels qrels/train.tsv]
        [--folds 3] [--settings "plain top-k,auto"] [--set mine.calibration_folds=5] [--work /tmp/negforge-bench]
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from bench_args import parser, timed_build

SETTINGS = {
    "plain top-k": ["mine.strategy=fixed", "mine.relative_margin=null", "mine.max_positive_similarity=null",
                    "mine.max_depth=null", "validate.min_coverage=0"],
    "old default": ["mine.strategy=fixed", "mine.relative_margin=0.05", "mine.max_positive_similarity=0.8",
                    "mine.max_depth=null", "validate.min_coverage=0"],
    "new fixed default": ["mine.strategy=fixed"],
    "auto": [],
}
COMMON = ["mine.num_negatives=5", "mine.range_max=50", "output.exports=[]", "validate.eval_qrels=null"]
HEADER = "query-id\tcorpus-id\tscore"


def hide_one(qrels: Path, fold: int, out: Path) -> tuple[Path, Path]:
    """Mining qrels without one positive of each multi-positive query (chosen by a generator seeded by the fold),
    and the hidden positives as held-out judgements."""
    rows = [line.split("\t") for line in qrels.read_text().splitlines()[1:] if line.strip()]
    positives: dict[str, list[str]] = {}
    for query, doc, score in rows:
        if float(score) > 0 and doc not in positives.setdefault(query, []):
            positives[query].append(doc)
    rng = random.Random(fold)
    hidden = {query: rng.choice(sorted(docs)) for query, docs in positives.items() if len(docs) >= 2}
    kept = [(q, d, s) for q, d, s in rows if hidden.get(q) != d]
    out.mkdir(parents=True, exist_ok=True)
    (out / "mine.tsv").write_text("\n".join([HEADER, *("\t".join(r) for r in kept)]) + "\n")
    (out / "hidden.tsv").write_text("\n".join([HEADER, *(f"{q}\t{d}\t1" for q, d in hidden.items())]) + "\n")
    return out / "mine.tsv", out / "hidden.tsv"


def build(data: Path, qrels: Path, hidden: Path, work: Path, dataset: str, overrides: list[str]) -> tuple[dict, float]:
    """One `negforge build` in a fresh process: its manifest and wall seconds."""
    return timed_build([f"input.corpus={data / 'corpus.jsonl'}", f"input.queries={data / 'queries.jsonl'}",
                        f"input.qrels={qrels}", f"audit.qrels={hidden}", f"publish.registry={work / 'registry'}",
                        f"publish.dataset={dataset}", f"runtime.workdir={work / 'negforge'}", *COMMON, *overrides],
                       dataset)


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--qrels", default=None, help="qrels inside --data (default: qrels/train.tsv if present, "
                                                          "else qrels/test.tsv)")
    arguments.add_argument("--folds", type=int, default=3, help="outer folds, each hiding other positives")
    arguments.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    arguments.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                           help="a config override for every build (repeatable)")
    args = arguments.parse_args()
    names = [name.strip() for name in args.settings.split(",")]
    unknown = [name for name in names if name not in SETTINGS]
    if unknown or args.folds < 1:
        arguments.error(f"unknown settings {unknown}" if unknown else "--folds must be at least 1")
    names = ["plain top-k", *[name for name in names if name != "plain top-k"]]  # the hardness baseline
    qrels = args.data / (args.qrels or ("qrels/train.tsv" if (args.data / "qrels/train.tsv").exists()
                                        else "qrels/test.tsv"))
    results: dict[str, list[dict]] = {name: [] for name in names}
    for fold in range(args.folds):
        mining, hidden = hide_one(qrels, fold, args.work / "folds" / f"fold-{fold}")
        for number, name in enumerate(names):
            manifest, seconds = build(args.data, mining, hidden, args.work, f"fold{fold}-{number}",
                                      SETTINGS[name] + args.overrides)
            audit, calibration = manifest["audit"], manifest.get("calibration")
            row = {"setting": name, "fold": fold, "n_queries": audit["n_queries"],
                   "false_negative_rate": audit["false_negative_rate"], "ci95": audit["ci95"],
                   "coverage": audit["coverage"], "mean_negative_score": audit["negative_score"]["mean"],
                   "seconds": round(seconds, 1), "timings": manifest["timings"],
                   "chosen": calibration and (calibration["choice"] or calibration["outcome"])}
            row["hardness"] = round(row["mean_negative_score"] / results["plain top-k"][fold]["mean_negative_score"]
                                    if name != "plain top-k" else 1.0, 4)
            results[name].append(row)
            print(json.dumps(row), flush=True)
    plain = statistics.mean(r["false_negative_rate"] for r in results["plain top-k"])
    for name, rows in results.items():
        mean = lambda key: round(statistics.mean(r[key] for r in rows), 4)  # noqa: E731
        print(json.dumps({"frontier": name, "folds": len(rows), "n_queries": mean("n_queries"),
                          "false_negative_rate": mean("false_negative_rate"),
                          "ci95": [round(statistics.mean(r["ci95"][i] for r in rows), 4) for i in (0, 1)],
                          "vs_plain": round(mean("false_negative_rate") / plain, 3) if plain else None,
                          "coverage": mean("coverage"), "hardness": mean("hardness"), "seconds": mean("seconds"),
                          "chosen": [r["chosen"] for r in rows]}), flush=True)


if __name__ == "__main__":
    main()
