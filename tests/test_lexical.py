"""BM25, the lexical second opinion: the index cached by corpus content, pair scores, and the rules through real
builds and remines; suspected positives promoted; the Tevatron export."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from negforge.schemas.config import LexicalConfig
from negforge.schemas.tables import TEXT_SHARD, frame
from negforge.tasks.mining.lexical import LexicalError, bm25_pairs, build_index
from tests.conftest import run_cli

SETTINGS = LexicalConfig().index_settings()


def _shard(path: Path, texts: list[str]) -> str:
    frame(TEXT_SHARD, {"row": range(len(texts)), "text_hash": [f"h{t}" for t in texts],
                       "id": [f"d{i}" for i in range(len(texts))], "text": texts,
                       "length": [len(t) for t in texts]}).write_parquet(path)
    return str(path)


def test_the_index_is_built_once_per_corpus_and_settings(tmp_path):
    corpus = _shard(tmp_path / "corpus.parquet", ["insulin resistance in muscle", "gut microbiota", "the cat sat"])
    first = build_index([corpus], SETTINGS, str(tmp_path / "work"))
    stamp = (Path(first) / "params.index.json").stat().st_mtime_ns
    assert build_index([corpus], SETTINGS, str(tmp_path / "work")) == first
    assert (Path(first) / "params.index.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert build_index([corpus], SETTINGS | {"k1": 1.2}, str(tmp_path / "work")) != first
    other = _shard(tmp_path / "other.parquet", ["insulin resistance in liver", "gut microbiota", "the cat sat"])
    assert build_index([other], SETTINGS, str(tmp_path / "work")) != first

    queries = _shard(tmp_path / "queries.parquet", ["insulin resistance", "of the and"])
    pairs = pl.DataFrame({"query_row": [0, 0, 0, 1], "doc_row": [0, 1, 2, 0]},
                         schema={"query_row": pl.UInt32, "doc_row": pl.UInt32})
    scores = dict(((q, d), s) for q, d, s in bm25_pairs(pairs, first, [queries]).iter_rows())
    assert scores[(0, 0)] > 0 and scores[(0, 1)] == scores[(0, 2)] == 0
    assert scores[(1, 0)] == 0  # a query of stopwords only scores 0 with every document


def test_a_corpus_that_tokenizes_to_nothing_is_refused_by_name(tmp_path):
    corpus = _shard(tmp_path / "corpus.parquet", ["the of and", "a an it", "!!"])
    with pytest.raises(LexicalError, match="tokenize to nothing.*lexical.stopwords"):
        build_index([corpus], SETTINGS, str(tmp_path / "work"))


def _version(done) -> Path:
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_lexical_rules_through_a_build_a_remine_and_the_exports(small_config, prefect_server):
    plain = _version(run_cli("build", "--config", str(small_config), "--set", "mine.strategy=fixed"))
    registry = str(plain.parent.parent)
    refused = run_cli("remine", "--from", f"tiny@{plain.name}", "--registry", registry, "--set", "lexical.ratio=1",
                      check=False)
    assert refused.returncode == 2 and "need BM25 scores" in refused.stderr

    version = _version(run_cli("build", "--config", str(small_config), "--set", "mine.strategy=fixed",
                               "--set", "lexical.ratio=1.0", "--set", "output.scores=true",
                               "--set", "output.exports=[flagembedding, tevatron]"))
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["reasons"]["lexical_relevant"] > 0
    ids = pl.read_parquet(version / "ids")
    assert {"positive_bm25", "negative_bm25s", "suspected_positive_ids"} <= set(ids.columns)
    lowest = ids.group_by("query_id").agg(pl.col("positive_bm25").min().alias("lowest"))
    negatives = ids.select("query_id", pl.col("negative_bm25s").alias("bm25")).explode("bm25").join(lowest, on="query_id")
    assert negatives.height and (negatives["bm25"] <= negatives["lowest"] * 1.0 + 1e-4).all()
    data = pl.read_parquet(version / "data")
    assert {"scores", "bm25s"} <= set(data.columns)

    corpus = {d["_id"]: d for d in map(json.loads, Path(manifest["config"]["input"]["corpus"]).read_text().splitlines())}
    rows = [json.loads(line) for line in (version / "exports" / "tevatron.jsonl").read_text().splitlines()]
    assert len(rows) == ids["query_id"].n_unique() and set(rows[0]) == {
        "query_id", "query", "positive_passages", "negative_passages"}
    passage = rows[0]["negative_passages"][0]
    assert passage == {"docid": passage["docid"], "title": corpus[passage["docid"]]["title"],
                       "text": corpus[passage["docid"]]["text"]}
    assert len(rows[0]["negative_passages"]) == 3

    looser = _version(run_cli("remine", "--from", f"tiny@{version.name}", "--registry", registry,
                              "--set", "lexical.ratio=3.0"))  # no model, no index: the stored BM25 scores
    remined = json.loads((looser / "manifest.json").read_text())
    assert remined["reasons"].get("lexical_relevant", 0) < manifest["reasons"]["lexical_relevant"]


@pytest.mark.slow
def test_promoted_suspected_positives_count_as_positives(small_config, prefect_server):
    options = ["--set", "mine.strategy=fixed", "--set", "mine.relative_margin=null",
               "--set", "mine.max_positive_similarity=null"]
    listed = _version(run_cli("build", "--config", str(small_config), *options))
    ids = pl.read_parquet(listed / "ids")
    suspected = ids.select("query_id", pl.col("suspected_positive_ids").alias("doc")).explode("doc").drop_nulls()
    suspected = suspected.unique()
    assert suspected.height and json.loads((listed / "manifest.json").read_text())["suspected_positives"]["count"] \
        == suspected.height
    # listed only: some are still mined as negatives (plain top-k keeps what scores above the lowest positive)
    negatives = ids.select("query_id", pl.col("negative_ids").alias("doc")).explode("doc")
    assert negatives.join(suspected, on=["query_id", "doc"], how="semi").height > 0

    promoted = _version(run_cli("build", "--config", str(small_config), *options, "--set",
                                "mine.promote_suspected=true", "--set", "mine.max_promoted_per_positive=1",
                                "--set", "publish.dataset=promoted"))
    manifest = json.loads((promoted / "manifest.json").read_text())
    ids = pl.read_parquet(promoted / "ids")
    suspected = ids.select("query_id", pl.col("suspected_positive_ids").alias("doc")).explode("doc").drop_nulls()
    suspected = suspected.unique()  # more than before: queries that lose negatives to promotion are searched deeper
    pairs = ids.select("query_id", pl.col("positive_id").alias("doc")).unique()
    as_positives = suspected.join(pairs, on=["query_id", "doc"], how="semi")
    negatives = ids.select("query_id", pl.col("negative_ids").alias("doc")).explode("doc")
    assert negatives.join(suspected, on=["query_id", "doc"], how="semi").is_empty()  # promoted or dropped: no negative
    reasons, listed = manifest["reasons"], manifest["suspected_positives"]
    cut = reasons.get("suspected_not_promoted", 0)
    assert reasons["promoted_positive"] == as_positives.height and listed["not_promoted"] == cut
    assert reasons["promoted_positive"] + cut == listed["count"] == suspected.height
    assert manifest["validation"]["success"] and manifest["short_queries"]["count"] == 0
    assert manifest["counts"]["id_rows"] == 20 + as_positives.height  # a row per known and per promoted positive
