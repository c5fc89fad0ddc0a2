"""Ingest: BEIR and pairs layouts in every file format, exact dedup, query merging, positives, row accounting."""

from __future__ import annotations

import json

import polars as pl
import pytest

from negforge.schemas.config import InputConfig
from negforge.tasks.ingest.ingest import ingest
from negforge.tasks.ingest.readers import InputError
from tests.conftest import write_beir

DOCS = [{"_id": "d1", "title": "T1", "text": "alpha"}, {"_id": "d2", "title": "T2", "text": "beta"},
        {"_id": "d3", "title": "T1", "text": "alpha  "},  # same text as d1 after normalization
        {"_id": "d4", "title": "", "text": "gamma"}]
QUERIES = [{"_id": "q1", "text": "what is alpha"}, {"_id": "q2", "text": "what is beta"},
           {"_id": "q3", "text": "what  is alpha"},  # same text as q1
           {"_id": "q4", "text": "no positives"}]
QRELS = [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d4", 1), ("q4", "d2", 0)]


def _ingest(tmp_path, **overrides):
    folder = write_beir(tmp_path / "beir", DOCS, QUERIES, QRELS)
    cfg = InputConfig(corpus=str(folder / "corpus.jsonl"), queries=str(folder / "queries.jsonl"),
                      qrels=str(folder / "qrels/train.tsv"), **overrides)
    return ingest(cfg, tmp_path / "out", shard_size=2)


def test_exact_duplicate_texts_are_one_text_and_shards_have_the_configured_size(tmp_path):
    summary = _ingest(tmp_path)
    assert summary.counts.documents == 4 and summary.counts.unique_texts == 3
    shards = [pl.read_parquet(p) for p in summary.texts.corpus_files]
    assert [s.height for s in shards] == [2, 1]
    assert pl.concat(shards)["text"].to_list() == ["T1 alpha", "T2 beta", "gamma"]


def test_queries_with_the_same_text_merge_with_the_union_of_positives(tmp_path):
    summary = _ingest(tmp_path)
    positives = pl.read_parquet(summary.texts.positives)
    assert summary.counts.queries_used == 2 and summary.counts.queries_unused == 1
    q1 = positives.filter(pl.col("query_id") == "q1")
    assert q1["positive_id"].to_list() == ["d1", "d4"]


def test_positive_threshold_is_configurable(tmp_path):
    summary = _ingest(tmp_path, positive_threshold=-1)
    assert summary.counts.queries_used == 3  # q4's score-0 qrel now counts


def test_rows_are_accounted_for(tmp_path):
    summary = _ingest(tmp_path)
    for entry in summary.inputs:
        assert entry["rows_accepted"] + entry["rows_rejected"] == entry["rows_read"]
        assert len(entry["sha256"]) == 64
    assert [e["rows_read"] for e in summary.inputs] == [4, 4, 4]


def _pairs_file(tmp_path, fmt: str) -> str:
    rows = {"anchor": ["a?", "b?", "a?"], "positive": ["doc a", "doc b", "doc a2"]}
    path = tmp_path / f"pairs.{fmt}"
    frame = pl.DataFrame(rows)
    {"parquet": frame.write_parquet, "csv": frame.write_csv, "jsonl": frame.write_ndjson,
     "tsv": lambda p: frame.write_csv(p, separator="\t")}[fmt](path)
    return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "tsv"])
def test_pairs_in_every_format(tmp_path, fmt):
    cfg = InputConfig(pairs=[_pairs_file(tmp_path, fmt)])
    summary = ingest(cfg, tmp_path / "out", shard_size=10)
    assert summary.counts.queries_used == 2 and summary.counts.unique_texts == 3
    positives = pl.read_parquet(summary.texts.positives)
    assert positives.group_by("query_row").len().sort("query_row")["len"].to_list() == [2, 1]


def test_pairs_file_with_one_column_is_an_error_naming_file_and_column(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"anchor": "x"}) + "\n")
    with pytest.raises(InputError, match=r"pairs\.jsonl: no column 'positive'"):
        ingest(InputConfig(pairs=[str(path)]), tmp_path / "out", shard_size=10)


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl: file not found"):
        ingest(InputConfig(pairs=[str(tmp_path / "nope.jsonl")]), tmp_path / "out", shard_size=10)


def test_too_many_rejects_stop_with_the_commonest_reasons(tmp_path):
    folder = write_beir(tmp_path / "beir", DOCS, QUERIES, QRELS)
    with (folder / "corpus.jsonl").open("a") as handle:
        handle.write("{not json\n")
    cfg = InputConfig(corpus=str(folder / "corpus.jsonl"), queries=str(folder / "queries.jsonl"),
                      qrels=str(folder / "qrels/train.tsv"))
    with pytest.raises(InputError, match=r"malformed_json \(1\).*rejects\.parquet"):
        ingest(cfg, tmp_path / "out", shard_size=2)
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert rejects.select("line", "reason").row(0) == (5, "malformed_json")


def test_inputs_are_read_through_fsspec_urls(tmp_path):
    import fsspec

    with fsspec.open("memory://negforge-test/pairs.jsonl", "w") as handle:
        handle.write('{"anchor": "a?", "positive": "doc a"}\n{"anchor": "b?", "positive": "doc b"}\n')
    summary = ingest(InputConfig(pairs=["memory://negforge-test/pairs.jsonl"]), tmp_path / "out", shard_size=10)
    assert summary.counts.queries_used == 2
    assert summary.inputs[0]["path"] == "memory://negforge-test/pairs.jsonl"
