"""Typed evaluation records read every record written before them and write it back unchanged.

The fixtures are real records (paths shortened) written by the code at bd44bb8, the last before the records were
typed, by tests/test_evaluate.py's comparisons: a version's evaluation (with a saved model), the base model's cached
metrics, a comparison of two versions and one with a `plain` baseline (which holds the baseline's whole record).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from negforge.schemas.evaluation import BaseMeasurement, Comparison, EvaluationRecord
from negforge.tasks.evaluation.records import read_record, write_record

FIXTURES = Path(__file__).parent / "fixtures"
KINDS = {"evaluation-bd44bb8.json": EvaluationRecord, "evaluation-base-bd44bb8.json": BaseMeasurement,
         "comparison-bd44bb8.json": Comparison, "comparison-baseline-bd44bb8.json": Comparison}


@pytest.mark.parametrize("name", KINDS)
def test_a_record_written_before_reads_and_writes_back_byte_for_byte(name, tmp_path):
    record = read_record(FIXTURES / name, KINDS[name])
    write_record(tmp_path / name, record)
    assert (tmp_path / name).read_text() == (FIXTURES / name).read_text()


def test_the_records_read_through_their_fields():
    raw = json.loads((FIXTURES / "evaluation-bd44bb8.json").read_text())
    record = read_record(FIXTURES / "evaluation-bd44bb8.json", EvaluationRecord)
    assert record.gain.ci == raw["ndcg@10_gain"]["ci"]
    assert record.gain.text().startswith(f"{raw['ndcg@10_gain']['mean']:+.4f} (95% interval")
    assert record.fine_tuned[0].per_query == raw["fine_tuned"][0]["per_query_ndcg@10"]
    assert record.fine_tuned[0].training.steps == raw["fine_tuned"][0]["training"]["steps"]
    assert record.base.cached is raw["base"]["cached"] and record.evaluation.queries == raw["evaluation"]["queries"]
    baseline = read_record(FIXTURES / "comparison-baseline-bd44bb8.json", Comparison)
    assert baseline.b.baseline.remined_from == "v0001" and baseline.b.baseline.record.version == "plain"
    assert read_record(FIXTURES / "comparison-bd44bb8.json", Comparison).b.baseline is None


def test_whether_the_base_was_read_from_the_cache_is_not_written(tmp_path):
    base = read_record(FIXTURES / "evaluation-base-bd44bb8.json", BaseMeasurement).model_copy(update={"cached": True})
    write_record(tmp_path / "base.json", base)
    assert "cached" not in json.loads((tmp_path / "base.json").read_text())


def test_a_file_that_is_not_such_a_record_reads_as_absent(tmp_path):
    (tmp_path / "v0001-key.json").write_text('{"version": "v0001"}')
    assert read_record(tmp_path / "v0001-key.json", EvaluationRecord) is None
    assert read_record(FIXTURES / "comparison-bd44bb8.json", EvaluationRecord) is None
