"""One partition of queries, searched and mined by one task on one worker.

The task streams the corpus once for its queries (tasks/search/exact.py), computes candidate similarities and BM25
scores (when lexical scoring is on), searches its short queries deeper when `mine.max_depth` asks for it, rescores with
a second model when one is set, and mines. It writes its candidates and their reasons to files; the flow only sees the
small `MinedPartition`. Re-mining runs the mining half alone on stored candidates.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import CandidateFiles, MinedPartition, Partition, SearchJob, Texts
from negforge.schemas.tables import HITS, POSITIVE_SCORES, frame
from negforge.tasks.mining.adaptive_depth import depth_levels, mine_adaptively, mine_options
from negforge.tasks.mining.lexical import with_bm25
from negforge.tasks.mining.rescore import rescore_pairs, rescorer_spec
from negforge.tasks.mining.similarity import candidate_similarity
from negforge.tasks.runtime.progress import TaskProgress
from negforge.tasks.search.ann_index import propose_approximately
from negforge.tasks.search.exact import SLACK, open_vectors, pair_scores, propose, rank_exactly

# Bytes of candidate vectors gathered at once for exact scores and similarities: a task's memory then stays near a
# block of the corpus whatever the depth (a chunk of 2,048 queries at depth 58 gathered ~550 MB at dimension 384).
CHUNK_BYTES = 48 << 20


def query_chunk(depth: int, dim: int) -> int:
    """Queries per chunk: as many as keep one gathered matrix of their candidates' vectors within CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (depth * dim * 4))


def _rows(table: str | tuple[str, ...], partition: Partition) -> pl.DataFrame:
    """The rows of a table (by query_row) that belong to the partition, read with a pushed-down filter."""
    return (pl.scan_parquet(table).filter(pl.col("query_row").is_between(partition.first, partition.stop - 1))
            .collect())


@lru_cache(maxsize=1)
def _index(path: str) -> faiss.Index:
    """An approximate index, read once per worker process."""
    return faiss.read_index(path)


def _search(query_rows: np.ndarray, queries: np.ndarray, job: SearchJob, depth: int, excluded: np.ndarray | None,
            progress: TaskProgress | None = None) -> pl.DataFrame:
    """The best `depth` candidates of the given queries (global rows), ranked: HITS + rank."""
    if job.approximate:
        approx = job.approximate
        proposed = propose_approximately(_index(approx.index), approx.kind, approx.knob, queries,
                                         depth + max(SLACK, depth // 4))
        if progress:
            progress.advance(len(queries) * job.corpus.rows)
    else:
        proposed = propose(queries, job.corpus, depth + SLACK, job.rows_per_block, excluded,
                           on_block=progress.advance if progress else None)
    parts, step = [], query_chunk(depth + SLACK, job.corpus.dim)
    for start in range(0, len(queries), step):
        stop = start + step
        qi, rows, scores = rank_exactly(queries[start:stop], open_vectors(job.corpus), proposed[start:stop], depth)
        parts.append(frame(HITS, {"query_row": query_rows[start:stop][qi], "doc_row": rows, "score": scores}))
    hits = pl.concat(parts)
    return hits.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("query_row").alias("rank"))


def _positive_scores(positives: pl.DataFrame, rows: np.ndarray, queries: np.ndarray, job: SearchJob) -> pl.DataFrame:
    """Scores of the positives of the queries `rows` (sorted global rows; `queries` their vectors)."""
    pairs = positives.select("query_row", "doc_row").unique().sort("query_row", "doc_row")
    q, d = pairs["query_row"].to_numpy(), pairs["doc_row"].to_numpy()
    corpus = open_vectors(job.corpus)
    scores = pair_scores(queries[np.searchsorted(rows, q)], np.asarray(corpus[d], dtype=np.float32)) if len(q) else []
    return frame(POSITIVE_SCORES, {"query_row": q, "doc_row": d, "score": scores})


def searched(rows: np.ndarray, queries: np.ndarray, positives: pl.DataFrame, job: SearchJob,
             excluded: np.ndarray | None, progress: TaskProgress | None = None,
             depth: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Search the queries `rows` (sorted global rows) to `depth` (default: the job's): ranked hits with `pos_sim`
    (and `bm25` with a lexical index), their near-duplicate pairs, and the positives' scores."""
    hits = _search(rows, queries, job, depth or job.depth, excluded, progress)
    hits, near = _similarity(hits, positives, job)
    hits, positive_scores = _lexical(job, hits, _positive_scores(positives, rows, queries, job))
    return hits, near, positive_scores


def _lexical(job: SearchJob, *tables: pl.DataFrame) -> list[pl.DataFrame]:
    """The tables of (query_row, doc_row) pairs with their BM25 scores, when the job has a lexical index."""
    if not job.lexical_index:
        return list(tables)
    return with_bm25(tables, job.lexical_index, job.texts.query_files)


def _similarity(hits: pl.DataFrame, positives: pl.DataFrame, job: SearchJob) -> tuple[pl.DataFrame, pl.DataFrame]:
    """candidate_similarity over chunks of queries, so only a chunk's candidate vectors are in memory (hits are
    sorted by query_row: a chunk is a slice)."""
    query_rows = hits["query_row"].to_numpy()
    firsts = np.unique(query_rows)[::query_chunk(int(hits["rank"].max() or 0) + 1, job.corpus.dim)]
    bounds = [*np.searchsorted(query_rows, firsts).tolist(), len(query_rows)]
    with_sim, pairs = [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        chunk = hits.slice(start, stop - start)
        part, near = candidate_similarity(chunk, positives.filter(pl.col("query_row").is_in(chunk["query_row"])),
                                          open_vectors(job.corpus))
        with_sim.append(part)
        pairs.append(near)
    return pl.concat(with_sim), pl.concat(pairs)


def _short(hits: pl.DataFrame, positives: pl.DataFrame, positive_scores: pl.DataFrame, near: pl.DataFrame,
           config: BuildConfig, range_max: int) -> list[int]:
    """Query rows whose window holds fewer than num_negatives candidates (decided before rescoring and the hub
    cap, which need the model and all partitions)."""
    candidates = mine_options(hits, positives, positive_scores, near, config.model_copy(update={"rescore": None}),
                              range_max, defer_sampling=True)
    counts = candidates.filter(pl.col("reason").is_null()).group_by("query_row").len()
    full = set(counts.filter(pl.col("len") >= config.mine.num_negatives)["query_row"].to_list())
    return [row for row in positives["query_row"].unique().sort().to_list() if row not in full]


def _deepen(hits: pl.DataFrame, near: pl.DataFrame, positives: pl.DataFrame, positive_scores: pl.DataFrame,
            queries: np.ndarray, rows: np.ndarray, job: SearchJob, config: BuildConfig,
            excluded: np.ndarray | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Search queries left short of negatives deeper, doubling the depth up to the job's bound, until they fill."""
    short = _short(hits, positives, positive_scores, near, config, job.range_max)
    for depth in depth_levels(job.depth, job.bound)[1:]:
        if not short:
            break
        subset = np.array(short, dtype=np.int64)
        deeper = _search(subset, queries[np.searchsorted(rows, subset)], job, depth, excluded)
        deeper, deeper_near = _similarity(deeper, positives.filter(pl.col("query_row").is_in(short)), job)
        deeper = _lexical(job, deeper)[0]
        keep = ~pl.col("query_row").is_in(short)
        hits = pl.concat([hits.filter(keep), deeper]).sort("query_row", "rank")
        near = pl.concat([near.filter(keep), deeper_near]).sort("query_row", "doc_row")
        short = _short(hits, positives, positive_scores, near, config, job.range_max)
    return hits, near


def rescored(hits: pl.DataFrame, positive_scores: pl.DataFrame, texts: Texts,
             config: BuildConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Add the rescorer's score of every candidate and positive (`rescore` columns)."""
    spec = rescorer_spec(config.rescore, config.runtime.device)
    scores = rescore_pairs(pl.concat([hits.select("query_row", "doc_row"),
                                      positive_scores.select("query_row", "doc_row")]),
                           spec, texts.query_files, texts.corpus_files)
    return tuple(table.join(scores, on=["query_row", "doc_row"], how="left", maintain_order="left")
                 for table in (hits, positive_scores))


def search_and_mine(partition: Partition, job: SearchJob, config: BuildConfig) -> MinedPartition:
    """Search, deepen, rescore and mine one partition of queries; write its candidates and their reasons."""
    queries = np.ascontiguousarray(open_vectors(job.queries)[partition.first:partition.stop], dtype=np.float32)
    positives = _rows(job.texts.positives, partition)
    excluded = (pl.read_parquet(job.excluded_docs)["dropped_row"].to_numpy() if job.excluded_docs else None)
    progress = TaskProgress(job.progress_dir, f"partition-{partition.number:05d}",
                            len(queries) * job.corpus.rows)
    rows = np.arange(partition.first, partition.stop)
    hits, near, positive_scores = searched(rows, queries, positives, job, excluded, progress)
    if job.bound:
        hits, near = _deepen(hits, near, positives, positive_scores, queries, rows, job, config, excluded)
    if config.rescore.model:
        hits, positive_scores = rescored(hits, positive_scores, job.texts, config)
    out = Path(job.out_dir) / f"partition-{partition.number:05d}"
    files = write_candidates(out, hits, positive_scores, near)
    return mine_partition(partition, files, job.texts, config, job.range_max,
                          depth_levels(job.depth, job.bound), job.searchable, str(out))


def write_candidates(out: Path, hits: pl.DataFrame, positive_scores: pl.DataFrame, near: pl.DataFrame) -> CandidateFiles:
    """Write searched candidates (hits, positive scores, near-duplicate pairs) into the folder `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = CandidateFiles(hits=str(out / "hits.parquet"), positive_scores=str(out / "positive-scores.parquet"),
                           near_pairs=str(out / "near-pairs.parquet"))
    hits.write_parquet(files.hits)
    positive_scores.write_parquet(files.positive_scores)
    near.write_parquet(files.near_pairs)
    return files


def mine_partition(partition: Partition, files: CandidateFiles, texts: Texts, config: BuildConfig, range_max: int,
                   levels: list[int], searchable: int, out_dir: str) -> MinedPartition:
    """Mine a partition's candidates, each query to the first of the adaptive-depth `levels` that fills it; with a
    hub cap, sampling waits for the pass over all partitions."""
    hits = _rows(files.hits, partition).filter(pl.col("rank") < levels[-1]).sort("query_row", "rank")
    candidates, deepened = mine_adaptively(
        hits, _rows(texts.positives, partition), _rows(files.positive_scores, partition),
        _rows(files.near_pairs, partition), config, range_max, levels, searchable,
        defer_sampling=config.mine.max_uses_per_negative is not None)
    path = Path(out_dir) / f"mined-{partition.number:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    candidates.write_parquet(path)
    return MinedPartition(partition=partition, candidates=files, mined=str(path), deepened=deepened)
