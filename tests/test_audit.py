"""The false-negative audit on a hand-built case: rates overall, per reason, with an interval and coverage."""

from __future__ import annotations

import polars as pl

from negforge.schemas.config import MineConfig
from negforge.tasks.gate.audit import audit
from negforge.tasks.mining.rules import mine
from tests.test_mine import _case


def test_audit_counts_judged_relevant_negatives_overall_and_per_reason(tmp_path):
    candidates = {q: [(d, 0.9 - d / 100) for d in range(1, 9)] for q in range(3)}
    positives = {q: [(0, 0.95, True)] for q in range(3)}
    hits, pos, scores, ids = _case(candidates, positives)
    mined = mine(hits, pos, scores, MineConfig(num_negatives=2, relative_margin=None, max_score=0.885), 10)
    # kept per query: docs 2 and 3 (doc 1 scores 0.89 > max_score); judged relevant: q0 docs 1 and 2, q1 doc 3
    qrels = tmp_path / "heldout.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\nq0\td2\t1\nq1\td3\t1\nq1\td4\t0\nunknown\td2\t1\n")
    doc_ids = pl.DataFrame({"row": range(9), "id": [f"d{i}" for i in range(9)]},
                           schema={"row": pl.UInt32, "id": pl.String})
    report = audit(mined, pos, doc_ids, str(qrels), "auto", 0.0, 2)
    assert report["n_queries"] == 2  # q2 has no held-out judgements; "unknown" is not a training query
    assert report["negatives"] == 4 and report["false_negative_rate"] == 0.5
    assert 0 <= report["ci95"][0] <= 0.5 <= report["ci95"][1] <= 1
    assert report["by_reason"]["max_score"] == {"judged_relevant": 0.5, "candidates": 2}
    assert report["coverage"] == 1.0
    assert report["negative_score"]["mean"] == round((0.88 + 0.87) / 2, 4)


def test_the_audit_interval_does_not_depend_on_the_order_of_the_candidates(tmp_path):
    """The bootstrap resamples query positions: the per-query table must come in a fixed order, or the same build's
    interval changes from run to run."""
    candidates = {q: [(d, 0.9 - d / 100) for d in range(1, 9)] for q in range(40)}
    hits, pos, scores, _ = _case(candidates, {q: [(0, 0.95, True)] for q in range(40)})
    mined = mine(hits, pos, scores, MineConfig(num_negatives=4, relative_margin=None), 10)
    judged = [f"q{q}\td{d}\t1" for q in range(40) for d in range(1, 1 + q % 5)]  # 0-4 of 4 negatives relevant
    qrels = tmp_path / "heldout.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "\n".join(judged) + "\n")
    doc_ids = pl.DataFrame({"row": range(9), "id": [f"d{i}" for i in range(9)]},
                           schema={"row": pl.UInt32, "id": pl.String})
    intervals = {tuple(audit(mined.sample(fraction=1.0, shuffle=True, seed=seed), pos, doc_ids, str(qrels), "auto",
                             0.0, 4)["ci95"]) for seed in range(8)}
    assert len(intervals) == 1, intervals
