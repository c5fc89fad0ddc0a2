"""The quality gate: corrupted candidates are refused with readable reasons, quarantined, and nothing is published."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from negforge.schemas.config import load_config
from negforge.schemas.manifest import Manifest
from negforge.schemas.stages import Mined, ScoreStats
from negforge.schemas.tables import IDS
from negforge.tasks.gate.gates import check_candidate, check_inputs
from negforge.tasks.gate.validate import ValidationFailed, drift
from negforge.tasks.ingest.ingest import ingest
from negforge.tasks.registry.versions import Registry
from tests.conftest import DEMO_CONFIG, run_cli

MINED = Mined(ids="", candidates="", positive_scores="", reasons={}, reasons_per_query={}, short_queries=(),
              dropped_eval_queries=(), audit=None, positive_score_stats=ScoreStats(count=1, mean=0.6),
              negative_score_stats=ScoreStats(count=1, mean=0.4))


@pytest.fixture
def candidate(tmp_path, config):
    """A real ingest of the tiny dataset and a hand-made, valid candidate version staged in a registry."""
    cfg = load_config(config, ["mine.relative_margin=null"])
    summary = ingest(cfg.input, tmp_path / "ingest", cfg.runtime.shard_size)
    positives = pl.read_parquet(summary.texts.positives)
    docs = pl.read_parquet(summary.texts.corpus_files)
    queries = pl.read_parquet(summary.texts.query_files)
    taken = set(positives["doc_row"].to_list())
    spare = docs.filter(~pl.col("row").is_in(list(taken)))
    first = positives.unique("query_id", keep="first", maintain_order=True)
    negatives = spare["id"].head(3).to_list()
    ids = pl.DataFrame({"query_id": first["query_id"], "positive_id": first["positive_id"],
                        "negative_ids": [negatives] * first.height, "positive_score": [0.7] * first.height,
                        "negative_scores": [[0.5, 0.4, 0.3]] * first.height}, schema=IDS)
    text = dict(zip(docs["id"], docs["text"]))
    data = pl.DataFrame({"anchor": first.join(queries.select(pl.col("id").alias("query_id"), "text"), on="query_id",
                                              maintain_order="left")["text"],
                         "positive": [text.get(p, "positive text") for p in first["positive_id"]],
                         **{f"negative_{i + 1}": [text[n]] * first.height for i, n in enumerate(negatives)}})
    registry = Registry(cfg.publish.registry, cfg.publish.dataset)
    staged = registry.staging()

    def stage(ids_table: pl.DataFrame = ids, data_table: pl.DataFrame = data) -> Path:
        for name, table in (("ids", ids_table), ("data", data_table)):
            (staged / name).mkdir(exist_ok=True)
            table.write_parquet(staged / name / "train-00000-of-00001.parquet")
        return staged

    return cfg, summary, stage, registry, positives


def _refused(cfg, summary, staged, tmp_path) -> str:
    with pytest.raises(ValidationFailed) as refused:
        check_candidate(str(staged), MINED, summary.texts, cfg, None, str(tmp_path / "validation"))
    return str(refused.value)


def test_a_valid_candidate_passes_and_real_inputs_pass(candidate, tmp_path):
    cfg, summary, stage, registry, _ = candidate
    outcome = check_candidate(str(stage()), MINED, summary.texts, cfg, None, str(tmp_path / "validation"))
    assert outcome.success and outcome.expectations >= 8
    assert check_inputs(summary, str(tmp_path / "inputs"))["success"]


def test_a_positive_injected_into_the_negatives_is_refused_and_quarantined(candidate, tmp_path):
    cfg, summary, stage, registry, positives = candidate
    stage()
    ids = pl.read_parquet(next((Path(registry.folder).glob(".staging-*/ids"))))
    row = ids.row(0, named=True)
    other_positive = positives.filter(pl.col("query_id") == row["query_id"])["positive_id"][0]
    corrupted = ids.with_columns(pl.when(pl.int_range(pl.len()) == 0)
                                 .then(pl.lit([other_positive, *row["negative_ids"][1:]]))
                                 .otherwise(pl.col("negative_ids")).alias("negative_ids"))
    message = _refused(cfg, summary, stage(ids_table=corrupted), tmp_path)
    assert "negative_not_any_positive) failed: 1 offending rows" in message
    assert row["query_id"] in message  # the sample names the row
    assert registry.versions() == [] and registry.latest() is None
    quarantined = list((registry.folder / ".quarantine").iterdir())
    assert len(quarantined) == 1
    assert (quarantined[0] / "validation.json").exists() and (quarantined[0] / "data_docs" / "index.html").exists()
    assert (quarantined[0] / "candidate" / "ids").exists()


def test_an_empty_text_is_refused(candidate, tmp_path):
    cfg, summary, stage, registry, _ = candidate
    stage()
    data = pl.read_parquet(next((Path(registry.folder).glob(".staging-*/data"))))
    corrupted = data.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("  "))
                                  .otherwise(pl.col("negative_2")).alias("negative_2"))
    message = _refused(cfg, summary, stage(data_table=corrupted), tmp_path)
    assert "texts_not_empty) failed: 1 offending rows - a text of the row is null or empty" in message


def test_a_negative_that_breaks_the_configured_margin_is_refused(candidate, tmp_path):
    cfg, summary, stage, registry, _ = candidate
    cfg.mine.absolute_margin = 0.25  # positives score 0.7, so negatives must be <= 0.45; the first is 0.5
    message = _refused(cfg, summary, stage(), tmp_path)
    assert "negatives_within_filters) failed" in message


@pytest.mark.parametrize(("rule", "offending"), [
    ({"kind": "cross-encoder", "threshold": 0.55}, 2),                      # 0.9 and 0.6 are above
    ({"kind": "guide", "margin": 0.0}, 1),                                  # only 0.9 is above the positive's 0.65
    ({"kind": "guide", "margin": 0.1, "margin_strategy": "relative"}, 2),  # 0.6 is above 0.65 - 0.065
])
def test_a_negative_the_rescorer_finds_relevant_is_refused(candidate, tmp_path, rule, offending):
    cfg, summary, stage, registry, _ = candidate
    ids = pl.read_parquet(stage() / "ids")
    rescored = ids.with_columns(pl.lit(0.65, pl.Float32).alias("positive_rescore"),
                                pl.when(pl.int_range(pl.len()) == 0).then(pl.lit([0.9, 0.7, 0.2], pl.List(pl.Float32)))
                                .when(pl.int_range(pl.len()) == 1).then(pl.lit([0.6, 0.5, 0.2], pl.List(pl.Float32)))
                                .otherwise(pl.lit([0.5, 0.4, 0.1], pl.List(pl.Float32))).alias("negative_rescores"))
    cfg.rescore = cfg.rescore.model_copy(update={"model": "a-rescorer", **rule})
    message = _refused(cfg, summary, stage(ids_table=rescored), tmp_path)
    assert f"negatives_within_filters) failed: {offending} offending rows" in message


def test_an_evaluation_query_as_anchor_fails_the_build_unless_dropped(config, tiny_beir, prefect_server):
    lines = (tiny_beir / "qrels/train.tsv").read_text().splitlines()
    leaked = lines[1].split("\t")[0]
    eval_qrels = tiny_beir / "eval.tsv"
    eval_qrels.write_text("\n".join([lines[0], lines[1]]) + "\n")
    refused = run_cli("build", "--config", str(config), "--set", f"validate.eval_qrels={eval_qrels}", check=False)
    assert refused.returncode == 1
    assert "anchor_not_eval_query) failed" in refused.stderr and "nothing was published" in refused.stderr
    registry = Registry(config.parent / "registry", "tiny")
    assert registry.versions() == [] and registry.latest() is None

    built = run_cli("build", "--config", str(config), "--set", f"validate.eval_qrels={eval_qrels}",
                    "--set", "validate.drop_eval_queries=true")
    manifest = registry.manifest(Path(built.stdout.strip().splitlines()[-1]).name)
    assert manifest.dropped_eval_queries == [leaked]
    assert leaked not in pl.read_parquet(registry.folder / "v0001" / "ids")["query_id"].to_list()
    assert manifest.validation.success and manifest.validation.shared_positives_with_eval >= 1


def test_drift_warns_beyond_tolerance():
    limits = load_config(DEMO_CONFIG).validate_
    previous = Manifest.model_validate({"counts": {"rows": 100},
                                        "scores": {"positive": {"mean": 0.6}, "negative": {"mean": 0.4}}})
    assert drift(previous, 110, {"positive": {"mean": 0.61}, "negative": {"mean": 0.41}}, limits) == []
    warnings = drift(previous, 20, {"positive": {"mean": 0.6}, "negative": {"mean": 0.5}}, limits)
    assert len(warnings) == 2 and "row count 100 -> 20" in warnings[0]


def test_drift_fails_the_gate_when_configured(candidate, tmp_path):
    cfg, summary, stage, registry, _ = candidate
    previous = Manifest.model_validate({"counts": {"rows": 1000},
                                        "scores": {"positive": {"mean": 0.6}, "negative": {"mean": 0.4}}})
    outcome = check_candidate(str(stage()), MINED, summary.texts, cfg, previous, str(tmp_path / "warn"))
    assert outcome.success and "row count 1000 ->" in outcome.warnings[0]
    cfg.validate_.drift_fails = True
    with pytest.raises(ValidationFailed, match=r"(?s)nothing was published.*drift: row count 1000 ->"):
        check_candidate(str(stage()), MINED, summary.texts, cfg, previous, str(tmp_path / "fail"))
