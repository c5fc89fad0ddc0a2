"""Stage tables are declared once, in schemas/tables.py: the tables of corpus deduplication are written with the
schemas declared there."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from negforge.schemas.stages import VectorFile
from negforge.schemas.tables import CORPUS_PAIRS, POSITIVES, TEXT_SHARD, check, frame
from negforge.tasks.mining.corpus_dedup import choose_kept, near_duplicate_pairs


def test_corpus_deduplication_writes_its_declared_pairs(tmp_path):
    vectors = np.array([[1, 0], [0.9999, 0.0141], [0, 1]], dtype=np.float32)
    np.save(tmp_path / "c0.npy", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    corpus = VectorFile(str(tmp_path / "c0.npy"), 3, 2)
    pairs = check(CORPUS_PAIRS, pl.read_parquet(near_duplicate_pairs(0, 3, corpus, 3, 0.99,
                                                                     str(tmp_path / "pairs.parquet"))), "pairs")
    assert pairs.select("doc_row", "other_row").rows() == [(1, 0)]
    frame(TEXT_SHARD, {"row": [0, 1, 2], "text_hash": ["h0", "h1", "h2"], "id": ["a", "b", "c"],
                       "text": ["x", "y", "z"], "length": [1, 1, 1]}).write_parquet(tmp_path / "corpus.parquet")
    frame(POSITIVES, {"query_row": [], "query_id": [], "doc_row": [], "positive_id": [], "text_hash": [],
                      "canonical": []}).write_parquet(tmp_path / "positives.parquet")
    kept = choose_kept([str(tmp_path / "pairs.parquet")], str(tmp_path / "positives.parquet"),
                       [str(tmp_path / "corpus.parquet")], str(tmp_path / "dedup"))
    assert pl.read_parquet(kept.corpus_duplicates).rows() == [("b", "a", pytest.approx(pairs["cosine"][0]))]

