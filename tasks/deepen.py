"""Adaptive depth: search deeper for the queries whose window left fewer than num_negatives negatives.

The reference drops such queries from n-tuple output, and strong models make them common. Here their search depth
is doubled, up to `mine.max_depth`, until they fill or the bound is reached; the other queries keep the depth the
options ask for, so their results stay those of the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Texts
from negforge.tasks.mine import mine
from negforge.tasks.search import merge_hits, search_shard
from negforge.tasks.similarity import candidate_similarity


def short_rows(search: dict[str, str], positives: pl.DataFrame, query_ids: list[str], config: BuildConfig,
               range_max: int) -> list[int]:
    """Query rows that mining leaves with fewer than num_negatives negatives."""
    candidates = mine(pl.read_parquet(search["hits"]), positives, pl.read_parquet(search["positive_scores"]),
                      query_ids, config.mine, range_max, pl.read_parquet(search["near_pairs"]), config.dedup.eps)
    kept = candidates.filter(pl.col("reason").is_null()).group_by("query_row").len()
    full = set(kept.filter(pl.col("len") >= config.mine.num_negatives)["query_row"].to_list())
    return [row for row in positives["query_row"].unique().sort().to_list() if row not in full]


def _search_subset(rows: list[int], texts: Texts, vectors: dict[str, list[str]], config: BuildConfig,
                   depth: int, out: Path, excluded_docs: str | None) -> dict[str, str]:
    """Search only `rows` to `depth` over every corpus shard; the results keep the global query rows."""
    out.mkdir(parents=True, exist_ok=True)
    queries = np.concatenate([np.load(p, mmap_mode="r") for p in vectors["query"]])
    np.save(out / "queries.npy", np.ascontiguousarray(queries[rows]))
    local = pl.DataFrame({"query_row": rows, "local": range(len(rows))},
                         schema={"query_row": pl.UInt32, "local": pl.UInt32})
    positives = pl.read_parquet(texts.positives).join(local, on="query_row")
    positives.with_columns(pl.col("local").alias("query_row")).drop("local").write_parquet(out / "positives.parquet")
    parts = [search_shard(path, i * config.runtime.shard_size, [str(out / "queries.npy")],
                          str(out / "positives.parquet"), depth, config.search.query_batch_size, str(out),
                          excluded_docs)
             for i, path in enumerate(vectors["corpus"])]
    merged = merge_hits([p["hits"] for p in parts], [p["positive_scores"] for p in parts], depth, str(out))
    back = local.rename({"query_row": "global", "local": "query_row"})
    for key in ("hits", "positive_scores"):
        table = pl.read_parquet(merged[key]).join(back, on="query_row")
        table.with_columns(pl.col("global").alias("query_row")).drop("global").write_parquet(merged[key])
    return merged | candidate_similarity(merged["hits"], texts.positives, vectors["corpus"],
                                         config.runtime.shard_size, str(out))


def deepen(search: dict[str, str], texts: Texts, vectors: dict[str, list[str]], config: BuildConfig,
           depth: int, range_max: int, out_dir: str, excluded_docs: str | None = None,
           ) -> tuple[dict[str, str], dict[str, Any]]:
    """Search short queries deeper until they fill or reach mine.max_depth; returns the combined results."""
    positives = pl.read_parquet(texts.positives)
    query_ids = pl.read_parquet(texts.query_files, columns=["id"])["id"].to_list()
    short = short_rows(search, positives, query_ids, config, range_max)
    report = {"queries_short": len(short), "queries_deepened": 0, "still_short": len(short), "depth": depth}
    out = Path(out_dir)
    while short and depth < config.mine.max_depth:
        depth = min(config.mine.max_depth, depth * 2)
        deeper = _search_subset(short, texts, vectors, config, depth, out / f"depth-{depth}", excluded_docs)
        combined = {}
        for key in ("hits", "near_pairs"):
            table = pl.concat([pl.read_parquet(search[key]).filter(~pl.col("query_row").is_in(short)),
                               pl.read_parquet(deeper[key])], how="diagonal_relaxed")
            table = table.sort(["query_row", "rank"] if key == "hits" else ["query_row", "doc_row"])
            combined[key] = str(out / f"{key}-{depth}.parquet")
            table.write_parquet(combined[key])
        search = search | combined
        report["queries_deepened"] = report["queries_short"]
        short = short_rows(search, positives, query_ids, config, range_max)
        report.update(still_short=len(short), depth=depth)
    return search, report
