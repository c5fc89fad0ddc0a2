"""Stage tables are declared once, in schemas/tables.py: the tables of corpus deduplication and of rescoring batches
are written with the schemas declared there."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from negforge.schemas.tables import CORPUS_PAIRS, HITS, POSITIVES, RESCORE_PAIRS, TEXT_SHARD, check, frame
from negforge.tasks.corpus_dedup import choose_kept, near_duplicate_pairs
from negforge.tasks.rescore import plan_batches


def test_corpus_deduplication_writes_its_declared_pairs(tmp_path):
    vectors = np.array([[1, 0], [0.9999, 0.0141], [0, 1]], dtype=np.float32)
    np.save(tmp_path / "c0.npy", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    pairs = check(CORPUS_PAIRS, pl.read_parquet(near_duplicate_pairs(0, [str(tmp_path / "c0.npy")], 3, 0.99,
                                                                     str(tmp_path / "pairs.parquet"))), "pairs")
    assert pairs.select("doc_row", "other_row").rows() == [(1, 0)]
    frame(TEXT_SHARD, {"row": [0, 1, 2], "text_hash": ["h0", "h1", "h2"], "id": ["a", "b", "c"],
                       "text": ["x", "y", "z"]}).write_parquet(tmp_path / "corpus.parquet")
    frame(POSITIVES, {"query_row": [], "query_id": [], "doc_row": [], "positive_id": [], "text_hash": [],
                      "canonical": []}).write_parquet(tmp_path / "positives.parquet")
    kept = choose_kept([str(tmp_path / "pairs.parquet")], str(tmp_path / "positives.parquet"),
                       [str(tmp_path / "corpus.parquet")], str(tmp_path / "dedup"))
    assert pl.read_parquet(kept["corpus_duplicates"]).rows() == [("b", "a", pytest.approx(pairs["cosine"][0]))]


def test_rescoring_batches_hold_the_declared_pairs(tmp_path):
    hits = frame(HITS, {"query_row": [0, 0, 1], "doc_row": [3, 4, 3], "score": [0.5, 0.4, 0.3]})
    hits.write_parquet(tmp_path / "hits.parquet")
    frame(POSITIVES, {"query_row": [0, 1], "query_id": ["q0", "q1"], "doc_row": [1, 2], "positive_id": ["p1", "p2"],
                      "text_hash": ["h1", "h2"], "canonical": [True, True]}).write_parquet(tmp_path / "pos.parquet")
    batches = plan_batches(str(tmp_path / "hits.parquet"), str(tmp_path / "pos.parquet"), 2, str(tmp_path / "out"))
    pairs = pl.concat([check(RESCORE_PAIRS, pl.read_parquet(path), path) for path in batches])
    assert pairs.rows() == [(0, 1), (0, 3), (0, 4), (1, 2), (1, 3)]
