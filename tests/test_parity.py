"""Parity with sentence-transformers' `mine_hard_negatives` on a real SciFact sample with the bundled model.

For each option set, negforge's negatives must equal the reference's for at least 99% of queries, every query that
differs is shown with its cause, and scores agree within 1e-4. Random sampling is excluded (different streams).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from negforge.schemas.config import load_config
from negforge.tasks.ingest.text import normalize
from tests.conftest import DEMO, DEMO_CONFIG, beir_subset

pytestmark = pytest.mark.slow
# Both sides read 128 tokens per text (the model's own 256 doubles the embedding, most of these tests' time).
MAX_SEQ_LENGTH = 128

OPTION_SETS = {
    "plain top-k": {"num_negatives": 5},
    "range_min/range_max": {"num_negatives": 5, "range_min": 5, "range_max": 30},
    "relative_margin 0.05": {"num_negatives": 5, "relative_margin": 0.05, "range_max": 50},
    "absolute_margin 0.03": {"num_negatives": 5, "absolute_margin": 0.03, "range_max": 50},
    "max_score 0.6": {"num_negatives": 4, "max_score": 0.6, "range_max": 40},
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return beir_subset(DEMO, tmp_path_factory.mktemp("parity"), 150, 700)


@pytest.fixture(scope="module")
def reference_inputs(sample):
    import json

    from datasets import Dataset

    docs = {d["_id"]: d for d in map(json.loads, (sample / "corpus.jsonl").read_text().splitlines())}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (sample / "queries.jsonl").read_text().splitlines())}
    text = {i: f"{d['title']} {d['text']}".strip() for i, d in docs.items()}
    qrels = [line.split("\t") for line in (sample / "qrels/train.tsv").read_text().splitlines()[1:]]
    pairs = Dataset.from_dict({"anchor": [queries[q] for q, _, _ in qrels], "positive": [text[d] for _, d, _ in qrels]})
    positives: dict[str, set[str]] = {}
    for q, d, _ in qrels:
        positives.setdefault(queries[q], set()).add(normalize(text[d]))
    return pairs, list(text.values()), positives


@pytest.fixture(scope="module")
def model():
    from sentence_transformers import SentenceTransformer

    from negforge.tasks.embedding.model import resolve_model

    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2").path, device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    return model


def _reference(model, reference_inputs, options, cache: Path) -> dict[str, tuple[list[str], list[float]]]:
    from sentence_transformers.util import mine_hard_negatives

    pairs, corpus, _ = reference_inputs
    rows = mine_hard_negatives(pairs, model, corpus=corpus, output_format="n-tuple", output_scores=True,
                               use_faiss=True, batch_size=32, verbose=False, cache_folder=str(cache), **options)
    n = options["num_negatives"]
    return {r["anchor"]: ([r[f"negative_{i}"] for i in range(1, n + 1)], r["scores"][1:]) for r in rows}


def _negforge_rows(sample: Path, tmp: Path, options: dict, *extra: str) -> pl.DataFrame:
    """Run the real flow (thread runner: the Dask path has its own tests) and read the published rows."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from negforge.flows.build import build_training_set

    # fixed strategy, no adaptive depth, no extra filters: what the reference does
    overrides = [f"mine.{k}={v}" for k, v in options.items()] + [
        "dedup.eps=null", "mine.max_positive_similarity=null", "mine.strategy=fixed", "mine.max_depth=null",
        *extra]
    if "relative_margin" not in options:
        overrides.append("mine.relative_margin=null")
    config = load_config(DEMO_CONFIG, [f"input.corpus={sample / 'corpus.jsonl'}",
                                       f"input.queries={sample / 'queries.jsonl'}",
                                       f"input.qrels={sample / 'qrels/train.tsv'}", "output.scores=true",
                                       f"publish.registry={tmp / 'registry'}", f"runtime.workdir={tmp / 'work'}",
                                       f"embed.max_seq_length={MAX_SEQ_LENGTH}", "runtime.shard_size=300",
                                       *overrides])
    result = build_training_set.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))(config)
    return pl.read_parquet(Path(result.version_dir) / "data")


def _negforge(sample: Path, tmp: Path, options: dict) -> dict[str, tuple[list[str], list[float]]]:
    rows = _negforge_rows(sample, tmp, options)
    n = options["num_negatives"]
    return {r["anchor"]: ([r[f"negative_{i}"] for i in range(1, n + 1)], r["scores"][1:])
            for r in rows.iter_rows(named=True)}




def _cause(ours, theirs, positives: set[str], threshold_gap: float) -> str:
    differing = set(ours[0]) ^ set(theirs[0]) if ours and theirs else set()
    if any(normalize(t) in positives for t in differing):
        return "duplicate text of a positive"
    scores = (ours[1] if ours else []) + (theirs[1] if theirs else [])
    if threshold_gap < 1e-4 or len(set(round(s, 5) for s in scores)) < len(scores):
        return "float tie at a threshold"
    return "unexplained"


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_negatives_match_the_reference(name, sample, reference_inputs, model, tmp_path_factory, prefect_server):
    options = OPTION_SETS[name]
    cache = tmp_path_factory.getbasetemp() / "st-cache"
    theirs = _reference(model, reference_inputs, options, cache)
    ours = _negforge(sample, tmp_path_factory.getbasetemp() / "negforge", options)
    anchors = set(theirs) | set(ours)
    same = [a for a in anchors if a in ours and a in theirs and ours[a][0] == theirs[a][0]]
    differing = sorted(anchors - set(same))
    for anchor in differing:
        gap = min((abs(a - b) for a in (ours.get(anchor) or ([], []))[1]
                   for b in (theirs.get(anchor) or ([], []))[1]), default=1.0)
        cause = _cause(ours.get(anchor), theirs.get(anchor), reference_inputs[2].get(anchor, set()), gap)
        print(f"[{name}] differs ({cause}): {anchor[:70]!r}\n  negforge:  {ours.get(anchor)}\n"
              f"  reference: {theirs.get(anchor)}")
    assert len(anchors) > 100
    assert len(same) / len(anchors) >= 0.99, f"{len(differing)} of {len(anchors)} queries differ"
    worst = max(abs(a - b) for anchor in same for a, b in zip(ours[anchor][1], theirs[anchor][1]))
    assert worst < 1e-4


@pytest.mark.parametrize("fmt", ["triplet", "labeled-pair", "labeled-list"])
@pytest.mark.parametrize("scores", [False, True])
def test_other_layouts_match_the_reference_row_for_row(fmt, scores, sample, reference_inputs, model,
                                                        tmp_path_factory, prefect_server):
    from sentence_transformers.util import mine_hard_negatives

    options = {"num_negatives": 3, "relative_margin": 0.05, "range_max": 30}
    pairs, corpus, _ = reference_inputs
    theirs = mine_hard_negatives(pairs, model, corpus=corpus, output_format=fmt, output_scores=scores,
                                 use_faiss=True, verbose=False,
                                 cache_folder=str(tmp_path_factory.getbasetemp() / "st-cache"), **options).to_polars()
    ours = _negforge_rows(sample, tmp_path_factory.getbasetemp() / "negforge", options, f"output.format={fmt}",
                          f"output.scores={str(scores).lower()}")
    assert ours.columns == theirs.columns
    assert ours.height == theirs.height
    text_columns = [c for c in ours.columns if c not in ("scores", "score", "label", "labels")]
    mismatched = sum(a != b for a, b in zip(ours.select(text_columns).rows(), theirs.select(text_columns).rows()))
    assert mismatched <= 0.01 * ours.height
    for value in set(ours.columns) - set(text_columns):
        for a, b in zip(ours[value].to_list(), theirs[value].to_list()):
            assert a == pytest.approx(b, abs=1e-4)
