"""The embedding stage's tasks with the real bundled model and a real store, run in this process: the plan, the
length-sorted embedding tasks, the copies from the store, damaged parts, retried tasks and compaction mid-run."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from negforge.schemas.config import RuntimeConfig
from negforge.schemas.stages import Texts
from negforge.schemas.tables import TEXT_SHARD, frame
from negforge.tasks.embedding.embed import (
    CHARS_PER_TOKEN,
    EmbedPlan,
    Filled,
    copy_stored,
    create_matrices,
    embed_texts,
    plan_embedding,
)
from negforge.tasks.embedding.model import (
    BUNDLED_WEIGHTS_SHA256,
    EncoderSpec,
    ModelError,
    encode,
    resolve_model,
    weights_sha256,
)
from negforge.tasks.embedding.store import COMPACT_AT, EmbeddingStore
from negforge.tasks.ingest.text import text_hash
from tests.conftest import DEMO

WORKERS = 2


@pytest.fixture(scope="module")
def spec():
    ref = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    return EncoderSpec(ref.path, ref.weights_sha256, "", 128, 16, "cpu")


def _files(folder, kind: str, texts: list[str], per_file: int) -> tuple[str, ...]:
    """Text files as ingest writes them (rows numbered across the files), `per_file` rows each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(texts), per_file):
        chunk = texts[start:start + per_file]
        path = folder / f"{kind}-{start:05d}.parquet"
        frame(TEXT_SHARD, {"row": range(start, start + len(chunk)), "text_hash": [text_hash(t) for t in chunk],
                           "id": [f"{kind}{start + i}" for i in range(len(chunk))], "text": chunk,
                           "length": [len(t) for t in chunk]}).write_parquet(path)
        paths.append(str(path))
    return tuple(paths)


def _texts(folder, queries: list[str], docs: list[str], per_file: int = 16) -> Texts:
    return Texts(_files(folder, "query", queries, per_file), _files(folder, "corpus", docs, per_file), "", 1)


def _run(tmp_path, name: str, texts: Texts, spec: EncoderSpec) -> tuple[EmbedPlan, list[Filled]]:
    """The stage as the flow runs it, with its tasks run one after another here."""
    specs = {"query": spec, "corpus": spec}
    store = str(tmp_path / "store")
    plan = plan_embedding(texts, specs, store, str(tmp_path / name / "embed"), WORKERS, RuntimeConfig())
    create_matrices(plan)
    progress = str(tmp_path / name / "progress")
    filled = [embed_texts(plan, i, specs, store, progress) for i in range(len(plan.embed_ranges))]
    filled += [copy_stored(plan, i, specs, store, progress) for i in range(len(plan.copy_ranges))]
    return plan, filled


def _matrix(plan: EmbedPlan, kind: str) -> np.ndarray:
    return np.load(plan.matrices[kind])


def _counts(filled: list[Filled]) -> tuple[int, int]:
    return sum(f.embedded for f in filled), sum(f.copied for f in filled)


def _demo(name: str, count: int) -> list[str]:
    rows = [json.loads(line) for line in (DEMO / f"{name}.jsonl").read_text().splitlines()[:count]]
    return [f"{r.get('title', '')} {r['text']}".strip() for r in rows]


def test_bundled_model_is_verified_by_its_weights_hash(spec):
    assert spec.weights_sha256 == BUNDLED_WEIGHTS_SHA256


def test_a_model_folder_with_other_weights_gets_another_fingerprint(tmp_path, spec):
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    other = EncoderSpec(str(tmp_path), weights_sha256(tmp_path), "", None, 8, "cpu")
    assert other.fingerprint != spec.fingerprint
    prompted = EncoderSpec(spec.path, spec.weights_sha256, "query: ", None, 8, "cpu")
    assert prompted.fingerprint != spec.fingerprint


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not a local folder"):
        resolve_model(str(tmp_path / "missing-model"))


@pytest.mark.slow
def test_stage_vectors_equal_one_encode_call_and_a_rerun_copies_them_from_the_store(tmp_path, spec):
    queries, docs = _demo("queries", 48), _demo("corpus", 192)
    texts = _texts(tmp_path / "texts", queries, docs)
    plan, filled = _run(tmp_path, "cold", texts, spec)

    assert len(plan.embed_ranges) == WORKERS * RuntimeConfig().tasks_per_worker  # not one per text file (15 here)
    todo = pl.read_parquet(plan.todo)
    assert todo["length"].to_list() == sorted(todo["length"].to_list(), reverse=True)  # across the whole run
    read = todo["length"].clip(upper_bound=CHARS_PER_TOKEN * spec.max_seq_length)  # what the model reads
    work = [read[a:b].sum() for a, b in plan.embed_ranges]
    assert max(work) < 1.5 * min(work)  # cut by the characters read, not by count
    assert _counts(filled) == (240, 0) and plan.copy_ranges == ()
    for kind, wanted in (("query", queries), ("corpus", docs)):
        cosines = np.einsum("ij,ij->i", _matrix(plan, kind), encode(spec, wanted))
        assert cosines.min() >= 0.9999, kind

    again, refilled = _run(tmp_path, "warm", texts, spec)
    assert _counts(refilled) == (0, 240) and again.embed_ranges == ()
    assert 1 <= len(again.copy_ranges) <= WORKERS * RuntimeConfig().tasks_per_worker
    for kind in ("query", "corpus"):
        np.testing.assert_array_equal(_matrix(again, kind), _matrix(plan, kind))


SHORT = ["Cells divide by mitosis.", "The moon orbits the earth.", "Proteins fold into shapes.",
         "Water boils at 100 C.", "Light bends in water.", "Iron rusts in air."]


def test_new_texts_only_are_embedded_and_a_text_both_query_and_document_once(tmp_path, spec):
    first, filled = _run(tmp_path, "a", _texts(tmp_path / "a", SHORT[:1], SHORT[:3], per_file=2), spec)
    assert _counts(filled) == (3, 0)  # the query is also the first document: one vector
    np.testing.assert_array_equal(_matrix(first, "query")[0], _matrix(first, "corpus")[0])
    grown, filled = _run(tmp_path, "b", _texts(tmp_path / "b", SHORT[4:5], SHORT[:4], per_file=2), spec)
    assert _counts(filled) == (2, 3)
    np.testing.assert_array_equal(_matrix(grown, "corpus")[:3], _matrix(first, "corpus"))
    np.testing.assert_allclose(_matrix(grown, "query")[0], encode(spec, SHORT[4:5])[0], atol=1e-5)


def test_a_damaged_part_is_named_and_its_texts_embedded_again(tmp_path, spec):
    texts = _texts(tmp_path / "texts", SHORT[:2], SHORT, per_file=2)
    first, _ = _run(tmp_path, "a", texts, spec)
    store = EmbeddingStore(tmp_path / "store", spec.fingerprint)
    part = store.parts()[0]
    damaged_rows = store.read(part.name)[0].len()
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))

    again, filled = _run(tmp_path, "b", texts, spec)
    assert set().union(*(f.damaged for f in filled)) == {part.name}
    assert _counts(filled) == (damaged_rows, len(SHORT) - damaged_rows)
    np.testing.assert_allclose(_matrix(again, "corpus"), _matrix(first, "corpus"), atol=1e-5)
    third, filled = _run(tmp_path, "c", texts, spec)  # repaired: nothing is embedded again
    assert _counts(filled) == (0, len(SHORT)) and third.damaged == ()


def test_a_retried_embedding_task_reads_back_the_part_its_killed_try_wrote(tmp_path, spec):
    texts = _texts(tmp_path / "texts", SHORT[:1], SHORT[1:], per_file=4)
    specs = {"query": spec, "corpus": spec}
    plan = plan_embedding(texts, specs, str(tmp_path / "store"), str(tmp_path / "run"), WORKERS, RuntimeConfig())
    create_matrices(plan)
    embed_texts(plan, 0, specs, str(tmp_path / "store"), str(tmp_path / "progress"))
    store = EmbeddingStore(tmp_path / "store", spec.fingerprint)
    parts, vectors = {p: p.stat().st_ino for p in store.parts()}, _matrix(plan, "corpus").copy()
    create_matrices(plan)  # the first try's rows are lost with its worker, its part is not
    assert embed_texts(plan, 0, specs, str(tmp_path / "store"), str(tmp_path / "progress")).embedded > 0
    assert {p: p.stat().st_ino for p in store.parts()} == parts  # read back, not written again
    np.testing.assert_array_equal(_matrix(plan, "corpus"), vectors)


def test_copies_survive_a_compaction_between_plan_and_copy(tmp_path, spec):
    docs = [f"document number {i}" for i in range(5 * COMPACT_AT)]
    texts = _texts(tmp_path / "texts", docs[:1], docs)
    store = EmbeddingStore(tmp_path / "store", spec.fingerprint)
    vectors = np.random.default_rng(0).standard_normal((len(docs), 384)).astype(np.float32)
    for start in range(0, len(docs), 5):  # small parts, as incremental runs leave them
        store.put(pl.Series([text_hash(d) for d in docs[start:start + 5]]), vectors[start:start + 5])
    specs = {"query": spec, "corpus": spec}
    plan = plan_embedding(texts, specs, str(tmp_path / "store"), str(tmp_path / "run"), WORKERS, RuntimeConfig())
    create_matrices(plan)
    assert len(store.compact()) == 1  # another run compacts: every part the plan names is gone
    filled = [copy_stored(plan, i, specs, str(tmp_path / "store"), str(tmp_path / "progress"))
              for i in range(len(plan.copy_ranges))]
    assert _counts(filled) == (0, len(docs))
    np.testing.assert_array_equal(_matrix(plan, "corpus"), vectors)
    np.testing.assert_array_equal(_matrix(plan, "query")[0], vectors[0])


def test_an_index_entry_for_another_text_is_never_copied(tmp_path, spec):
    texts = _texts(tmp_path / "texts", SHORT[:1], SHORT[:1])
    wanted = text_hash(SHORT[0])
    impostor = wanted[:16] + ("0" if wanted[16] != "0" else "1") * 16  # same 64-bit index key, another text
    EmbeddingStore(tmp_path / "store", spec.fingerprint).put(pl.Series([impostor]), np.ones((1, 384), np.float32))
    plan, filled = _run(tmp_path, "a", texts, spec)
    assert len(plan.copy_ranges) == 1  # the index says stored...
    assert _counts(filled) == (1, 0)  # ...the part's full hash says otherwise: embedded
    np.testing.assert_allclose(_matrix(plan, "corpus")[0], encode(spec, SHORT[:1])[0], atol=1e-5)
