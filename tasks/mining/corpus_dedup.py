"""Corpus deduplication (`dedup.corpus`): near-duplicate documents leave the corpus before it is searched.

Pairs come from FAISS range search (cosine >= 1 - eps) of a range of corpus rows against the rows before it, one
block in memory at a time, so memory is bounded by a block and the pairs found. The choice is SemDeDup's, without
chaining: documents are visited positives first, then in corpus order; a document within eps of an already kept one is
dropped and recorded with that kept document as its group. Positives are always kept.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import polars as pl

from negforge.schemas.stages import CorpusDeduplicated, VectorFile
from negforge.schemas.tables import CORPUS_DUPLICATES, CORPUS_PAIRS, shard_rows
from negforge.tasks.search.exact import open_vectors, pair_scores


def near_duplicate_pairs(first: int, stop: int, corpus: VectorFile, rows_per_block: int, min_cosine: float,
                         out_path: str) -> str:
    """Every pair (document in rows [first, stop), earlier document) with cosine >= min_cosine.

    FAISS proposes the pairs, block by block; their cosines are then computed one pair at a time, as search scores
    are, so the pairs found do not depend on the blocks.
    """
    vectors = open_vectors(corpus)
    queries = np.ascontiguousarray(vectors[first:stop], dtype=np.float32)
    proposal = float(np.float32(min_cosine) - np.float32(1e-4))
    parts = []
    for start in range(0, stop, rows_per_block):
        end = min(start + rows_per_block, stop)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors[start:end], dtype=np.float32))
        limits, _, rows = index.range_search(queries, proposal)
        mine = np.repeat(np.arange(len(queries)), np.diff(limits).astype(np.int64)) + first
        theirs = rows + start
        earlier = theirs < mine
        mine, theirs = mine[earlier], theirs[earlier]
        cosines = pair_scores(queries[mine - first], np.asarray(vectors[theirs], dtype=np.float32))
        keep = cosines >= np.float32(min_cosine)
        parts.append(pl.DataFrame({"doc_row": mine[keep], "other_row": theirs[keep], "cosine": cosines[keep]},
                                  schema=CORPUS_PAIRS))
    pl.concat(parts).write_parquet(out_path)
    return out_path


def choose_kept(pair_paths: list[str], positives_path: str, corpus_shards: list[str], out_dir: str,
                task_runs: int = 1) -> CorpusDeduplicated:
    """Decide which documents to drop; write the dropped rows (for search) and the groups with ids (the record)."""
    pairs = pl.concat([pl.read_parquet(p) for p in pair_paths])
    both_ways = pl.concat([pairs, pairs.select(pl.col("other_row").alias("doc_row"),
                                               pl.col("doc_row").alias("other_row"), "cosine")])
    positives = set(pl.read_parquet(positives_path, columns=["doc_row"])["doc_row"].to_list())
    near: dict[int, list[tuple[int, float]]] = {}
    for doc, other, cosine in both_ways.sort("cosine", descending=True).iter_rows():
        near.setdefault(doc, []).append((other, cosine))
    kept: set[int] = set()
    dropped: dict[str, list] = {"dropped_row": [], "kept_row": [], "cosine": []}
    for doc in sorted(near, key=lambda row: (row not in positives, row)):
        group = next(((other, cosine) for other, cosine in near[doc] if other in kept), None)
        if group is None or doc in positives:
            kept.add(doc)
            continue
        dropped["dropped_row"].append(doc)
        dropped["kept_row"].append(group[0])
        dropped["cosine"].append(group[1])
    table = pl.DataFrame(dropped, schema=CORPUS_DUPLICATES)
    ids = shard_rows(corpus_shards, pl.concat([table["dropped_row"], table["kept_row"]])).select("row", "id")
    record = (table.join(ids.rename({"row": "dropped_row", "id": "dropped_id"}), on="dropped_row", how="left")
              .join(ids.rename({"row": "kept_row", "id": "kept_id"}), on="kept_row", how="left")
              .select("dropped_id", "kept_id", "cosine").sort("dropped_id"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.select("dropped_row").write_parquet(out / "excluded-rows.parquet")
    record.write_parquet(out / "corpus-duplicates.parquet")
    return CorpusDeduplicated(excluded_docs=str(out / "excluded-rows.parquet"),
                              corpus_duplicates=str(out / "corpus-duplicates.parquet"), dropped=table.height,
                              task_runs=task_runs)
