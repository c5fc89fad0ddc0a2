"""A text's vector is the same bits whatever it is embedded with: the order, the other texts of the call, the batch
size and the thread count. A part embedded again after a killed worker or a repaired store then gives the scores it
gave the first time, and unchanged inputs keep their data hash (tests/test_embed_stage.py, test_dask_cluster.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from negforge.tasks.embedding.model import MIN_BATCH_TOKENS, EncoderSpec, _bucket_batch, encode, resolve_model
from tests.conftest import DEMO


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Demo documents (long and short) and queries: padded lengths from 16 tokens to 128."""
    docs = [json.loads(line) for line in (DEMO / "corpus.jsonl").read_text().splitlines()[:150]]
    queries = [json.loads(line)["text"] for line in (DEMO / "queries.jsonl").read_text().splitlines()[:60]]
    return [d["title"] + " " + d["text"] for d in docs] + [d["title"] for d in docs[:60]] + queries


def _spec(batch_size: int) -> EncoderSpec:
    ref = resolve_model("all-MiniLM-L6-v2")
    return EncoderSpec(ref.path, ref.weights_sha256, "", 128, batch_size, "cpu")


def _differing(a: np.ndarray, b: np.ndarray) -> int:
    return int((a != b).any(axis=1).sum())


def test_vectors_do_not_depend_on_the_other_texts_of_the_call(texts):
    whole = encode(_spec(32), texts)
    order = list(range(len(texts)))
    random.Random(7).shuffle(order)
    shuffled = np.empty_like(whole)
    shuffled[order] = encode(_spec(32), [texts[i] for i in order])
    assert _differing(whole, shuffled) == 0
    subset = order[:70]  # another composition: each padded length met with other texts, in other numbers
    assert _differing(whole[subset], encode(_spec(8), [texts[i] for i in subset])) == 0
    alone = np.concatenate([encode(_spec(32), [texts[i]]) for i in order[:25]])
    assert _differing(whole[order[:25]], alone) == 0


def test_vectors_do_not_depend_on_the_thread_count(texts):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = encode(_spec(16), texts[:120])
        torch.set_num_threads(2)
        two = encode(_spec(16), texts[:120])
    finally:
        torch.set_num_threads(threads)
    assert _differing(one, two) == 0


@pytest.mark.parametrize("count, padded, batch_size", [(1, 16, 32), (33, 16, 32), (70, 16, 32), (5, 256, 32),
                                                       (3, 48, 8), (40, 48, 8), (9, 128, 4)])
def test_every_batch_has_enough_token_rows(count, padded, batch_size):
    texts = [f"text {i}" for i in range(count)]
    batch, rows = _bucket_batch(texts, padded, batch_size)
    assert batch[:count] == texts and set(batch[count:]) <= {texts[-1]}
    assert rows >= batch_size
    sizes = [min(rows, len(batch) - start) for start in range(0, len(batch), rows)]
    assert all(size * padded >= MIN_BATCH_TOKENS for size in sizes), sizes
    assert len(batch) - count < -(-MIN_BATCH_TOKENS // padded)  # fewer copies than one minimal batch
