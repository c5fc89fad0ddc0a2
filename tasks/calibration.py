"""Calibration (`mine.strategy: auto`): which mining setting gives negatives that are hard and not false, measured
on the user's own data.

Among the queries with two or more positives, each of `mine.calibration_folds` seeded folds hides one positive per
query. Hiding a positive only changes which candidates count as positives, so one search with every positive known,
to the grid's largest depth, serves every fold: in a fold the hidden positive is an ordinary candidate, the query's
lowest positive score and its candidates' similarity to the positives are those of the positives it still has. Each
setting of the declared GRID is then a remine of these candidates (mined to the adaptive depth the setting would
search) and is measured against the hidden positives: the false-negative rate (kept negatives that are the hidden
positive) with a 95% bootstrap interval over queries, the coverage (queries that got all their negatives) and the
hardness (mean kept negative score over plain top-k's, in the same folds).

The choice: the lowest false-negative rate among settings with coverage >= MIN_COVERAGE and hardness >=
MIN_HARDNESS; settings tied with it win when harder (the hardest of the tied wins). Tied means the intervals overlap,
measured where it can be told: on the same queries, so the interval is that of the difference of the two rates
(a paired bootstrap over queries) and the settings tie when it holds 0. Two settings' own intervals, each as wide as
the queries are few, overlap even when one setting keeps a hidden positive on query after query and the other never
does. If no setting reaches the coverage, the highest coverage wins; if some reach it but none the hardness, the
hardest of those wins.
Fewer than MIN_QUERIES multi-positive queries: the configured (fixed) options, with a warning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Calibration, CalibrationFiles
from negforge.schemas.tables import HIDDEN, frame
from negforge.tasks.adaptive_depth import depth_levels, mine_adaptively
from negforge.tasks.audit import bootstrap_picks, bootstrap_rates, rate_with_interval
from negforge.tasks.mine import query_rng
from negforge.tasks.similarity import candidate_similarity

MIN_QUERIES = 20
MIN_COVERAGE = 0.95
MIN_HARDNESS = 0.7
BASELINE = "plain top-k"
# The fields every setting sets (section, field), at these values unless the setting names them.
CALIBRATED = {("mine", "relative_margin"): None, ("mine", "absolute_margin"): None,
              ("mine", "max_positive_similarity"): None, ("mine", "max_score"): None, ("mine", "max_depth"): "auto",
              ("lexical", "ratio"): None, ("lexical", "fusion"): None}
_REL, _ABS = ("mine", "relative_margin"), ("mine", "absolute_margin")
_SIM, _DEPTH = ("mine", "max_positive_similarity"), ("mine", "max_depth")
_RATIO, _FUSION = ("lexical", "ratio"), ("lexical", "fusion")
# The declared grid: the baseline; max_positive_similarity (a candidate's highest cosine to the query's remaining
# positives) at four bounds, alone and with each rule (the relative margins of NV-Retriever's study, BM25's two
# rules); then the old default and more combinations at 0.8 ("relative_margin 0.05, max_positive_similarity 0.8" is
# the fixed default). The bounds span 0.6-0.9 because where a model puts a query's other relevant documents differs:
# with MiniLM, 0.6 removed most of SciFact's hidden positives and kept negatives harder than any margin did (README
# "False-negative audit"); a model whose cosines run high needs 0.9.
_RULES: dict[str, dict[tuple[str, str], Any]] = {
    "": {}, "relative_margin 0.05, ": {_REL: 0.05}, "relative_margin 0.1, ": {_REL: 0.1},
    "lexical ratio 1, ": {_RATIO: 1.0}, "lexical rrf, ": {_FUSION: "rrf"}}
GRID: dict[str, dict[tuple[str, str], Any]] = {BASELINE: {_DEPTH: None}} | {
    f"{rule}max_positive_similarity {similarity}": fields | {_SIM: similarity}
    for similarity in (0.6, 0.7, 0.8, 0.9) for rule, fields in _RULES.items()} | {
    "relative_margin 0.05, max_positive_similarity 0.8, no adaptive depth (the old default)": {
        _REL: 0.05, _SIM: 0.8, _DEPTH: None},
    "relative_margin 0.02, max_positive_similarity 0.8": {_REL: 0.02, _SIM: 0.8},
    "absolute_margin 0.05, max_positive_similarity 0.8": {_ABS: 0.05, _SIM: 0.8},
    "relative_margin 0.01, lexical ratio 1, max_positive_similarity 0.8": {_REL: 0.01, _RATIO: 1.0, _SIM: 0.8},
    "relative_margin 0.02, lexical ratio 1, max_positive_similarity 0.8": {_REL: 0.02, _RATIO: 1.0, _SIM: 0.8},
    "relative_margin 0.1, lexical ratio 1, max_positive_similarity 0.8": {_REL: 0.1, _RATIO: 1.0, _SIM: 0.8},
    "relative_margin 0.02, lexical rrf, max_positive_similarity 0.8": {_REL: 0.02, _FUSION: "rrf", _SIM: 0.8},
}


class CalibrationError(ValueError):
    """Stored candidates that cannot be calibrated on."""


def setting_fields(name: str) -> dict[str, Any]:
    """A grid setting as dotted fields (`mine.relative_margin`: value), every calibrated field included."""
    return {f"{section}.{field}": value for (section, field), value in (CALIBRATED | GRID[name]).items()}


def applied(config: BuildConfig, fields: dict[str, Any]) -> BuildConfig:
    """The config with a setting's dotted fields replaced (the other options stay as configured)."""
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in fields.items():
        section, field = dotted.split(".")
        sections.setdefault(section, {})[field] = value
    return config.model_copy(update={section: getattr(config, section).model_copy(update=values)
                                     for section, values in sections.items()})


def _uses_lexical(name: str) -> bool:
    return any(section == "lexical" and value is not None for (section, _), value in GRID[name].items())


def calibration_rows(positives: pl.DataFrame) -> list[int]:
    """The query rows with two or more positive documents (distinct corpus rows)."""
    counts = positives.group_by("query_row").agg(pl.col("doc_row").n_unique().alias("n"))
    return counts.filter(pl.col("n") >= 2)["query_row"].sort().to_list()


def hidden_positives(positives: pl.DataFrame, rows: list[int], folds: int, seed: int) -> pl.DataFrame:
    """The positive each fold hides from each query (uniform among its positive documents, from a stream seeded by
    (seed, fold, query id), so folds do not depend on order or partitioning)."""
    own = (positives.filter(pl.col("query_row").is_in(rows)).group_by("query_row", maintain_order=True)
           .agg(pl.col("query_id").first(), pl.col("doc_row").unique().sort()))
    picked: dict[str, list[int]] = {"fold": [], "query_row": [], "doc_row": []}
    for query_row, query_id, docs in own.iter_rows():
        for fold in range(folds):
            picked["fold"].append(fold)
            picked["query_row"].append(query_row)
            picked["doc_row"].append(docs[int(query_rng(seed + fold, query_id).integers(len(docs)))])
    return frame(HIDDEN, picked).sort("fold", "query_row")


def fold_similarity(hits: pl.DataFrame, positives: pl.DataFrame, hidden: pl.DataFrame,
                    corpus: np.ndarray) -> pl.DataFrame:
    """Each fold's `pos_sim` of every candidate: its highest cosine to the positives the fold leaves the query."""
    parts = []
    for fold in hidden["fold"].unique().sort().to_list():
        kept = positives.join(hidden.filter(pl.col("fold") == fold), on=["query_row", "doc_row"], how="anti")
        with_sim, _ = candidate_similarity(hits.select("query_row", "doc_row"), kept, corpus, near_pairs=False)
        parts.append(with_sim.with_columns(pl.lit(fold, pl.UInt32).alias("fold")))
    return pl.concat(parts).select("fold", "query_row", "doc_row", "pos_sim")


def grid_depth(config: BuildConfig, max_positives: int, documents: int) -> int:
    """The deepest any grid setting searches: its adaptive-depth bound, or its search depth."""
    depths = []
    for name in GRID:
        setting = applied(config, setting_fields(name))
        depths.append(setting.depth_bound(max_positives, documents) or setting.window_and_depth(max_positives)[1])
    return max(depths)


def save_calibration(folder: Path, tables: dict[str, pl.DataFrame], meta: dict[str, Any]) -> CalibrationFiles:
    """Write the calibration's candidates (tasks/calibration_search.py's tables, `hits` with `pos_sim`) into
    `folder` (a version keeps them in candidates/calibration/)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (tables | {"hits": tables["hits"].drop("pos_sim")}).items():
        table.write_parquet(folder / f"{name}.parquet")
    (folder / "meta.json").write_text(json.dumps(meta, allow_nan=False))
    return CalibrationFiles(folder=str(folder), queries=tables["hidden"]["query_row"].n_unique(), **meta)


def load_calibration(folder: Path) -> CalibrationFiles | None:
    """The calibration candidates stored in `folder`, or None when there are none."""
    if not (folder / "meta.json").exists():
        return None
    meta = json.loads((folder / "meta.json").read_text())
    queries = pl.scan_parquet(folder / "hidden.parquet").select(pl.col("query_row").n_unique()).collect().item()
    return CalibrationFiles(folder=str(folder), queries=queries, **meta)


def _lexical_problem(hits: pl.DataFrame) -> str | None:
    """Why lexical settings cannot be applied to these candidates, or None when they can."""
    if "bm25" not in hits.columns:
        return "the candidates have no BM25 scores (the corpus tokenizes to nothing, or lexical scoring was off)"
    if not (hits["bm25"] > 0).any():
        return "no query shares a word with its candidates (the texts tokenize to nothing in common)"
    return None


def _measure(candidates: pl.DataFrame, hidden: pl.DataFrame, queries: list[int], num_negatives: int) -> pl.DataFrame:
    """Per query of one fold: kept negatives, how many are the hidden positive, their score sum, full or not."""
    kept = candidates.filter(pl.col("reason").is_null()).join(
        hidden.select("query_row", pl.col("doc_row").alias("hidden")), on="query_row", how="left")
    per_query = kept.group_by("query_row").agg(pl.len().alias("total"),
                                               (pl.col("doc_row") == pl.col("hidden")).sum().alias("relevant"),
                                               pl.col("score").cast(pl.Float64).sum().alias("score_sum"))
    every = pl.DataFrame({"query_row": queries}, schema={"query_row": pl.UInt32})
    return (every.join(per_query, on="query_row", how="left").fill_null(0)
            .with_columns((pl.col("total") >= num_negatives).alias("full")))


def _pooled(measured: pl.DataFrame) -> pl.DataFrame:
    """Per query, summed over the folds: its kept negatives, the hidden positives among them, their score sum, and
    the folds in which it got all its negatives (sorted by query)."""
    return (measured.group_by("query_row")
            .agg(pl.col("relevant", "total", "score_sum").sum(), pl.col("full").cast(pl.UInt32).sum())
            .sort("query_row"))


def _row(name: str, pooled: pl.DataFrame, folds: int, baseline_mean: float | None,
         picks: np.ndarray) -> dict[str, Any]:
    """One line of the table: a setting measured over all folds (rates pooled by query across folds)."""
    negatives = int(pooled["total"].sum())
    rate, interval = rate_with_interval(pooled, picks) if negatives else (None, None)
    mean = float(pooled["score_sum"].sum() / negatives) if negatives else None
    hardness = round(mean / baseline_mean, 4) if mean is not None and baseline_mean else None
    return {"setting": name, "false_negative_rate": rate, "ci95": interval,
            "coverage": round(float(pooled["full"].sum() / (pooled.height * folds)), 4), "hardness": hardness,
            "mean_negative_score": None if mean is None else round(mean, 4), "negatives": negatives}


def difference_interval(lowest: pl.DataFrame, other: pl.DataFrame, picks: np.ndarray | None = None) -> list[float]:
    """95% bootstrap interval of `other`'s false-negative rate less `lowest`'s, resampling the same queries for
    both (paired: each pooled per query, both sorted by query; `picks`: the resamples)."""
    picks = bootstrap_picks(lowest.height) if picks is None else picks
    differences = bootstrap_rates(other, picks) - bootstrap_rates(lowest, picks)
    return [round(float(x), 4) for x in np.quantile(differences, [0.025, 0.975])]


def choose(table: list[dict[str, Any]], tied: Callable[[str, str], bool]) -> tuple[str, str, str]:
    """The chosen setting's name, what decided it, and a sentence saying so; `tied(lowest, other)` says whether a
    setting's false-negative rate cannot be told from the lowest one's."""
    measured = [row for row in table if row.get("false_negative_rate") is not None]
    covered = [row for row in measured if row["coverage"] >= MIN_COVERAGE]
    if not covered:
        best = max(measured, key=lambda row: (row["coverage"], -row["false_negative_rate"]))
        return best["setting"], "highest_coverage", (
            f"no setting reached coverage {MIN_COVERAGE}; the highest coverage ({best['coverage']}) wins")
    eligible = [row for row in covered if (row["hardness"] or 0) >= MIN_HARDNESS]
    if not eligible:
        best = max(covered, key=lambda row: row["hardness"] or 0)
        return best["setting"], "hardest_with_coverage", (
            f"no setting with coverage >= {MIN_COVERAGE} reached hardness {MIN_HARDNESS}; the hardest of them "
            f"({best['hardness']}) wins")
    lowest = min(eligible, key=lambda row: (row["false_negative_rate"], -row["hardness"]))
    ties = [row for row in eligible if row is lowest or tied(lowest["setting"], row["setting"])]
    best = max(ties, key=lambda row: (row["hardness"], -row["false_negative_rate"]))
    if best is lowest:
        return best["setting"], "lowest_false_negative_rate", (
            f"the lowest false-negative rate ({best['false_negative_rate']}) with coverage >= {MIN_COVERAGE} and "
            f"hardness >= {MIN_HARDNESS}")
    return best["setting"], "tied_and_harder", (
        f"its false-negative rate ({best['false_negative_rate']}) cannot be told from the lowest "
        f"({lowest['setting']}: {lowest['false_negative_rate']}: the 95% interval of their difference holds 0), and "
        f"it is the hardest of the {len(ties)} tied settings (hardness {best['hardness']})")


def applicable_settings(files: CalibrationFiles) -> tuple[list[str], dict[str, str]]:
    """The grid settings these candidates can be mined with, in grid order, and the skipped ones with the reason."""
    problem = _lexical_problem(pl.read_parquet(Path(files.folder) / "hits.parquet"))
    skipped = {name: problem for name in GRID if problem and _uses_lexical(name)}
    return [name for name in GRID if name not in skipped], skipped


def measure_settings(files: CalibrationFiles, positives_path: str, config: BuildConfig,
                     names: list[str]) -> dict[str, pl.DataFrame]:
    """Mine the calibration candidates with each named grid setting in every fold: per setting, its per-query
    measures pooled over the folds. Settings are independent, so a build splits them across its workers."""
    folder = Path(files.folder)
    hits = pl.read_parquet(folder / "hits.parquet")
    positive_scores, near = (pl.read_parquet(folder / f"{name}.parquet") for name in ("positive-scores", "near-pairs"))
    hidden, similarity = (pl.read_parquet(folder / f"{name}.parquet") for name in ("hidden", "fold-similarity"))
    rows = hidden["query_row"].unique().sort().to_list()
    positives = pl.read_parquet(positives_path).filter(pl.col("query_row").is_in(rows))
    measured: dict[str, list[pl.DataFrame]] = {name: [] for name in names}
    key = ["query_row", "doc_row"]
    for fold in range(files.folds):
        hide = hidden.filter(pl.col("fold") == fold).select(key)
        fold_hits = hits.join(similarity.filter(pl.col("fold") == fold).drop("fold"), on=key, how="left",
                              maintain_order="left")
        fold_positives = positives.join(hide, on=key, how="anti")
        fold_scores = positive_scores.join(hide, on=key, how="anti")
        for name in names:
            setting = applied(config, setting_fields(name))
            range_max, depth = setting.window_and_depth(files.max_positives)
            levels = [level for level in depth_levels(depth, setting.depth_bound(files.max_positives, files.documents))
                      if level <= files.depth] or [files.depth]
            candidates, _ = mine_adaptively(fold_hits, fold_positives, fold_scores, near, setting, range_max, levels,
                                            files.searchable)
            measured[name].append(_measure(candidates, hide, rows, config.mine.num_negatives))
    return {name: _pooled(pl.concat(frames)) for name, frames in measured.items()}


def chosen_setting(files: CalibrationFiles, pooled: dict[str, pl.DataFrame], skipped: dict[str, str]) -> Calibration:
    """The table of the measured settings (in the order given) and the setting the rule chooses. Every interval
    resamples the queries the same way, so the table's and the differences' intervals are paired."""
    baseline = pooled[BASELINE]
    baseline_mean = float(baseline["score_sum"].sum() / baseline["total"].sum()) if baseline["total"].sum() else None
    picks = bootstrap_picks(baseline.height)
    table = [_row(name, frame, files.folds, baseline_mean, picks) for name, frame in pooled.items()]
    differences: dict[str, list[float]] = {}

    def tied(lowest: str, other: str) -> bool:
        low, high = differences.setdefault(other, difference_interval(pooled[lowest], pooled[other], picks))
        return low <= 0 <= high

    choice, outcome, reason = choose(table, tied)
    for row in table:
        row["difference_ci95"] = differences.get(row["setting"])
    return Calibration(outcome=outcome, choice=choice, settings=setting_fields(choice), message=reason,
                       queries=baseline.height, folds=files.folds, table=tuple(table), skipped=skipped)


def calibrate(files: CalibrationFiles, positives_path: str, config: BuildConfig) -> Calibration:
    """Mine the calibration candidates with every grid setting in every fold, measure, and choose, in this process;
    `positives_path` is the positives table of the build (tables.POSITIVES)."""
    names, skipped = applicable_settings(files)
    return chosen_setting(files, measure_settings(files, positives_path, config, names), skipped)


def fallback(queries: int, config: BuildConfig) -> Calibration:
    """The calibration's answer when too few queries have several positives: the configured options."""
    return Calibration(outcome="fallback", choice=None, settings={}, queries=queries, folds=config.mine.calibration_folds,
                       message=f"only {queries} queries have two or more positives (calibration needs "
                               f"{MIN_QUERIES}); mining with the configured options (mine.strategy: fixed)",
                       table=(), skipped={})
