"""Mine: decide, for every retrieved candidate, whether it becomes a negative, and if not, why.

Steps and meanings follow sentence-transformers' `mine_hard_negatives` (DESIGN.md section 3): remove positives (by id
and by text), then absolute margin, relative margin, max_score, min_score (margins anchor on the query's lowest
positive score), keep the best `range_max` survivors, skip the first `range_min`, sample `num_negatives`. The reason a
candidate carries is the first step that removed it. Arithmetic is float32, as in the reference. A second model
(`rescorer_relevant`) and BM25 (`lexical_relevant`) come after the margins and bounds. A candidate ranked at or above
the lowest positive by every signal that is on is a suspected positive, listed, or with `mine.promote_suspected`
promoted to a positive: at most `mine.max_promoted_per_positive` per known positive of its query, the best-ranked.
The rest are dropped (`suspected_not_promoted`), not mined: a user who promotes suspected positives holds them to be
relevant, so a negative made of one would teach the model the opposite.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from negforge.schemas.config import LexicalConfig, MineConfig, RescoreConfig
from negforge.schemas.tables import CANDIDATES, frame

REASONS = ("positive_id", "positive_text", "promoted_positive", "suspected_not_promoted", "too_similar_to_positive",
           "near_duplicate_of_positive", "too_central_to_topic", "absolute_margin", "relative_margin", "max_score",
           "min_score", "rescorer_relevant", "lexical_relevant", "rank_window", "near_duplicate_negative", "over_used",
           "not_sampled")
_CODE = {name: code for code, name in enumerate(REASONS, start=1)}


def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """The random stream of one query: depends on (seed, query id) only, never on order or sharding."""
    key = int.from_bytes(hashlib.blake2b(query_id.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, key])


def _mark(reason: np.ndarray, mask: np.ndarray, name: str) -> None:
    reason[mask & (reason == 0)] = _CODE[name]


def _found(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `keys`, its position in `sorted_keys` (unique, sorted; clipped when absent) and whether it is there.
    numpy, not a polars join: mining runs once per depth level and per calibration setting, on small tables."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return at, sorted_keys[at] == keys


def _pair_keys(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    return (np.asarray(q, dtype=np.uint64) << np.uint64(32)) | np.asarray(d, dtype=np.uint64)


def _positive_flags(q: np.ndarray, d: np.ndarray, positives: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Whether each candidate is a positive of its query by id, or only by text (a duplicate document)."""
    pairs, where = np.unique(_pair_keys(positives["query_row"].to_numpy(), positives["doc_row"].to_numpy()),
                             return_inverse=True)
    canonical = np.zeros(len(pairs), dtype=bool)
    np.logical_or.at(canonical, where, positives["canonical"].to_numpy())
    at, found = _found(pairs, _pair_keys(q, d))
    by_id = np.zeros(len(found), dtype=bool)
    by_id[found] = canonical[at[found]]
    return by_id, found & ~by_id


def _position_among(q: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For rows where `mask` holds, their 0-based position among such rows of the same query (rows sorted by q)."""
    running = np.cumsum(mask)
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    before = np.r_[0, running][starts]
    return running - np.repeat(before, np.diff(np.r_[starts, len(q)])) - 1


def mine(hits: pl.DataFrame, positives: pl.DataFrame, positive_scores: pl.DataFrame, cfg: MineConfig,
         range_max: int, near_pairs: pl.DataFrame | None = None, eps: float | None = None,
         rescore: RescoreConfig | None = None, defer_sampling: bool = False,
         lexical: LexicalConfig | None = None) -> pl.DataFrame:
    """Every candidate of some queries with its reason (null: kept as a negative).

    Each query is decided from its own candidates and positives, so any set of whole queries (a partition) can be
    mined alone, except for the hub cap: with `defer_sampling`, the window's candidates are left undecided (reason
    null) for `sample_window`, which then runs over all partitions in query order.

    Args:
        hits: merged search hits (query_row, doc_row, score, rank, and, when computed, pos_sim: the highest cosine
            to a positive of the query, and topic_centrality: how central to the query's topic), sorted by query_row
            then rank.
        positives: the positives table of ingest (at least the rows of the hits' queries).
        positive_scores: (query_row, doc_row, score) of the positives.
        cfg: the mining options.
        range_max: the window size, derived when cfg.range_max is unset.
        near_pairs: near-duplicate candidate pairs per query (tasks/mining/similarity.py), for the in-row dedup.
        eps: near-duplicates have cosine >= 1 - eps (None: no near-duplicate rules).
        rescore: the rescorer's rule, applied when the hits and positive scores carry a `rescore` column.
        lexical: the BM25 rules, applied when the hits and positive scores carry a `bm25` column.
    """
    q = hits["query_row"].to_numpy()
    d = hits["doc_row"].to_numpy()
    s = hits["score"].to_numpy().astype(np.float32)
    reason = np.zeros(len(q), dtype=np.int8)
    if not cfg.include_positives:
        by_id, by_text = _positive_flags(q, d, positives)
        _mark(reason, by_id, "positive_id")
        _mark(reason, by_text, "positive_text")
    s_p = _lowest_positive(q, positive_scores, "score")
    rescored = rescore is not None and rescore.model is not None and "rescore" in hits.columns
    lexical_on = lexical is not None and lexical.rules_on() and "bm25" in hits.columns
    suspected = _suspected(hits, s, s_p, positive_scores, rescored, lexical_on) & (reason == 0)
    if cfg.promote_suspected:
        _mark(reason, suspected & (_position_among(q, suspected) < _promotion_bound(hits, positives, cfg)),
              "promoted_positive")
        _mark(reason, suspected, "suspected_not_promoted")
    if "pos_sim" in hits.columns:
        pos_sim = hits["pos_sim"].to_numpy()
        if cfg.max_positive_similarity is not None:
            _mark(reason, pos_sim >= np.float32(cfg.max_positive_similarity), "too_similar_to_positive")
        if eps is not None and not cfg.include_positives:
            _mark(reason, pos_sim >= np.float32(1 - eps), "near_duplicate_of_positive")
    if cfg.max_topic_centrality is not None:
        if "topic_centrality" not in hits.columns:
            raise ValueError("mine.max_topic_centrality is set but the candidates have no topic centralities")
        central = hits["topic_centrality"].to_numpy() >= np.float32(cfg.max_topic_centrality)
        _mark(reason, central, "too_central_to_topic")

    for name, broken in cfg.score_filters(s, s_p).items():
        _mark(reason, broken, name)
    if rescored:
        bound = np.float32(rescore.bound(_lowest_positive(q, positive_scores, "rescore")))
        _mark(reason, hits["rescore"].to_numpy().astype(np.float32) > bound, "rescorer_relevant")
    if lexical_on:
        _mark(reason, _lexically_relevant(hits, positive_scores, lexical), "lexical_relevant")

    survivor = reason == 0
    position = _position_among(q, survivor)
    window = survivor & (position >= cfg.range_min) & (position < range_max)
    _mark(reason, survivor & ~window, "rank_window")
    if near_pairs is not None and eps is not None:
        _drop_near_duplicates(reason, q, d, window, near_pairs.filter(pl.col("cosine") >= 1 - eps))
        window &= reason == 0
    if defer_sampling:
        pass
    elif cfg.sampling_strategy == "top" and cfg.max_uses_per_negative is None:
        _mark(reason, window & (_position_among(q, window) >= cfg.num_negatives), "not_sampled")
    else:
        _sample(reason, q, d, s, s_p, window, _query_ids(positives), cfg, {})

    return frame(CANDIDATES, {"query_row": q, "doc_row": d, "score": s, "rank": hits["rank"], "reason": _names(reason),
                              "rescore": hits["rescore"] if rescored else [None] * len(q),
                              "bm25": hits["bm25"] if "bm25" in hits.columns else [None] * len(q),
                              "suspected": suspected})


def _promotion_bound(hits: pl.DataFrame, positives: pl.DataFrame, cfg: MineConfig) -> np.ndarray:
    """For each candidate, how many suspected positives its query may promote: `max_promoted_per_positive` per known
    positive (distinct positive ids), so that a query with one label does not gain hundreds (505 in the demo)."""
    if cfg.max_promoted_per_positive is None:
        return np.full(hits.height, np.iinfo(np.int64).max)
    known = positives.group_by("query_row").agg(pl.col("positive_id").n_unique().alias("known"))
    per_candidate = hits.select("query_row").join(known, on="query_row", how="left", maintain_order="left")["known"]
    return per_candidate.fill_null(0).to_numpy().astype(np.int64) * cfg.max_promoted_per_positive


def _suspected(hits: pl.DataFrame, s: np.ndarray, s_p: np.ndarray, positive_scores: pl.DataFrame, rescored: bool,
               lexical_on: bool) -> np.ndarray:
    """Candidates ranked at or above the query's lowest positive by every signal that is on: the embedding, the
    rescorer when set, BM25 when a lexical rule is set (RLHN's relabel candidates)."""
    q = hits["query_row"].to_numpy()
    at_or_above = s >= s_p
    for column, on in (("rescore", rescored), ("bm25", lexical_on)):
        if on:
            at_or_above &= hits[column].to_numpy() >= _lowest_positive(q, positive_scores, column)
    return at_or_above


def _lexically_relevant(hits: pl.DataFrame, positive_scores: pl.DataFrame, lexical: LexicalConfig) -> np.ndarray:
    """Where a candidate breaks a lexical rule: its BM25 score above `ratio` x the query's lowest positive's, or
    (`fusion: rrf`) its reciprocal-rank fusion of dense and BM25 ranks ahead of the lowest positive's."""
    q = hits["query_row"].to_numpy()
    bm25 = hits["bm25"].to_numpy().astype(np.float32)
    broken = np.zeros(len(q), dtype=bool)
    if lexical.ratio is not None:
        broken |= bm25 > np.float32(lexical.ratio) * _lowest_positive(q, positive_scores, "bm25")
    if lexical.fusion == "rrf":
        broken |= _ahead_by_rrf(hits, positive_scores, lexical.rrf_k)
    return broken


def _ahead_by_rrf(hits: pl.DataFrame, positive_scores: pl.DataFrame, k: int) -> np.ndarray:
    """Whether each candidate's RRF score, 1/(k + dense rank) + 1/(k + BM25 rank), ranks among the query's candidates
    and positives (ties share the best rank), is above the lowest of its query's positives."""
    key = ["query_row", "doc_row"]
    columns = [*key, "score", "bm25"]
    both = pl.concat([hits.select(columns), positive_scores.select(columns)]).unique(key, keep="first")
    fused = both.with_columns(
        (1 / (k + pl.col("score").rank("min", descending=True).over("query_row"))
         + 1 / (k + pl.col("bm25").rank("min", descending=True).over("query_row"))).alias("rrf"))
    lowest = (fused.join(positive_scores.select(key), on=key, how="semi").group_by("query_row")
              .agg(pl.col("rrf").min().alias("lowest")))
    ranked = (hits.select(key).join(fused.select(*key, "rrf"), on=key, how="left", maintain_order="left")
              .join(lowest, on="query_row", how="left", maintain_order="left"))
    return (ranked["rrf"] > ranked["lowest"]).fill_null(False).to_numpy()


def _lowest_positive(q: np.ndarray, positive_scores: pl.DataFrame, column: str) -> np.ndarray:
    """For each candidate, its query's lowest positive score (`score`, or the rescorer's `rescore`); NaN if none.

    RocketQA drops a candidate the cross-encoder scores above its threshold; GISTEmbed one the guide scores above the
    query's lowest positive less the margin: both are RescoreConfig.bound of this value."""
    rows = positive_scores["query_row"].to_numpy()
    order = np.argsort(rows, kind="stable")
    rows, values = rows[order], positive_scores[column].cast(pl.Float32).to_numpy()[order]
    queries, starts = np.unique(rows, return_index=True)
    lowest = np.fmin.reduceat(values, starts) if len(values) else values  # fmin: a missing score is skipped
    at, found = _found(queries.astype(np.int64), np.asarray(q, dtype=np.int64))
    per_candidate = np.full(len(found), np.nan, dtype=np.float32)
    per_candidate[found] = lowest[at[found]]
    return per_candidate


def _query_ids(positives: pl.DataFrame) -> dict[int, str]:
    """Query row -> query id (every used query has a positive); seeds each query's random stream."""
    return dict(positives.select("query_row", "query_id").unique("query_row").iter_rows())


def _drop_near_duplicates(reason: np.ndarray, q: np.ndarray, d: np.ndarray, window: np.ndarray,
                          pairs: pl.DataFrame) -> None:
    """In each query's window, in rank order, drop a candidate that is a near-duplicate of one already kept.

    Compared to kept candidates only, never chaining pairs into groups (SemDeDup): the better-ranked one stays and
    the window's next candidate takes the place of the other.
    """
    if pairs.is_empty():
        return
    near: dict[tuple[int, int], set[int]] = {}
    for query, doc, other in pairs.select("query_row", "doc_row", "other_row").iter_rows():
        near.setdefault((query, doc), set()).add(other)
    kept: dict[int, set[int]] = {}
    for row in np.flatnonzero(window):
        query, doc = int(q[row]), int(d[row])
        if near.get((query, doc), set()) & kept.get(query, set()):
            reason[row] = _CODE["near_duplicate_negative"]
        else:
            kept.setdefault(query, set()).add(doc)


def sampling_weights(scores: np.ndarray, lowest_positive: float, cfg: MineConfig) -> np.ndarray | None:
    """Selection probabilities of a query's window candidates (None: uniform; `top` is handled by its caller).

    softmax: p ∝ exp(s / t) (CoRNStack); simans: p ∝ exp(-a (s - s_p - b)^2) (SimANS), s_p the lowest positive.
    """
    if cfg.sampling_strategy == "softmax":
        logits = scores.astype(np.float64) / cfg.softmax_temperature
    elif cfg.sampling_strategy == "simans":
        logits = -cfg.simans_a * (scores.astype(np.float64) - lowest_positive - cfg.simans_b) ** 2
    else:
        return None
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def sample_window(candidates: pl.DataFrame, positives: pl.DataFrame, positive_scores: pl.DataFrame,
                  cfg: MineConfig, uses: dict[int, int]) -> pl.DataFrame:
    """The sampling step for candidates mined with `defer_sampling` (their undecided rows are the window).

    Called on each partition in query order with the same `uses`, it gives the hub cap its global meaning.
    """
    q = candidates["query_row"].to_numpy()
    d, s = candidates["doc_row"].to_numpy(), candidates["score"].to_numpy()
    reason = np.array([0 if r is None else _CODE[r] for r in candidates["reason"].to_list()], dtype=np.int8)
    _sample(reason, q, d, s, _lowest_positive(q, positive_scores, "score"), reason == 0, _query_ids(positives), cfg,
            uses)
    return candidates.with_columns(pl.Series("reason", _names(reason), dtype=pl.String))


def _names(reason: np.ndarray) -> list[str | None]:
    return np.array([None, *REASONS], dtype=object)[reason].tolist()


def _sample(reason: np.ndarray, q: np.ndarray, d: np.ndarray, s: np.ndarray, s_p: np.ndarray, window: np.ndarray,
            query_ids: dict[int, str], cfg: MineConfig, uses: dict[int, int]) -> None:
    """Choose num_negatives window rows per query, without replacement, from the query's own random stream.

    Queries are taken in row order (the order their first positive appeared): with `max_uses_per_negative`, a
    document already used that often by earlier queries (`uses`, updated here) is `over_used` and the query chooses
    among the others.
    """
    rows = np.flatnonzero(window)
    if not len(rows):
        return
    cap = cfg.max_uses_per_negative
    bounds = np.flatnonzero(np.r_[True, q[rows][1:] != q[rows][:-1], True])
    for start, stop in zip(bounds[:-1], bounds[1:]):
        group = rows[start:stop]
        if cap is not None:
            over = np.array([uses.get(int(doc), 0) >= cap for doc in d[group]], dtype=bool)
            reason[group[over]] = _CODE["over_used"]
            group = group[~over]
        if cfg.sampling_strategy == "top" or len(group) <= cfg.num_negatives:
            chosen = np.arange(min(len(group), cfg.num_negatives))
        else:
            rng = query_rng(cfg.seed, query_ids[int(q[group[0]])])
            chosen = rng.choice(len(group), cfg.num_negatives, replace=False,
                                p=sampling_weights(s[group], float(s_p[group[0]]), cfg))
        dropped = np.ones(len(group), dtype=bool)
        dropped[chosen] = False
        reason[group[dropped]] = _CODE["not_sampled"]
        for doc in d[group[~dropped]]:
            uses[int(doc)] = uses.get(int(doc), 0) + 1


def reason_counts(candidates: pl.DataFrame) -> dict[str, int]:
    """Candidates per reason code, `kept` for the negatives."""
    counts = candidates.group_by("reason").len().sort("reason", nulls_last=True)
    return {(r or "kept"): int(n) for r, n in counts.iter_rows()}


def reasons_per_query(candidates: pl.DataFrame, queries: int) -> dict[str, dict[str, float | int]]:
    """For each reason: how many queries it touched, and its mean and largest count per query."""
    per_query = candidates.with_columns(pl.col("reason").fill_null("kept")).group_by("reason", "query_row").len()
    stats = per_query.group_by("reason").agg(pl.len().alias("queries"), pl.col("len").sum().alias("total"),
                                             pl.col("len").max().alias("max")).sort("reason")
    return {r: {"queries": q, "mean": round(t / queries, 3), "max": m} for r, q, t, m in stats.iter_rows()}
