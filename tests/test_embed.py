"""Embedding with the real bundled model through the content-addressed store: nothing is embedded twice."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from negforge.schemas.tables import TEXT_SHARD, frame
from negforge.tasks.embed import embed_shard
from negforge.tasks.embedding_store import EmbeddingStore
from negforge.tasks.model import BUNDLED_WEIGHTS_SHA256, EncoderSpec, ModelError, encode, resolve_model, weights_sha256
from negforge.tasks.text import text_hash


def _shard(tmp_path, name, texts):
    path = tmp_path / f"{name}.parquet"
    frame(TEXT_SHARD, {"row": range(len(texts)), "text_hash": [text_hash(t) for t in texts],
                       "id": [f"d{i}" for i in range(len(texts))], "text": texts,
                       "length": [len(t) for t in texts]}).write_parquet(path)
    return str(path)


@pytest.fixture(scope="module")
def spec():
    ref = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    return EncoderSpec(ref.path, ref.weights_sha256, "", None, 8, "cpu")


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


def test_second_embed_takes_everything_from_the_store_and_new_texts_only_are_embedded(tmp_path, spec):
    texts = ["Cells divide by mitosis.", "The moon orbits the earth.", "Proteins fold into shapes."]
    store = str(tmp_path / "store")
    first = embed_shard(_shard(tmp_path, "a", texts), spec, store, str(tmp_path / "a.npy"))
    again = embed_shard(_shard(tmp_path, "b", texts), spec, store, str(tmp_path / "b.npy"))
    grown = embed_shard(_shard(tmp_path, "c", texts + ["Water boils at 100 C."]), spec, store,
                        str(tmp_path / "c.npy"))
    assert (first["embedded"], first["cached"]) == (3, 0)
    assert (again["embedded"], again["cached"]) == (0, 3)
    assert (grown["embedded"], grown["cached"]) == (1, 3)
    vectors = np.load(tmp_path / "c.npy")
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vectors[:3], np.load(tmp_path / "a.npy"), atol=0)
    np.testing.assert_allclose(vectors[3], encode(spec, ["Water boils at 100 C."])[0], atol=1e-5)


def test_a_half_written_part_is_invisible(tmp_path, spec):
    store = EmbeddingStore(tmp_path, spec.fingerprint)
    (store.folder / ".part-abc.parquet.tmp-123").write_bytes(b"partial")
    assert store.stored([text_hash("x")]) == set()
    store.put([text_hash("x")], np.ones((1, 4), np.float32))
    assert store.stored([text_hash("x"), text_hash("y")]) == {text_hash("x")}
    with pytest.raises(KeyError, match="no vector"):
        store.get([text_hash("y")])
    assert pl.read_parquet(next(store.folder.glob("part-*.parquet"))).height == 1
