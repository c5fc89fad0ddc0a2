"""The embedding stage's work: plan a run against the store, embed what the store lacks, copy what it has.

`plan_embedding` learns in one join with each store's key index which of the run's texts are stored, sorts the
missing ones by length across the whole run (least padding; sentence-transformers sorts by characters too) and cuts
them into a few tasks of about equal work (characters, up to what the model reads: SciFact's texts cut by characters
alone gave tasks of 208k to 431k tokens), and the stored ones, ordered by part, into a few copy tasks. The plan
holds keys and lengths, not texts: each task reads its own texts (a plan holding a million texts took 3.3 GB). Each task
fills its rows of the run's vector matrices (one .npy per kind, a row per text row, created by the flow): rows are
disjoint, so tasks write them in place, and a task run again writes the same rows.

With the workdir on an object store (tasks/storage/mirror.py) each worker writes its own copy of a file, so rows
written in place would overwrite each other's: the embedding tasks there only store their vectors (`fill` off), and
one task then copies the whole run from the store into the matrices (`fill_matrices`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from negforge.schemas.config import RuntimeConfig
from negforge.schemas.stages import Texts
from negforge.tasks.embedding.model import EncoderSpec, dimension, encode, max_tokens
from negforge.tasks.embedding.store import DamagedPart, EmbeddingStore, part_rows
from negforge.tasks.runtime.progress import TaskProgress
from negforge.tasks.runtime.sizing import ranges, task_count, weighted_ranges

KINDS = ("query", "corpus")
MATRIX_NAMES = {"query": "queries.npy", "corpus": "corpus.npy"}
CHARS_PER_TOKEN = 4  # English WordPiece/BPE text averages 4-4.5 characters a token
TODO_ROW_GROUP = 4096  # rows per row group of the texts to embed: a task's slice reads little beyond its rows


@dataclass(frozen=True)
class EmbedPlan:
    """What the embedding tasks do: paths and row ranges, read by each task.

    `todo` (the texts to embed, longest first) has fingerprint, text_hash, query_row, corpus_row, length;
    `stored` (the texts in the store, by part) has fingerprint, text_hash, query_row, corpus_row, part, part_row.
    A row of either is one text under one fingerprint; query_row / corpus_row are its rows in the matrices (null:
    not a text of that kind).
    """

    dim: int
    texts: Texts
    rows: dict[str, int]
    matrices: dict[str, str]
    todo: str
    embed_ranges: tuple[tuple[int, int], ...]
    stored: str
    copy_ranges: tuple[tuple[int, int], ...]
    damaged: tuple[str, ...]
    fill: bool = True  # the tasks write their rows into the matrices (off: they only store vectors)


@dataclass(frozen=True)
class Filled:
    """What one task did: texts it embedded, vectors it copied from the store, damaged parts it set aside."""

    embedded: int
    copied: int
    damaged: tuple[str, ...]


def _wanted(texts: Texts, specs: dict[str, EncoderSpec]) -> pl.DataFrame:
    """One row per (fingerprint, text hash) of the run, with its query row and document row (null: not one)."""
    files = {"query": texts.query_files, "corpus": texts.corpus_files}
    kinds = [pl.scan_parquet(list(files[kind])).select(pl.lit(specs[kind].fingerprint, pl.Categorical)
                                                       .alias("fingerprint"), "text_hash",
                                                       pl.col("row").alias(f"{kind}_row")) for kind in KINDS]
    return kinds[0].join(kinds[1], on=["fingerprint", "text_hash"], how="full", coalesce=True).collect()


def _texts(files: tuple[str, ...], row: str, rows: pl.Series, column: str) -> pl.LazyFrame:
    """`column` ("text" or "length", in characters) of `rows` of the text files."""
    return (pl.scan_parquet(list(files)).filter(pl.col("row").is_in(rows.implode()))
            .select(pl.col("row").alias(row), column))


def _with_texts(keys: pl.DataFrame, texts: Texts, column: str = "text") -> pl.DataFrame:
    """`keys` with `column` of each key's text (a text that is a query and a document: the document's)."""
    corpus = _texts(texts.corpus_files, "corpus_row", keys["corpus_row"].drop_nulls(), column)
    query = _texts(texts.query_files, "query_row", keys["query_row"].drop_nulls(), column)
    return (keys.lazy().join(corpus, on="corpus_row", how="left", maintain_order="left")
            .join(query, on="query_row", how="left", suffix="_query", maintain_order="left")
            .with_columns(pl.coalesce(column, f"{column}_query")).drop(f"{column}_query")
            .collect(engine="streaming"))


def plan_embedding(texts: Texts, specs: dict[str, EncoderSpec], store_root: str, out_dir: str, workers: int,
                   runtime: RuntimeConfig, fill: bool = True) -> EmbedPlan:
    """Look the run's texts up in the store once and cut the work into a few tasks per worker.

    Args:
        specs: the encoder of each kind ("query", "corpus"); kinds that share a fingerprint share their texts.
        workers: the cluster's workers (tasks follow them, see tasks/runtime/sizing.py).
        fill: whether the tasks write the matrices' rows (see the module's docstring).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = _wanted(texts, specs)
    looked, damaged = [], []
    for (fingerprint,), keys in wanted.partition_by("fingerprint", as_dict=True).items():
        found, bad = EmbeddingStore(store_root, str(fingerprint)).lookup(keys)
        looked.append(found)
        damaged += bad
    everything = pl.concat(looked)
    missing = everything.filter(pl.col("part").is_null()).drop("part", "part_row")
    todo = (_with_texts(missing, texts, "length").sort(["length", "fingerprint", "text_hash"],
                                                       descending=[True, False, False])
            if missing.height else missing.with_columns(length=pl.lit(0, pl.UInt32)))
    stored = everything.filter(pl.col("part").is_not_null()).sort("fingerprint", "part", "part_row")
    todo.write_parquet(out / "todo.parquet", row_group_size=TODO_ROW_GROUP)
    stored.write_parquet(out / "stored.parquet")

    by_fingerprint = {spec.fingerprint: spec for spec in specs.values()}
    dim = next((d for fp in stored["fingerprint"].unique().to_list()
                if (d := EmbeddingStore(store_root, fp).dim())), None)
    dim = dim or dimension(next(iter(by_fingerprint.values())))
    lengths = todo["length"].to_numpy()
    text_bytes = float(lengths.mean()) if len(lengths) else 0.0
    tokens = {max_tokens(spec) for spec in specs.values()}
    work = np.minimum(lengths, CHARS_PER_TOKEN * min(tokens)) if None not in tokens else lengths
    embed_tasks = task_count(todo.height, text_bytes + 4 * dim, workers, runtime)
    copy_tasks = min(task_count(stored.height, 4 * dim, workers, runtime), stored["part"].n_unique())
    matrices = out.parent / "vectors"
    matrices.mkdir(parents=True, exist_ok=True)
    return EmbedPlan(
        dim=dim, texts=texts, rows={kind: wanted[f"{kind}_row"].count() for kind in KINDS},
        matrices={kind: str(matrices / MATRIX_NAMES[kind]) for kind in KINDS},
        todo=str(out / "todo.parquet"), embed_ranges=tuple(weighted_ranges(work + 1, embed_tasks)),
        stored=str(out / "stored.parquet"), copy_ranges=tuple(ranges(stored.height, copy_tasks)),
        damaged=tuple(sorted(set(damaged))), fill=fill)


def create_matrices(plan: EmbedPlan) -> None:
    """The run's vector matrices, zero-filled (sparse) .npy files that the tasks fill and search memory-maps."""
    for kind, path in plan.matrices.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # a worker that did not plan has no folder yet
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(plan.rows[kind], plan.dim)).flush()


def _write_rows(plan: EmbedPlan, keys: pl.DataFrame, vectors: np.ndarray) -> None:
    """Put each key's vector into its row of each kind's matrix (keys: query_row, corpus_row)."""
    for kind, path in plan.matrices.items():
        rows = keys[f"{kind}_row"]
        has = rows.is_not_null().to_numpy()
        if has.any():
            matrix = np.load(path, mmap_mode="r+")
            matrix[rows.drop_nulls().to_numpy()] = vectors if has.all() else vectors[has]
            matrix.flush()


def _embed_and_store(plan: EmbedPlan, store: EmbeddingStore, spec: EncoderSpec, keys: pl.DataFrame,
                     progress: TaskProgress) -> list[str]:
    """Embed `keys` (with their texts) a part at a time: store each part, fill its rows. A part that an earlier
    try of the same task wrote is read back instead; returns the damaged parts met."""
    damaged = []
    for chunk in keys.iter_slices(part_rows(plan.dim)):
        vectors, written = None, store.written(chunk["text_hash"])
        if written:
            try:
                vectors = store.read(written)[1]
                progress.advance(chunk.height)
            except DamagedPart as error:
                damaged.append(error.part)
            except FileNotFoundError:
                pass  # merged by another run's compaction since: embed it again
        if vectors is None:
            vectors = encode(spec, chunk["text"].to_list(), progress.advance)  # a whole part per call
            store.put(chunk["text_hash"], vectors)
        if plan.fill:
            _write_rows(plan, chunk, vectors)
    return damaged


def _specs(specs: dict[str, EncoderSpec]) -> dict[str, EncoderSpec]:
    return {spec.fingerprint: spec for spec in specs.values()}


def embed_texts(plan: EmbedPlan, task: int, specs: dict[str, EncoderSpec], store_root: str,
                progress_dir: str) -> Filled:
    """Embed task `task`'s slice of the plan's texts, storing them and filling their matrix rows."""
    start, stop = plan.embed_ranges[task]
    todo = _with_texts(pl.scan_parquet(plan.todo).slice(start, stop - start).collect(), plan.texts)
    progress = TaskProgress(progress_dir, f"embed-{task}", todo.height)
    damaged = []
    for (fingerprint,), keys in todo.partition_by("fingerprint", as_dict=True, maintain_order=True).items():
        damaged += _embed_and_store(plan, EmbeddingStore(store_root, fingerprint), _specs(specs)[fingerprint], keys,
                                    progress)
    return Filled(embedded=todo.height, copied=0, damaged=tuple(damaged))


def _copy(plan: EmbedPlan, store: EmbeddingStore, keys: pl.DataFrame,
          progress: TaskProgress) -> tuple[pl.DataFrame, list[str]]:
    """Copy each key's vector from its part (each part read once) into the matrices.

    Returns:
        The keys not copied (their part is gone, damaged, or does not hold them where the index said), and the
        damaged parts.
    """
    left, damaged = [keys.clear()], []
    for (part,), group in keys.partition_by("part", as_dict=True, maintain_order=True).items():
        try:
            hashes, vectors = store.read(str(part))
        except FileNotFoundError:
            left.append(group)
            continue
        except DamagedPart as error:
            left.append(group)
            damaged.append(error.part)
            continue
        rows = group["part_row"].to_numpy().astype(np.int64)
        inside = rows < len(hashes)
        same = inside & (hashes.gather(np.where(inside, rows, 0)) == group["text_hash"]).to_numpy()
        whole = same.all() and np.array_equal(rows, np.arange(len(vectors)))  # the whole part, in order: no copy
        _write_rows(plan, group.filter(same), vectors if whole else vectors[rows[same]])
        left.append(group.filter(~same))
        progress.advance(int(same.sum()))
    return pl.concat(left), damaged


def copy_stored(plan: EmbedPlan, task: int, specs: dict[str, EncoderSpec], store_root: str,
                progress_dir: str) -> Filled:
    """Copy task `task`'s slice of the stored vectors into the matrices.

    Keys whose part was compacted away since the plan are looked up again; keys whose part is damaged are embedded
    again (and stored), counted as embedded.
    """
    start, stop = plan.copy_ranges[task]
    stored = pl.scan_parquet(plan.stored).slice(start, stop - start).collect()
    progress = TaskProgress(progress_dir, f"copy-{task}", stored.height)
    embedded, damaged = 0, []
    for (fingerprint,), keys in stored.partition_by("fingerprint", as_dict=True, maintain_order=True).items():
        store = EmbeddingStore(store_root, fingerprint)
        left, bad = _copy(plan, store, keys, progress)
        if left.height:
            again, worse = store.lookup(left.drop("part", "part_row"))
            lost, worst = _copy(plan, store, again.filter(pl.col("part").is_not_null()), progress)
            lost = pl.concat([lost, again.filter(pl.col("part").is_null())]).drop("part", "part_row")
            bad += [*worse, *worst]
            if lost.height:
                bad += _embed_and_store(plan, store, _specs(specs)[fingerprint], _with_texts(lost, plan.texts), progress)
            embedded += lost.height
        damaged += bad
    return Filled(embedded=embedded, copied=stored.height - embedded, damaged=tuple(sorted(set(damaged))))


def fill_matrices(plan: EmbedPlan, specs: dict[str, EncoderSpec], store_root: str, progress_dir: str) -> Filled:
    """Create the run's matrices and copy every vector of `plan` (all of them stored) into them, in one task."""
    create_matrices(plan)
    filled = [copy_stored(plan, task, specs, store_root, progress_dir) for task in range(len(plan.copy_ranges))]
    return Filled(embedded=sum(f.embedded for f in filled), copied=sum(f.copied for f in filled),
                  damaged=tuple(sorted({part for f in filled for part in f.damaged})))
