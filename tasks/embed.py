"""Embed one shard of texts: take what the store has, embed only the rest, write the shard's vector matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from negforge.tasks.embedding_store import EmbeddingStore
from negforge.tasks.model import EncoderSpec, encode


def embed_shard(shard_path: str, spec: EncoderSpec, store_root: str, vectors_path: str) -> dict[str, Any]:
    """Write the shard's vectors (rows in shard order) to `vectors_path`.

    Returns:
        `embedded` (texts run through the model) and `cached` (texts found in the store).
    """
    shard = pl.read_parquet(shard_path, columns=["text_hash", "text"])
    hashes = shard["text_hash"].to_list()
    store = EmbeddingStore(store_root, spec.fingerprint)
    have = store.stored(hashes)
    todo = shard.filter(~pl.col("text_hash").is_in(list(have)))
    if todo.height:
        store.put(todo["text_hash"].to_list(), encode(spec, todo["text"].to_list()))
    vectors = store.get(hashes)
    Path(vectors_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{vectors_path}.tmp-{os.getpid()}.npy"
    np.save(tmp, vectors)
    os.replace(tmp, vectors_path)
    return {"embedded": todo.height, "cached": shard.height - todo.height, "vectors": vectors_path}
