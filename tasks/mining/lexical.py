"""BM25, a lexical second opinion on the candidates: no model, so it costs little and catches what the embedding
misses (a candidate that shares the query's rare terms as much as a positive does is often relevant).

The corpus index is built once per run and cached by content, like the embedding store: under
`runtime.workdir/lexical/<key>`, the key a hash of the corpus text hashes (in row order), the BM25 settings and the
library's version. Each worker loads it once (memory-mapped) and scores every retrieved candidate and every positive
of its partition. bm25s does the work: it keeps the index as sparse matrices over numpy and scores a query in
milliseconds, is maintained (releases through 2026) and needs neither a JVM (Pyserini) nor a pure-Python loop over
documents (rank_bm25).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import bm25s
import numpy as np
import polars as pl

from negforge.schemas.tables import LEXICAL_PAIRS, frame, shard_rows
from negforge.tasks.runtime.containment import inside
from negforge.tasks.storage.mirror import fetch


class LexicalError(ValueError):
    """A lexical rule that cannot be applied (texts that tokenize to nothing)."""


def index_key(corpus_files: Sequence[str], settings: dict[str, Any]) -> str:
    """The cache key of a corpus's BM25 index: its text hashes in row order, the settings, the library version."""
    digest = hashlib.sha256(json.dumps({**settings, "bm25s": bm25s.__version__}, sort_keys=True).encode())
    hashes = pl.scan_parquet(list(corpus_files)).select("row", "text_hash").collect().sort("row")["text_hash"]
    for chunk in hashes.to_list():
        digest.update(chunk.encode())
    return digest.hexdigest()[:24]


def _tokens(texts: list[str], settings: dict[str, Any], ids: bool):
    return bm25s.tokenize(texts, stopwords=settings["stopwords"], return_ids=ids, show_progress=False)


def build_index(corpus_files: Sequence[str], settings: dict[str, Any], workdir: str) -> str:
    """The folder of the corpus's BM25 index, built unless the cache has it (written to a temporary name first).
    An index folder that is a symlink or holds one is refused, not read or written through
    (tasks/runtime/containment.py)."""
    folder = inside(workdir, "lexical", index_key(corpus_files, settings), entries=True)
    fetch(folder)  # a workdir on an object store: the index another run built, if any
    if (folder / "params.index.json").exists():
        return str(folder)
    texts = pl.scan_parquet(list(corpus_files)).select("row", "text").collect().sort("row")["text"].to_list()
    tokens = _tokens(texts, settings, ids=True)
    if not tokens.vocab:
        raise LexicalError(f"lexical: the {len(texts)} corpus texts tokenize to nothing (no word of two or more "
                           f"letters outside the stopwords), so BM25 cannot score them; set lexical.stopwords=null "
                           f"or turn the lexical rules off")
    retriever = bm25s.BM25(k1=settings["k1"], b=settings["b"])
    retriever.index(tokens, show_progress=False)
    tmp = inside(folder.parent, f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    retriever.save(str(tmp), show_progress=False)
    (tmp / "settings.json").write_text(json.dumps(settings, allow_nan=False))
    try:
        tmp.rename(folder)
    except OSError:  # another run built the same index meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


@lru_cache(maxsize=2)
def _index(path: str) -> bm25s.BM25:
    """A BM25 index, loaded once per worker process."""
    return bm25s.BM25.load(path, mmap=True, show_progress=False)


def bm25_pairs(pairs: pl.DataFrame, index: str, query_files: Sequence[str]) -> pl.DataFrame:
    """BM25 scores of distinct (query_row, doc_row) pairs: (query_row, doc_row, bm25). A query that tokenizes to
    nothing scores 0 with every document."""
    pairs = pairs.select(*LEXICAL_PAIRS).unique().sort(list(LEXICAL_PAIRS))
    retriever = _index(index)
    settings = json.loads((Path(index) / "settings.json").read_text())
    queries = shard_rows(list(query_files), pairs["query_row"]).sort("row")
    tokens = dict(zip(queries["row"].to_list(), _tokens(queries["text"].to_list(), settings, ids=False)))
    q, d = pairs["query_row"].to_numpy(), pairs["doc_row"].to_numpy()
    scores = np.zeros(len(q), dtype=np.float32)
    bounds = np.flatnonzero(np.r_[True, q[1:] != q[:-1], True]) if len(q) else []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        ids = retriever.get_tokens_ids(tokens[int(q[start])])
        if ids:
            scores[start:stop] = retriever.get_scores_from_ids(ids)[d[start:stop]]
    return frame(LEXICAL_PAIRS | {"bm25": pl.Float32}, {"query_row": q, "doc_row": d, "bm25": scores})


def with_bm25(tables: Sequence[pl.DataFrame], index: str, query_files: Sequence[str]) -> list[pl.DataFrame]:
    """Each table of (query_row, doc_row, ...) with its pairs' `bm25` column added (scored once for all tables)."""
    scores = bm25_pairs(pl.concat([t.select(*LEXICAL_PAIRS) for t in tables]), index, query_files)
    return [t.drop("bm25", strict=False).join(scores, on=list(LEXICAL_PAIRS), how="left", maintain_order="left")
            for t in tables]
