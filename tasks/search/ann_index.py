"""Approximate search where exact search is too slow (`search.index`: ivf or hnsw), measured against exact search.

The index is built once per run (FAISS; 8-bit scalar-quantized vectors, a quarter of the float32 matrix, so each
worker can hold it), trained on a seeded sample within the memory budget, and built single-threaded so that a given
config gives the same index on the same machine. It only proposes candidates: their scores are computed exactly
(tasks/search/exact.py), so an approximate search can miss candidates but never misscore them.

Every run measures it: a seeded sample of queries is searched exactly and approximately, and the probe
(tasks/mining/recall_probe.py: it mines the sample, so it sits with mining) reports the candidate-window recall (the
share of the exact top-`depth` found) and the share of mined negatives that change. With `search.target_recall`,
nprobe (ivf) or efSearch (hnsw) doubles until the probe meets the target, or says it cannot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
import polars as pl

from negforge.schemas.config import SearchConfig
from negforge.schemas.stages import VectorFile
from negforge.tasks.search.exact import open_vectors

MIN_POINTS_PER_LIST = 39  # FAISS's own floor for k-means training
TRAINING_POINTS_PER_LIST = 64  # FAISS warns below 39 and samples down to 256; k-means time grows with the sample


class IndexSettingError(ValueError):
    """An approximate-index setting that cannot work on this data; names the setting and what would."""


@dataclass(frozen=True)
class Probe:
    """The index and the search setting chosen for it, with the probe's measurements."""

    index: str
    kind: str
    knob: int
    recall: float
    negatives_changed: float | None
    queries: int
    met_target: bool


def list_count(cfg: SearchConfig, documents: int) -> int:
    """IVF lists: search.nlist, else about sqrt(documents), at most one list per MIN_POINTS_PER_LIST documents.

    The index is built for one run and searched by the run's queries only, so its build (documents x lists to fill
    it) weighs as much as its search (queries x documents x nprobe / lists). FAISS's guideline of 4-16 sqrt(N) is for
    indexes searched by many more queries. On bench/scale.py's 1M corpus (one thread), 1,000 lists trained on 64
    points each train and fill in 17 s; 4,000 on 256 each took ~3 minutes; both need about a quarter of the lists
    probed for a window recall of 0.98 (docs/STATUS.md).
    """
    return cfg.nlist or max(1, min(int(math.sqrt(documents)), documents // MIN_POINTS_PER_LIST))


def check_index_settings(cfg: SearchConfig, documents: int) -> None:
    """Refuse, before any work, an index that cannot be trained on `documents` vectors."""
    if cfg.index == "ivf" and cfg.nlist and cfg.nlist * MIN_POINTS_PER_LIST > documents:
        largest = max(1, documents // MIN_POINTS_PER_LIST)
        raise IndexSettingError(f"search.nlist={cfg.nlist} needs at least {cfg.nlist * MIN_POINTS_PER_LIST} "
                                f"documents to train ({MIN_POINTS_PER_LIST} per list); this corpus has {documents}: "
                                f"use search.nlist <= {largest}, or null to derive it")


def build_index(corpus: VectorFile, excluded_docs: str | None, cfg: SearchConfig, budget_bytes: int,
                out_path: str) -> str:
    """Train and fill the index over the corpus rows (less those corpus deduplication dropped), ids = rows."""
    faiss.omp_set_num_threads(1)  # k-means and HNSW insertion are then deterministic
    vectors = open_vectors(corpus)
    rows = np.arange(corpus.rows, dtype=np.int64)
    if excluded_docs:
        rows = np.setdiff1d(rows, pl.read_parquet(excluded_docs)["dropped_row"].to_numpy().astype(np.int64))
    rng = np.random.default_rng(cfg.seed)
    sample_size = min(len(rows), max(1, budget_bytes // (4 * corpus.dim * 4)),
                      TRAINING_POINTS_PER_LIST * list_count(cfg, len(rows)))
    sample = np.ascontiguousarray(vectors[np.sort(rng.choice(rows, sample_size, replace=False))], dtype=np.float32)
    if cfg.index == "ivf":
        quantizer = faiss.IndexFlatIP(corpus.dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, corpus.dim, list_count(cfg, len(rows)),
                                              faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = cfg.seed
    else:
        index = faiss.IndexIDMap(faiss.IndexHNSWSQ(corpus.dim, faiss.ScalarQuantizer.QT_8bit, cfg.hnsw_m,
                                                   faiss.METRIC_INNER_PRODUCT))
    index.train(sample)
    step = max(1024, budget_bytes // (4 * corpus.dim * 4))
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        index.add_with_ids(np.ascontiguousarray(vectors[chunk], dtype=np.float32), chunk)
    faiss.write_index(index, out_path)
    return out_path


def search_parameters(kind: str, knob: int) -> faiss.SearchParameters:
    return faiss.SearchParametersIVF(nprobe=knob) if kind == "ivf" else faiss.SearchParametersHNSW(efSearch=knob)


def propose_approximately(index: faiss.Index, kind: str, knob: int, queries: np.ndarray, k: int) -> np.ndarray:
    """Corpus rows of each query's approximate best `k` (-1 where fewer)."""
    _, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=search_parameters(kind, knob))
    return rows


def window_recall(exact: pl.DataFrame, approximate: pl.DataFrame) -> float:
    """Share of the exact (query_row, doc_row) candidates that the approximate search found too."""
    found = exact.join(approximate, on=["query_row", "doc_row"], how="semi").height
    return found / exact.height if exact.height else 1.0


def knobs(kind: str, depth: int, lists: int) -> list[int]:
    """The search settings tried, cheapest first: nprobe 1, 2, 4 ... lists; efSearch depth, 2 depth ... 64 depth."""
    if kind == "ivf":
        return sorted({min(lists, 2 ** i) for i in range(int(math.log2(max(1, lists))) + 1)} | {lists})
    return [depth * 2 ** i for i in range(7)]
