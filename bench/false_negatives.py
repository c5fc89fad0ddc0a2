"""The false-negative frontier of mining settings on any BEIR folder, over nested folds of hidden positives.

Two protocols. `--known K` (the users' regime: one or two labelled positives per query while many more documents are
relevant and unlabelled): in each of --folds seeded outer folds, every query keeps K of its positives (drawn by a
generator seeded by the fold and the query) and hides all the others, which go to the audit (`audit.qrels`); queries
with K positives or fewer hide nothing and are mined but not audited. Without `--known` (hide one): every query with
two or more positives hides one of them and keeps the others, the regime of a dataset whose positives are all
labelled. Each setting is a real `negforge build` (5 negatives, range_max 50, top sampling; the embedding store is
shared, so only the first build embeds): plain top-k, the old default (relative_margin 0.05,
max_positive_similarity 0.8, no adaptive depth), the fixed default (`mine.strategy: fixed`, the config's defaults)
and auto (the defaults; with `--known 1` no query has two positives left, so auto mines with its declared default,
unmeasured). The last two keep the default `validate.min_coverage`, so their gate may refuse a build: that is
reported (`refused`, with the gate's message) and the bench goes on; the first two run with it at 0 (their coverage
is measured). Prints one JSON line per setting and fold, then the frontier: per setting, the mean over folds
of the false-negative rate, its 95% interval's bounds, its ratio to plain top-k's, the coverage and the hardness
(mean negative score over plain top-k's in the same fold), the build seconds, what auto chose and its estimate.

    .venv/bin/python bench/false_negatives.py [--data ../shared/data/scifact] [--qrels qrels/train.tsv]
        [--known 1] [--folds 3] [--settings "plain top-k,auto"] [--set mine.calibration_folds=5]
        [--work /tmp/negforge-bench]
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
    "fixed default": ["mine.strategy=fixed"],
    "auto": [],
}
COMMON = ["mine.num_negatives=5", "mine.range_max=50", "output.exports=[]", "validate.eval_qrels=null"]
HEADER = "query-id\tcorpus-id\tscore"


def _positives(qrels: Path) -> tuple[list[list[str]], dict[str, list[str]]]:
    """The qrels rows and each query's positive documents in file order."""
    rows = [line.split("\t") for line in qrels.read_text().splitlines()[1:] if line.strip()]
    positives: dict[str, list[str]] = {}
    for query, doc, score in rows:
        if float(score) > 0 and doc not in positives.setdefault(query, []):
            positives[query].append(doc)
    return rows, positives


def hidden_positives(qrels: Path, fold: int, known: int | None) -> tuple[list[list[str]], dict[str, set[str]]]:
    """The qrels rows and, per query, the positives the fold hides: all but `known` of them (drawn by a generator
    seeded by the fold and the query), or one of each multi-positive query's (known None)."""
    rows, positives = _positives(qrels)
    hidden: dict[str, set[str]] = {}
    for query, docs in positives.items():
        rng = random.Random(f"{fold}:{query}")
        if known is None:
            hidden[query] = {rng.choice(sorted(docs))} if len(docs) >= 2 else set()
        else:
            kept = set(rng.sample(sorted(docs), known)) if len(docs) > known else set(docs)
            hidden[query] = set(docs) - kept
    return rows, {query: docs for query, docs in hidden.items() if docs}


def split_qrels(qrels: Path, fold: int, known: int | None, out: Path) -> tuple[Path, Path]:
    """Mining qrels without the fold's hidden positives, and the hidden positives as held-out judgements."""
    rows, hidden = hidden_positives(qrels, fold, known)
    kept = [(q, d, s) for q, d, s in rows if d not in hidden.get(q, ())]
    out.mkdir(parents=True, exist_ok=True)
    (out / "mine.tsv").write_text("\n".join([HEADER, *("\t".join(r) for r in kept)]) + "\n")
    (out / "hidden.tsv").write_text("\n".join([HEADER, *(f"{q}\t{d}\t1" for q, docs in hidden.items()
                                                         for d in sorted(docs))]) + "\n")
    return out / "mine.tsv", out / "hidden.tsv"


def build(data: Path, qrels: Path, hidden: Path, work: Path, dataset: str,
          overrides: list[str]) -> tuple[dict | None, float, str]:
    """One `negforge build` in a fresh process: its manifest (None: refused), wall seconds and the refusal."""
    return timed_build([f"input.corpus={data / 'corpus.jsonl'}", f"input.queries={data / 'queries.jsonl'}",
                        f"input.qrels={qrels}", f"audit.qrels={hidden}", f"publish.registry={work / 'registry'}",
                        f"publish.dataset={dataset}", f"runtime.workdir={work / 'negforge'}", *COMMON, *overrides],
                       dataset, refusals=True)


def _measured(name: str, fold: int, manifest: dict, seconds: float, plain: dict | None) -> dict:
    audit, calibration = manifest["audit"], manifest.get("calibration")
    if not audit.get("n_queries"):
        raise SystemExit("no query hides a positive in this protocol: nothing to audit (lower --known)")
    row = {"setting": name, "fold": fold, "n_queries": audit["n_queries"],
           "false_negative_rate": audit["false_negative_rate"], "ci95": audit["ci95"], "coverage": audit["coverage"],
           "gate_coverage": round(1 - manifest["short_queries"]["count"] / manifest["counts"]["queries_used"], 4),
           "mean_negative_score": audit["negative_score"]["mean"], "seconds": round(seconds, 1),
           "timings": manifest["timings"], "chosen": calibration and calibration["choice"],
           "outcome": calibration and calibration["outcome"], "estimate": calibration and calibration.get("estimate"),
           "topic": manifest.get("topic")}
    if plain is None:  # plain top-k itself
        return row | {"hardness": 1.0, "vs_plain": 1.0}
    rate = plain["false_negative_rate"]
    return row | {"hardness": round(row["mean_negative_score"] / plain["mean_negative_score"], 4),
                  "vs_plain": round(row["false_negative_rate"] / rate, 4) if rate else None}


def _frontier(name: str, rows: list[dict], refused: list[dict]) -> dict:
    mean = lambda key: round(statistics.mean(r[key] for r in rows), 4) if rows else None  # noqa: E731
    return {"frontier": name, "folds": len(rows), "refused": len(refused), "n_queries": mean("n_queries"),
            "false_negative_rate": mean("false_negative_rate"),
            "ci95": [round(statistics.mean(r["ci95"][i] for r in rows), 4) for i in (0, 1)] if rows else None,
            "vs_plain": mean("vs_plain") if all(r["vs_plain"] is not None for r in rows) else None,
            "coverage": mean("coverage"), "gate_coverage": mean("gate_coverage"), "hardness": mean("hardness"),
            "seconds": mean("seconds"), "chosen": [r["chosen"] for r in rows],
            "estimates": [r["estimate"] for r in rows]}


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--qrels", default=None, help="qrels inside --data (default: qrels/train.tsv if present, "
                                                          "else qrels/test.tsv)")
    arguments.add_argument("--known", type=int, default=None, help="positives each query keeps (the others are "
                                                                     "hidden); default: hide one of each")
    arguments.add_argument("--folds", type=int, default=3, help="outer folds, each hiding other positives")
    arguments.add_argument("--settings", default=",".join(SETTINGS),
                           help="comma-separated, from: " + ", ".join(SETTINGS))
    arguments.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                           help="a config override for every build (repeatable)")
    args = arguments.parse_args()
    names = [name.strip() for name in args.settings.split(",")]
    unknown = [name for name in names if name not in SETTINGS]
    if unknown or args.folds < 1 or (args.known is not None and args.known < 1):
        arguments.error(f"unknown settings {unknown}" if unknown else "--folds and --known must be at least 1")
    names = ["plain top-k", *[name for name in names if name != "plain top-k"]]  # the hardness baseline
    qrels = args.data / (args.qrels or ("qrels/train.tsv" if (args.data / "qrels/train.tsv").exists()
                                        else "qrels/test.tsv"))
    protocol = f"known{args.known}" if args.known else "hide-one"
    results: dict[str, list[dict]] = {name: [] for name in names}
    refusals: dict[str, list[dict]] = {name: [] for name in names}
    for fold in range(args.folds):
        mining, hidden = split_qrels(qrels, fold, args.known, args.work / "folds" / f"{protocol}-{fold}")
        plain = None
        for number, name in enumerate(names):
            manifest, seconds, refusal = build(args.data, mining, hidden, args.work, f"{protocol}-fold{fold}-{number}",
                                               SETTINGS[name] + args.overrides)
            if manifest is None:
                row = {"setting": name, "fold": fold, "protocol": protocol, "refused": refusal}
                refusals[name].append(row)
            else:
                row = _measured(name, fold, manifest, seconds, plain) | {"protocol": protocol}
                plain = plain or row
                results[name].append(row)
            print(json.dumps(row), flush=True)
    for name in names:
        print(json.dumps(_frontier(name, results[name], refusals[name]) | {"protocol": protocol}), flush=True)


if __name__ == "__main__":
    main()
