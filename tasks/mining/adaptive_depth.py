"""Adaptive depth, the mining side: each query is mined to the shallowest searched depth that gives it its negatives.

A build searches a query left short of negatives deeper, doubling the depth up to `mine.max_depth`
(`BuildConfig.depth_bound`), so its hits end where it filled. Re-mining and the calibration hold hits that may go
deeper (or not deep enough) than the options at hand need: mining each query at the same doubling levels and
stopping at the first that fills it gives what a build with those options would give, and counts the queries a build
would have searched deeper than the stored hits go (`needs_deeper`).
"""

from __future__ import annotations

import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Deepened
from negforge.tasks.mining.rules import mine


def depth_levels(depth: int, bound: int | None) -> list[int]:
    """The depths adaptive depth searches: the search depth, doubled until the bound (None: the depth alone)."""
    levels = [depth]
    while bound is not None and levels[-1] < bound:
        levels.append(min(bound, levels[-1] * 2))
    return levels


def mine_options(hits: pl.DataFrame, positives: pl.DataFrame, positive_scores: pl.DataFrame,
                 near_pairs: pl.DataFrame | None, config: BuildConfig, range_max: int,
                 defer_sampling: bool = False) -> pl.DataFrame:
    """`mine` with every rule of a build config (margins, near-duplicates, rescorer, lexical)."""
    return mine(hits, positives, positive_scores, config.mine, range_max, near_pairs, config.dedup.eps,
                config.rescore, defer_sampling, config.lexical)


def _within(table: pl.DataFrame | None, rows: list[int]) -> pl.DataFrame | None:
    return None if table is None else table.filter(pl.col("query_row").is_in(rows))


def mine_adaptively(hits: pl.DataFrame, positives: pl.DataFrame, positive_scores: pl.DataFrame,
                    near_pairs: pl.DataFrame | None, config: BuildConfig, range_max: int, levels: list[int],
                    searchable: int, defer_sampling: bool = False) -> tuple[pl.DataFrame, Deepened]:
    """Every candidate with its reason, each query mined to the first of `levels` at which its window holds
    num_negatives candidates (or to all its hits), and the adaptive-depth report.

    Args:
        hits: ranked hits (a `rank` column) of the queries, to whatever depth each was searched.
        searchable: how many documents a search can return (the corpus less dropped near-duplicates).
    """
    extent = dict(hits.group_by("query_row").len().iter_rows())
    pending = positives["query_row"].unique().sort().to_list()
    done, still_short = [], []
    report = Deepened(depth=levels[0])
    for number, level in enumerate(levels):
        mined = mine_options(hits.filter(pl.col("query_row").is_in(pending) & (pl.col("rank") < level)),
                             _within(positives, pending), _within(positive_scores, pending),
                             _within(near_pairs, pending), config, range_max, defer_sampling)
        counts = dict(mined.filter(pl.col("reason").is_null()).group_by("query_row").len().iter_rows())
        short = [row for row in pending if counts.get(row, 0) < config.mine.num_negatives]
        deeper = [row for row in short if extent.get(row, 0) > level] if number + 1 < len(levels) else []
        done.append(mined.filter(~pl.col("query_row").is_in(deeper)))
        still_short = [row for row in still_short if row not in pending] + [r for r in short if r not in deeper]
        if number == 0:
            report = Deepened(queries_short=len(short), depth=level)
        elif len(deeper) < len(pending):
            report = Deepened(queries_short=report.queries_short,
                              queries_deepened=report.queries_deepened + len(pending) - len(deeper), depth=level)
        pending = deeper
        if not pending:
            break
    reach = min(levels[-1], searchable)
    return pl.concat(done).sort("query_row", "rank"), Deepened(
        queries_short=report.queries_short, queries_deepened=report.queries_deepened, still_short=len(still_short),
        depth=report.depth, needs_deeper=sum(1 for row in still_short if extent.get(row, 0) < reach))
