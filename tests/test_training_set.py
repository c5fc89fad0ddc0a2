"""The ids table: every candidate of a query is either a negative or listed with its reason (keep_candidates)."""

from __future__ import annotations

from negforge.schemas.config import MineConfig
from negforge.schemas.tables import TEXT_SHARD, frame
from negforge.tasks.mining.ids_table import ids_table
from negforge.tasks.mining.rules import mine, reasons_per_query
from tests.test_mine import CANDS, _case


def test_keep_candidates_lists_every_dropped_candidate_with_its_reason(tmp_path):
    hits, positives, scores, ids = _case(CANDS, {0: [(1, 0.85, True)]})
    candidates = mine(hits, positives, scores, MineConfig(num_negatives=2, max_score=0.75), 10)
    shard = tmp_path / "corpus-00000.parquet"
    frame(TEXT_SHARD, {"row": range(8), "text_hash": [f"h{i}" for i in range(8)], "id": [f"p{i}" for i in range(8)],
                       "text": [f"doc {i}" for i in range(8)], "length": [5] * 8}).write_parquet(shard)
    plain, short = ids_table(candidates, positives, scores, [str(shard)], "n-tuple", 2)
    table, _ = ids_table(candidates, positives, scores, [str(shard)], "n-tuple", 2, keep_candidates=True)
    assert short == [] and "candidate_ids" not in plain.columns
    row = table.row(0, named=True)
    assert row["negative_ids"] == ["p3", "p4"]
    assert row["candidate_ids"] == ["p1", "p2", "p5", "p6", "p7"]
    assert row["candidate_reasons"] == ["positive_id", "max_score", "not_sampled", "not_sampled", "not_sampled"]
    assert len(row["negative_ids"]) + len(row["candidate_ids"]) == len(CANDS[0])
    per_query = reasons_per_query(candidates, 1)
    assert per_query["not_sampled"] == {"queries": 1, "mean": 3.0, "max": 3}
