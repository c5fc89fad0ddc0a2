"""Rebuild this demo subset from the full SciFact copy: `python data/scifact-demo/make_subset.py ../shared/data/scifact`.

Takes the first 300 train queries (qrels order) and the first 100 test queries with their positive documents, then
every third remaining document up to 1,500 documents, so mining has real competition. Deterministic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAIN_QUERIES, TEST_QUERIES, DOCUMENTS = 300, 100, 1500


def _qrels(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]


def _first_queries(rows: list[list[str]], count: int) -> list[list[str]]:
    chosen: list[str] = []
    for query, _, _ in rows:
        if query not in chosen and len(chosen) < count:
            chosen.append(query)
    return [row for row in rows if row[0] in chosen]


def main(source: Path, target: Path) -> None:
    train = _first_queries(_qrels(source / "qrels/train.tsv"), TRAIN_QUERIES)
    test = _first_queries(_qrels(source / "qrels/test.tsv"), TEST_QUERIES)
    corpus = [json.loads(line) for line in (source / "corpus.jsonl").read_text().splitlines()]
    needed = {doc for _, doc, _ in train + test}
    others = [d["_id"] for d in corpus if d["_id"] not in needed][::3]
    keep = needed | set(others[: DOCUMENTS - len(needed)])
    queries = {q for q, _, _ in train + test}
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    with (target / "corpus.jsonl").open("w") as out:
        for doc in corpus:
            if doc["_id"] in keep:
                out.write(json.dumps({"_id": doc["_id"], "title": doc["title"], "text": doc["text"]}) + "\n")
    with (target / "queries.jsonl").open("w") as out:
        for line in (source / "queries.jsonl").read_text().splitlines():
            query = json.loads(line)
            if query["_id"] in queries:
                out.write(json.dumps({"_id": query["_id"], "text": query["text"]}) + "\n")
    for name, rows in (("train", train), ("test", test)):
        lines = ["query-id\tcorpus-id\tscore"] + ["\t".join(row) for row in rows]
        (target / "qrels" / f"{name}.tsv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
