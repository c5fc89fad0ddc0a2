"""Rescoring: a second model scores every candidate and every positive of a partition, on its Dask worker.

A guide (sentence-transformers bi-encoder, GISTEmbed) scores a pair by the cosine of its own normalized embeddings; a
CrossEncoder (RocketQA) by `predict` on the pair, on its own output scale. All candidates to the searched depth are
scored, not only the survivors of the margins, so that re-mining with other margins or rules needs no model. Each
worker loads the model once (an LRU cache keyed by path and weights hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import polars as pl

from negforge.schemas.config import RescoreConfig
from negforge.schemas.tables import RESCORE_PAIRS, shard_rows
from negforge.tasks.embedding.model import EncoderSpec, encode, resolve_model


@dataclass(frozen=True)
class RescorerSpec:
    """The rescoring model resolved to a local folder, and how to run it."""

    kind: str
    path: str
    weights_sha256: str
    max_length: int | None
    batch_size: int
    device: str | None
    query_prompt: str
    corpus_prompt: str

    def encoder(self, prompt: str) -> EncoderSpec:
        """The guide as an encoder with one of its prompts."""
        return EncoderSpec(self.path, self.weights_sha256, prompt, self.max_length, self.batch_size, self.device)


def rescorer_spec(cfg: RescoreConfig, device: str | None) -> RescorerSpec:
    """Resolve the configured rescorer (bundled name, local path or hub name) and hash its weights."""
    ref = resolve_model(cfg.model)
    return RescorerSpec(cfg.kind, ref.path, ref.weights_sha256, cfg.max_length, cfg.batch_size, device,
                        cfg.query_prompt or "", cfg.corpus_prompt or "")


@lru_cache(maxsize=2)
def load_cross_encoder(path: str, weights_sha256: str, max_length: int | None, device: str | None):
    """Load a CrossEncoder once per process; the weights hash is part of the key."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(path, max_length=max_length, device=device, local_files_only=True)


def rescore_pairs(pairs: pl.DataFrame, spec: RescorerSpec, query_files: Sequence[str],
                  corpus_files: Sequence[str]) -> pl.DataFrame:
    """Score distinct (query_row, doc_row) pairs with the rescorer: (query_row, doc_row, rescore)."""
    pairs = pairs.select(*RESCORE_PAIRS).unique().sort(list(RESCORE_PAIRS))
    query_texts = shard_rows(query_files, pairs["query_row"]).select(pl.col("row").alias("query_row"),
                                                                    pl.col("text").alias("query"))
    doc_texts = shard_rows(corpus_files, pairs["doc_row"]).select(pl.col("row").alias("doc_row"),
                                                                 pl.col("text").alias("document"))
    pairs = (pairs.join(query_texts, on="query_row", maintain_order="left")
             .join(doc_texts, on="doc_row", maintain_order="left"))
    queries, docs = pairs["query"].to_list(), pairs["document"].to_list()
    if spec.kind == "guide":
        scores = _guide_scores(spec, queries, docs)
    else:
        model = load_cross_encoder(spec.path, spec.weights_sha256, spec.max_length, spec.device)
        scores = model.predict(list(zip(queries, docs)), batch_size=spec.batch_size, show_progress_bar=False,
                               convert_to_numpy=True)
    return pairs.select(*RESCORE_PAIRS).with_columns(pl.Series("rescore", np.asarray(scores, dtype=np.float32)))


def _guide_scores(spec: RescorerSpec, queries: list[str], docs: list[str]) -> np.ndarray:
    """Cosine of the guide's embeddings, each distinct text encoded once."""
    unique_queries, query_index = np.unique(np.array(queries, dtype=object), return_inverse=True)
    unique_docs, doc_index = np.unique(np.array(docs, dtype=object), return_inverse=True)
    q = encode(spec.encoder(spec.query_prompt), unique_queries.tolist())
    d = encode(spec.encoder(spec.corpus_prompt), unique_docs.tolist())
    return np.einsum("ij,ij->i", q[query_index], d[doc_index])
