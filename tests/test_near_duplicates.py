"""Near-duplicates from the embeddings already computed: injected near-copies are found at the default eps,
distinct but similar documents are not merged, and neither near-copies nor paraphrases of a positive are mined as
its negatives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from negforge.schemas.config import DedupConfig, MineConfig
from negforge.schemas.tables import NEAR_PAIRS, frame
from negforge.tasks.embedding.model import EncoderSpec, encode, resolve_model
from negforge.tasks.mining.rules import mine
from negforge.tasks.mining.similarity import candidate_similarity
from tests.conftest import DEMO, beir_subset, run_cli
from tests.test_mine import _case, _kept, _reason

# The most similar distinct documents of the demo corpus (cosine 0.887 and 0.882 under the bundled model).
SIMILAR_BUT_DISTINCT = [("4303075", "4405194"), ("14831629", "25612629")]


def _edit(text: str, how: str) -> str:
    """A near-copy the model can see: one word changed or added among the first tokens."""
    words = text.split()
    if how == "change":
        words[8] = "unrelated"
    else:
        words.insert(8, "notably")
    return " ".join(words)


def _paraphrase(doc: dict) -> str:
    """The same abstract with its first two sentences swapped and the title after them."""
    sentences = [s.rstrip(".") + "." for s in doc["text"].split(". ") if s]
    return " ".join([*sentences[1:2], *sentences[:1], doc["title"], *sentences[2:]])


def test_in_row_near_duplicates_keep_the_better_one_and_never_chain():
    hits, pos, scores, ids = _case({0: [(d, 0.9 - d / 100) for d in range(1, 8)]}, {0: [(0, 0.95, True)]})
    pairs = frame(NEAR_PAIRS, {"query_row": [0, 0], "doc_row": [3, 4], "other_row": [2, 3], "cosine": [0.99, 0.99]})
    result = mine(hits, pos, scores, MineConfig(num_negatives=3, relative_margin=None), 10, pairs, 0.02)
    # 3 is a near-copy of kept 2 and goes; 4 is a near-copy of 3 only, which was not kept: 4 stays (no chaining)
    assert _reason(result, 3) == "near_duplicate_negative"
    assert _kept(result) == [1, 2, 4]
    loose = mine(hits, pos, scores, MineConfig(num_negatives=3, relative_margin=None), 10, pairs, 0.005)
    assert _kept(loose) == [1, 2, 3]  # below 1 - eps the pair is not a near-duplicate


def test_positive_similarity_rules_and_their_order():
    hits, pos, scores, ids = _case({0: [(d, 0.9 - d / 100) for d in range(1, 6)]}, {0: [(0, 0.95, True)]})
    hits = hits.with_columns(pl.Series("pos_sim", [0.995, 0.93, 0.5, 0.4, 0.3], dtype=pl.Float32))
    cfg = MineConfig(num_negatives=2, relative_margin=None, max_positive_similarity=0.9)
    result = mine(hits, pos, scores, cfg, 10, None, 0.02)
    assert [_reason(result, d) for d in (1, 2)] == ["too_similar_to_positive", "too_similar_to_positive"]
    only_dedup = mine(hits, pos, scores,
                      MineConfig(num_negatives=2, relative_margin=None, max_positive_similarity=None), 10, None, 0.02)
    assert _reason(only_dedup, 1) == "near_duplicate_of_positive" and _kept(only_dedup) == [2, 3]


@pytest.fixture(scope="module")
def encoder() -> EncoderSpec:
    ref = resolve_model("all-MiniLM-L6-v2")
    return EncoderSpec(ref.path, ref.weights_sha256, "", None, 16, "cpu")


def test_real_near_copies_pair_up_at_the_default_eps_and_similar_documents_do_not(tmp_path, encoder):
    docs = {d["_id"]: d for d in map(json.loads, (DEMO / "corpus.jsonl").read_text().splitlines())}
    chosen = list(docs)[:12]
    texts = [f"{docs[i]['title']} {docs[i]['text']}" for i in chosen]
    texts += [_edit(t, how) for t in texts[:6] for how in ("change", "add")]  # rows 12..23: copies of rows 0..5
    texts += [f"{docs[i]['title']} {docs[i]['text']}" for pair in SIMILAR_BUT_DISTINCT for i in pair]  # rows 24..27
    vectors = encode(encoder, texts)
    n = len(texts)
    hits = pl.DataFrame({"query_row": [0] * n, "doc_row": range(n), "score": np.linspace(0.9, 0.1, n),
                         "rank": range(n)}, schema={"query_row": pl.UInt32, "doc_row": pl.UInt32,
                                                    "score": pl.Float32, "rank": pl.UInt32})
    positives = pl.DataFrame({"query_row": [0], "doc_row": [0]}, schema={"query_row": pl.UInt32, "doc_row": pl.UInt32})
    with_sim, pairs = candidate_similarity(hits, positives, vectors)
    eps = DedupConfig().eps
    pairs = pairs.filter(pl.col("cosine") >= 1 - eps)
    found = {(b, a) for a, b in pairs.select("doc_row", "other_row").iter_rows()}
    injected = {(row, 12 + 2 * row + k) for row in range(6) for k in (0, 1)}
    assert len(injected & found) >= 11  # one-word edits: found at the default eps (measured: 97% of 80 on SciFact)
    assert not found & {(24, 25), (26, 27)}  # distinct but similar documents (cosine ~0.88) never merge
    twins = {(12 + 2 * row, 13 + 2 * row) for row in range(6)}  # the two edits of one document
    assert found <= injected | twins  # and nothing else pairs up
    pos_sim = with_sim.sort("doc_row")["pos_sim"].to_list()
    assert pos_sim[12] >= 1 - eps and pos_sim[0] == pytest.approx(1, abs=1e-5)


@pytest.mark.slow
def test_near_copies_and_paraphrases_of_positives_are_never_their_negatives(tmp_path, prefect_server):
    folder = beir_subset(DEMO, tmp_path / "data", 30, 150)
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    by_id = {d["_id"]: d for d in docs}
    qrels = [line.split("\t") for line in (folder / "qrels/train.tsv").read_text().splitlines()[1:]]
    copies: dict[str, set[str]] = {}
    for query, doc, _ in qrels[:20]:
        source = by_id[doc]
        for kind, text in (("near", _edit(source["text"], "change")), ("para", _paraphrase(source))):
            new_id = f"{kind}-{doc}"
            if new_id not in by_id:
                docs.append({"_id": new_id, "title": source["title"] if kind == "near" else "", "text": text})
                assert kind == "near" or len(text.split()) > 20
                by_id[new_id] = docs[-1]
            copies.setdefault(query, set()).add(new_id)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    config = tmp_path / "build.yaml"
    config.write_text(f"input: {{corpus: {folder / 'corpus.jsonl'}, queries: {folder / 'queries.jsonl'}, "
                      f"qrels: {folder / 'qrels/train.tsv'}}}\nmine: {{num_negatives: 3, relative_margin: null}}\n"
                      f"publish: {{registry: {tmp_path / 'registry'}, dataset: copies}}\n"
                      f"runtime: {{workdir: {tmp_path / 'work'}, n_workers: 2}}\n")

    def mined_copies(*overrides: str) -> int:
        out = run_cli("build", "--config", str(config), *[a for o in overrides for a in ("--set", o)])
        ids = pl.read_parquet(Path(out.stdout.strip().splitlines()[-1]) / "ids")
        return sum(len(set(r["negative_ids"]) & copies.get(r["query_id"], set())) for r in ids.iter_rows(named=True))

    # without the rules, copies of positives are mined as negatives; with the rules' defaults, never (fixed: so that
    # no other rule of the calibration's choice removes them first)
    assert mined_copies("mine.strategy=fixed", "dedup.eps=null", "mine.max_positive_similarity=null") > 0
    assert mined_copies("mine.strategy=fixed") == 0
