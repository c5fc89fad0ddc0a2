"""The real flow end to end: the CLI, a real Prefect API, a local Dask cluster, the bundled model, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _build(config: Path, *overrides: str) -> list[str]:
    """Run `negforge build`; return its output lines (fails the test on a non-zero exit)."""
    args = ["build", "--config", str(config)]
    for override in overrides:
        args += ["--set", override]
    return run_cli(*args).stdout.strip().splitlines()


def _manifest(version_dir: str) -> dict:
    return json.loads((Path(version_dir) / "manifest.json").read_text())


def test_build_publishes_a_version_that_loads_and_trains(config, prefect_server):
    from datasets import load_dataset

    lines = _build(config, "runtime.dask_address=null")  # the default: a local cluster of this run's own
    version_dir = lines[-1]
    assert version_dir.endswith("registry/tiny/v0001")
    assert (Path(version_dir).parent / "LATEST").read_text().strip() == "v0001"
    train = load_dataset(version_dir, split="train")
    ids = load_dataset(version_dir, "ids", split="train")
    assert train.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert ids.column_names[:5] == ["query_id", "positive_id", "negative_ids", "positive_score", "negative_scores"]
    # suspected positives always; BM25 scores because the default calibration's grid has lexical rules
    assert ids.column_names[5:] == ["suspected_positive_ids", "positive_bm25", "negative_bm25s"]
    assert len(train) == len(ids) > 30
    assert all(len(r["negative_ids"]) == 3 and r["positive_id"] not in r["negative_ids"] for r in ids)
    assert all(s == sorted(s, reverse=True) for s in ids["negative_scores"])

    manifest = _manifest(version_dir)
    assert manifest["embed"]["texts_embedded"] == manifest["counts"]["unique_texts"] + 40
    assert manifest["embed"]["texts_cached"] == 0
    assert [i["rows_read"] for i in manifest["inputs"]] == [200, 40, manifest["inputs"][2]["rows_read"]]
    assert set(manifest["timings"]) >= {"ingest", "embed", "search_and_mine", "combine", "write"}
    assert manifest["model"]["weights_sha256"].startswith("53aa5117")
    assert sum(manifest["reasons"].values()) > manifest["reasons"]["kept"]
    first = json.loads((Path(version_dir) / "exports" / "flagembedding.jsonl").read_text().splitlines()[0])
    assert set(first) == {"query", "pos", "neg"} and len(first["neg"]) == 3

    _train_one_step(train, Path(version_dir).parent.parent / "trainer")


def _train_one_step(train, output_dir: Path) -> None:
    """The published data feeds a sentence-transformers trainer as it is."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments

    from negforge.tasks.embedding.model import resolve_model

    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2").path, device="cpu")
    model.max_seq_length = 64
    args = SentenceTransformerTrainingArguments(output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=4,
                                                report_to=[], save_strategy="no", use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train.select(range(8)),
                                         loss=losses.MultipleNegativesRankingLoss(model))
    assert trainer.train().global_step == 2


def test_rebuilds_embed_nothing_twice_and_unchanged_content_publishes_nothing(config, tiny_beir, prefect_server):
    first = _build(config)[-1]
    again = _build(config)
    assert again[-2:] == ["up to date", first]
    assert not (Path(first).parent / "v0002").exists()

    elsewhere = _build(config, f"publish.registry={config.parent / 'registry-2'}")[-1]
    assert _manifest(elsewhere)["embed"]["texts_embedded"] == 0
    assert _manifest(elsewhere)["data_hash"] == _manifest(first)["data_hash"]  # runtime never changes the data

    with (tiny_beir / "corpus.jsonl").open("a") as handle:
        for i in range(3):
            handle.write(json.dumps({"_id": f"new{i}", "title": "", "text": f"A new abstract number {i}."}) + "\n")
    grown = _build(config, "runtime.shard_size=50", "mine.num_negatives=2")[-1]
    assert grown.endswith("v0002")
    manifest = _manifest(grown)
    assert manifest["embed"]["texts_embedded"] == 3
    assert manifest["parent"] == "v0001"
