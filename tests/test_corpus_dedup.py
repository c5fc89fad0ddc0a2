"""Corpus deduplication: near-duplicate documents leave the corpus before searching, positives never do, and the
dropped ids with the kept document of their group are recorded in the version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from negforge.schemas.stages import VectorFile
from negforge.tasks.mining.corpus_dedup import choose_kept, near_duplicate_pairs
from tests.conftest import DEMO, beir_subset, run_cli
from tests.test_near_duplicates import _edit


def _unit(angle_degrees: float) -> list[float]:
    return [np.cos(np.radians(angle_degrees)), np.sin(np.radians(angle_degrees))]


def test_chains_are_not_merged_and_positives_stay(tmp_path):
    # rows 0..3 at 0, 6, 12, 50 degrees: 0~6 and 6~12 are within cosine 0.99, 0~12 is not; row 3 is alone
    vectors = np.array([_unit(a) for a in (0, 6, 12, 50)], dtype=np.float32)
    np.save(tmp_path / "corpus.npy", vectors)
    corpus = VectorFile(str(tmp_path / "corpus.npy"), 4, vectors.shape[1])
    pairs = [near_duplicate_pairs(a, b, corpus, block, 0.99, str(tmp_path / f"p{a}-{block}.parquet"))
             for a, b, block in ((0, 2, 2), (2, 4, 2))]
    found = pl.concat([pl.read_parquet(p) for p in pairs]).sort("doc_row")
    assert found.select("doc_row", "other_row").rows() == [(1, 0), (2, 1)]
    whole = pl.read_parquet(near_duplicate_pairs(0, 4, corpus, 1, 0.99, str(tmp_path / "whole.parquet")))
    assert whole.sort("doc_row").equals(found)  # the same pairs and cosines for any cut
    text = pl.DataFrame({"row": range(4), "id": ["a", "b", "c", "d"], "text": ["x"] * 4},
                        schema={"row": pl.UInt32, "id": pl.String, "text": pl.String})
    text.write_parquet(tmp_path / "corpus.parquet")

    def dropped(positive_rows: list[int]) -> list[tuple[str, str]]:
        pl.DataFrame({"doc_row": positive_rows}, schema={"doc_row": pl.UInt32}).write_parquet(tmp_path / "pos.parquet")
        out = choose_kept(pairs, str(tmp_path / "pos.parquet"), [str(tmp_path / "corpus.parquet")], str(tmp_path))
        return pl.read_parquet(out.corpus_duplicates).select("dropped_id", "kept_id").rows()

    assert dropped([]) == [("b", "a")]  # c was near b only, and b was dropped: c stays (no chaining)
    assert dropped([1]) == [("a", "b"), ("c", "b")]  # the positive b is visited first and kept
    assert dropped([0, 1]) == [("c", "b")]  # two near-duplicate positives both stay


@pytest.mark.slow
def test_near_copies_leave_the_corpus_and_positives_stay(tmp_path, prefect_server):
    folder = beir_subset(DEMO, tmp_path / "data", 30, 150)
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    qrels = [line.split("\t") for line in (folder / "qrels/train.tsv").read_text().splitlines()[1:]]
    positive_ids = {doc for _, doc, _ in qrels}
    others = [d for d in docs if d["_id"] not in positive_ids][:10]
    positive_docs = [d for d in docs if d["_id"] in positive_ids][:10]
    # copies of positives go first in the file: corpus order alone would keep them and drop the positives
    copies = [{"_id": f"copy-{d['_id']}", "title": d["title"], "text": _edit(d["text"], "change")}
              for d in positive_docs]
    extra = [{"_id": f"copy-{d['_id']}", "title": d["title"], "text": _edit(d["text"], "add")} for d in others]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in copies + docs + extra))
    config = tmp_path / "build.yaml"
    config.write_text(f"input: {{corpus: {folder / 'corpus.jsonl'}, queries: {folder / 'queries.jsonl'}, "
                      f"qrels: {folder / 'qrels/train.tsv'}}}\nmine: {{num_negatives: 3}}\n"
                      f"dedup: {{corpus: true}}\npublish: {{registry: {tmp_path / 'registry'}, dataset: dedup}}\n"
                      f"runtime: {{workdir: {tmp_path / 'work'}, n_workers: 2, shard_size: 64}}\n")
    version = Path(run_cli("build", "--config", str(config)).stdout.strip().splitlines()[-1])
    record = pl.read_parquet(version / "candidates" / "corpus-duplicates.parquet")
    pairs = set(record.select("dropped_id", "kept_id").rows())
    expected = {(c["_id"], c["_id"].removeprefix("copy-")) for c in copies + extra}
    assert len(pairs & expected) >= 18  # one-word edits are within the default eps (97% on SciFact)
    assert not set(record["dropped_id"]) & positive_ids
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["corpus_dedup"]["dropped"] == record.height
    hits = pl.read_parquet(version / "candidates" / "hits.parquet")
    stored = pl.read_parquet(version / "candidates" / "documents.parquet").select("row", "id")
    searched = set(hits.join(stored, left_on="doc_row", right_on="row")["id"])
    assert not searched & set(record["dropped_id"])  # dropped documents are never candidates
