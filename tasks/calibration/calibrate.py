"""Calibration (`mine.strategy: auto`): which mining setting gives negatives that are hard and not false, measured
on the user's own data.

Users' data lists one or two positives per query while many more documents are relevant and unlabelled; a known
positive, hidden, stands for those. Among the queries with two or more positives, fold f hides the f-th positive of
each query (in a seeded order), up to `mine.calibration_folds` folds, so every known positive of a query with few is
hidden in turn. Hiding a positive only changes which candidates count as positives, so one search with every positive
known, to the grid's largest depth, serves every fold: in a fold the hidden positive is an ordinary candidate, the
query's lowest positive score and its candidates' similarity to the positives are those of the positives it still
has. Each setting of the declared GRID is then a remine of these candidates (mined to the adaptive depth the setting
would search) and is measured against the hidden positives: the false-negative rate (kept negatives that are the
hidden positive), its ratio to plain top-k's (what transfers: the absolute rate counts one hidden positive per query
where the data has many unlabelled ones, so it is far too small, but the share of them a rule removes is what it
removes of the unlabelled ones), each with a 95% bootstrap interval over queries, the coverage (queries that got all
their negatives) and the hardness (mean kept negative score over plain top-k's, in the same folds).

The choice starts from DEFAULT, the setting measured to hold with one and two known positives per query (README,
"Calibration"), and moves only on evidence, judged on the same queries (a paired bootstrap of the difference of two
settings' rates): to a setting whose false-negative rate is lower (the upper bound of the difference below 0, one-
sided, at a family-wise error of FAMILY_ERROR over the settings compared (Bonferroni); the lowest such rate wins).
Never to a harder setting whose rate merely cannot be told from the default's: an underpowered comparison (few
queries, few hidden positives among the negatives) cannot tell most settings apart, and "tied, so the harder wins"
then chose settings that kept many unlabelled relevant documents. Settings count only with coverage >= MIN_COVERAGE
and hardness >= MIN_HARDNESS; if DEFAULT falls short of them, the lowest false-negative rate among those that reach
them is the start instead. If no setting reaches the coverage, the highest coverage wins; if some reach it but none
the hardness, the hardest of those wins. The ratio to plain top-k is estimated only where plain top-k kept at least
MIN_EVENTS hidden positives.
Fewer than MIN_QUERIES multi-positive queries: DEFAULT, with a warning that no estimate is possible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.manifest import Calibration, TopicBound
from negforge.schemas.stages import CalibrationFiles
from negforge.schemas.tables import HIDDEN, frame
from negforge.tasks.gate.audit import bootstrap_picks, bootstrap_rates, rate_with_interval
from negforge.tasks.mining.adaptive_depth import depth_levels, mine_adaptively
from negforge.tasks.mining.rules import query_rng
from negforge.tasks.mining.similarity import candidate_similarity
from negforge.tasks.mining.topic import with_topic_bound

MIN_QUERIES = 20
MIN_COVERAGE = 0.95
MIN_HARDNESS = 0.6
MIN_EVENTS = 10
FAMILY_ERROR = 0.05
BASELINE = "plain top-k"
# The fields every setting sets (section, field), at these values unless the setting names them.
CALIBRATED = {("mine", "relative_margin"): None, ("mine", "absolute_margin"): None,
              ("mine", "max_positive_similarity"): None, ("mine", "max_score"): None, ("mine", "max_depth"): "auto",
              ("mine", "topic_quantile"): None, ("mine", "max_topic_centrality"): None,
              ("lexical", "ratio"): None, ("lexical", "fusion"): None}
_REL, _ABS = ("mine", "relative_margin"), ("mine", "absolute_margin")
_SIM, _DEPTH = ("mine", "max_positive_similarity"), ("mine", "max_depth")
_TOPIC = ("mine", "topic_quantile")
_RATIO, _FUSION = ("lexical", "ratio"), ("lexical", "fusion")
# The declared grid: the baseline; DEFAULT, what a build mines with when it cannot calibrate and where the choice
# starts (measured with one and two known positives per query on SciFact and MEDLINE, and on SciFact with its queries
# cut to three words, README "Calibration"): the topic bound (tasks/mining/topic.py) at the 0.1 quantile of the known
# positives, beside the paraphrase bound 0.8; the topic bound at other quantiles, and at 0.1 and 0.15 with BM25's
# rules; max_positive_similarity (a candidate's highest cosine to the query's remaining positives) at four bounds,
# alone and with each rule (the relative margins of NV-Retriever's study, BM25's two rules; "relative_margin 0.05,
# max_positive_similarity 0.8" is the fixed default). The bounds span 0.6-0.9 because where a model puts a query's
# other relevant documents differs.
DEFAULT = "topic_quantile 0.1, max_positive_similarity 0.8"
_RULES: dict[str, dict[tuple[str, str], Any]] = {
    "": {}, "relative_margin 0.05, ": {_REL: 0.05}, "relative_margin 0.1, ": {_REL: 0.1},
    "lexical ratio 1, ": {_RATIO: 1.0}, "lexical rrf, ": {_FUSION: "rrf"}}
_LEXICAL = ("", "lexical ratio 1, ", "lexical rrf, ")
GRID: dict[str, dict[tuple[str, str], Any]] = {BASELINE: {_DEPTH: None}} | {
    f"{rule}topic_quantile {quantile}, max_positive_similarity 0.8": _RULES[rule] | {_TOPIC: quantile, _SIM: 0.8}
    for quantile, rules in ((0.05, ("",)), (0.1, _LEXICAL), (0.15, _LEXICAL), (0.2, ("",))) for rule in rules} | {
    f"{rule}max_positive_similarity {similarity}": fields | {_SIM: similarity}
    for similarity in (0.6, 0.7, 0.8, 0.9) for rule, fields in _RULES.items()}


class CalibrationError(ValueError):
    """Stored candidates that cannot be calibrated on."""


def replaced_fields(config: BuildConfig) -> list[str]:
    """The fields a config sets explicitly (in its YAML or with --set) that mine.strategy auto replaces with the
    calibration's choice: a user who set them may expect them mined with."""
    if config.mine.strategy != "auto":
        return []
    given = {("mine", name) for name in config.mine.model_fields_set} | {
        ("lexical", name) for name in config.lexical.model_fields_set}
    return [f"{section}.{field}" for section, field in CALIBRATED if (section, field) in given]


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


def calibration_rows(positives: pl.DataFrame) -> list[int]:
    """The query rows with two or more positive documents (distinct corpus rows)."""
    counts = positives.group_by("query_row").agg(pl.col("doc_row").n_unique().alias("n"))
    return counts.filter(pl.col("n") >= 2)["query_row"].sort().to_list()


def hidden_positives(positives: pl.DataFrame, rows: list[int], folds: int, seed: int) -> pl.DataFrame:
    """The positive fold f hides from each query: the f-th of its positive documents in an order drawn from a stream
    seeded by (seed, query id) (apart from mining's own), so folds do not depend on order or partitioning; a query
    takes part in as many folds as it has positives, up to `folds`, each hiding another of them."""
    own = (positives.filter(pl.col("query_row").is_in(rows)).group_by("query_row", maintain_order=True)
           .agg(pl.col("query_id").first(), pl.col("doc_row").unique().sort()))
    picked: dict[str, list[int]] = {"fold": [], "query_row": [], "doc_row": []}
    for query_row, query_id, docs in own.iter_rows():
        order = query_rng(seed, f"calibration folds:{query_id}").permutation(len(docs))
        for fold in range(min(folds, len(docs))):
            picked["fold"].append(fold)
            picked["query_row"].append(query_row)
            picked["doc_row"].append(docs[int(order[fold])])
    return frame(HIDDEN, picked).sort("fold", "query_row")


def fold_similarity(hits: pl.DataFrame, positives: pl.DataFrame, hidden: pl.DataFrame,
                    corpus: np.ndarray) -> pl.DataFrame:
    """Each fold's `pos_sim` of the candidates of its queries: their highest cosine to the positives the fold leaves
    the query."""
    parts = []
    for fold in hidden["fold"].unique().sort().to_list():
        hide = hidden.filter(pl.col("fold") == fold)
        kept = positives.join(hide, on=["query_row", "doc_row"], how="anti")
        own = hits.filter(pl.col("query_row").is_in(hide["query_row"].implode())).select("query_row", "doc_row")
        with_sim, _ = candidate_similarity(own, kept, corpus, near_pairs=False)
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
    """Write the calibration's candidates (tasks/calibration/candidates.py's tables, `hits` with `pos_sim`) into
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


def _topic_problem(hits: pl.DataFrame, topic_sample: str | None) -> str | None:
    """Why topic settings cannot be applied to these candidates, or None when they can."""
    if "topic_centrality" not in hits.columns or topic_sample is None:
        return "the candidates have no topic centralities (built before the topic rule); run negforge build"
    return None


def _uses(name: str, section: str, field: str | None = None) -> bool:
    return any(s == section and (field is None or f == field) and value is not None
               for (s, f), value in GRID[name].items())


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
    """Per query, summed over the folds it took part in: its kept negatives, the hidden positives among them, their
    score sum, the folds in which it got all its negatives and the folds it took part in (sorted by query)."""
    return (measured.group_by("query_row")
            .agg(pl.col("relevant", "total", "score_sum").sum(), pl.col("full").cast(pl.UInt32).sum(),
                 pl.len().alias("folds"))
            .sort("query_row"))


def _ratio(setting: pl.DataFrame, baseline: pl.DataFrame, picks: np.ndarray) -> tuple[float | None, list[float] | None]:
    """A setting's false-negative rate over plain top-k's, and its 95% interval (paired: the same resamples of the
    queries for both; resamples where plain top-k keeps no hidden positive are left out). None when plain top-k kept
    fewer than MIN_EVENTS hidden positives: too few to compare with."""
    if baseline["relevant"].sum() < MIN_EVENTS:
        return None, None
    base_rate = baseline["relevant"].sum() / max(baseline["total"].sum(), 1)
    rate = setting["relevant"].sum() / max(setting["total"].sum(), 1)
    base = bootstrap_rates(baseline, picks)
    ratios = bootstrap_rates(setting, picks)[base > 0] / base[base > 0]
    return round(float(rate / base_rate), 4), [round(float(x), 4) for x in np.quantile(ratios, [0.025, 0.975])]


def _row(name: str, pooled: pl.DataFrame, baseline: pl.DataFrame, baseline_mean: float | None,
         picks: np.ndarray) -> dict[str, Any]:
    """One line of the table: a setting measured over all folds (rates pooled by query across folds)."""
    negatives = int(pooled["total"].sum())
    rate, interval = rate_with_interval(pooled, picks) if negatives else (None, None)
    vs_plain, vs_interval = _ratio(pooled, baseline, picks) if negatives else (None, None)
    mean = float(pooled["score_sum"].sum() / negatives) if negatives else None
    hardness = round(mean / baseline_mean, 4) if mean is not None and baseline_mean else None
    return {"setting": name, "false_negative_rate": rate, "ci95": interval, "vs_plain": vs_plain,
            "vs_plain_ci95": vs_interval, "hidden_kept": int(pooled["relevant"].sum()),
            "coverage": round(float(pooled["full"].sum() / max(pooled["folds"].sum(), 1)), 4), "hardness": hardness,
            "mean_negative_score": None if mean is None else round(mean, 4), "negatives": negatives}


def difference_interval(start: pl.DataFrame, other: pl.DataFrame, picks: np.ndarray | None = None,
                        tail: float = 0.025) -> list[float]:
    """The bootstrap interval of `other`'s false-negative rate less `start`'s, from the `tail` quantile to the 1 -
    `tail` one (0.025: 95%), resampling the same queries for both (paired: each pooled per query, both sorted by
    query; `picks`: the resamples)."""
    picks = bootstrap_picks(start.height) if picks is None else picks
    differences = bootstrap_rates(other, picks) - bootstrap_rates(start, picks)
    return [round(float(x), 4) for x in np.quantile(differences, [tail, 1 - tail])]


def _lowest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rows, key=lambda row: (row["false_negative_rate"], -(row["hardness"] or 0)))


def choose(table: list[dict[str, Any]],
           difference: Callable[[str, str], list[float]]) -> tuple[str, str, str, str | None]:
    """The chosen setting's name, what decided it, a sentence saying so, and the setting the choice started from
    (None when no setting reached the coverage and hardness). `difference(start, other)`: the interval of other's
    false-negative rate less start's, whose upper bound is a one-sided bound at the family-wise FAMILY_ERROR."""
    measured = [row for row in table if row.get("false_negative_rate") is not None]
    covered = [row for row in measured if row["coverage"] >= MIN_COVERAGE]
    if not covered:
        best = max(measured, key=lambda row: (row["coverage"], -row["false_negative_rate"]))
        return best["setting"], "highest_coverage", (
            f"no setting reached coverage {MIN_COVERAGE}; the highest coverage ({best['coverage']}) wins"), None
    eligible = [row for row in covered if (row["hardness"] or 0) >= MIN_HARDNESS]
    if not eligible:
        best = max(covered, key=lambda row: row["hardness"] or 0)
        return best["setting"], "hardest_with_coverage", (
            f"no setting with coverage >= {MIN_COVERAGE} reached hardness {MIN_HARDNESS}; the hardest of them "
            f"({best['hardness']}) wins"), None
    start = next((row for row in eligible if row["setting"] == DEFAULT), None)
    if start is None:
        start = _lowest(eligible)
        missing = ("was not measured here" if DEFAULT not in {row["setting"] for row in measured}
                   else f"falls short of coverage {MIN_COVERAGE} or hardness {MIN_HARDNESS} here")
        outcome, why = "lowest_false_negative_rate", (
            f"the default ({DEFAULT}) {missing}; {start['setting']} has the lowest false-negative rate "
            f"({start['false_negative_rate']}) of the settings that reach them")
    else:
        outcome, why = "default", (
            "the default: no setting is shown to keep fewer hidden positives (the upper bound of the difference of "
            f"rates, paired over the calibration queries, at a family-wise error of {FAMILY_ERROR:g} over the "
            "settings compared, is not below 0)")
    others = [row for row in eligible if row is not start]
    safer = [row for row in others if difference(start["setting"], row["setting"])[1] < 0]
    if safer:
        best = _lowest(safer)
        return best["setting"], "fewer_false_negatives", (
            f"its false-negative rate ({best['false_negative_rate']}) is lower than {start['setting']}'s "
            f"({start['false_negative_rate']}): the upper bound of the difference, at a family-wise error of "
            f"{FAMILY_ERROR:g} over the settings compared, is below 0"), start["setting"]
    return start["setting"], outcome, why, start["setting"]


def applicable_settings(files: CalibrationFiles, topic_sample: str | None) -> tuple[list[str], dict[str, str]]:
    """The grid settings these candidates can be mined with, in grid order, and the skipped ones with the reason."""
    hits = pl.read_parquet(Path(files.folder) / "hits.parquet")
    problems = {"lexical": _lexical_problem(hits), "topic": _topic_problem(hits, topic_sample)}
    skipped = {}
    for name in GRID:
        problem = problems["lexical"] if _uses(name, "lexical") else None
        problem = problem or (problems["topic"] if _uses(name, "mine", "topic_quantile") else None)
        if problem:
            skipped[name] = problem
    return [name for name in GRID if name not in skipped], skipped


def measure_settings(files: CalibrationFiles, positives_path: str, config: BuildConfig, names: list[str],
                     topic_sample: str | None = None) -> dict[str, pl.DataFrame]:
    """Mine the calibration candidates with each named grid setting in every fold: per setting, its per-query
    measures pooled over the folds. Settings are independent, so a build splits them across its workers.
    `topic_sample`: the build's topic sample (tasks/mining/topic.py), which topic settings derive their bound from (in
    each fold without the positives it hides)."""
    folder = Path(files.folder)
    hits = pl.read_parquet(folder / "hits.parquet")
    positive_scores, near = (pl.read_parquet(folder / f"{name}.parquet") for name in ("positive-scores", "near-pairs"))
    hidden, similarity = (pl.read_parquet(folder / f"{name}.parquet") for name in ("hidden", "fold-similarity"))
    positives = pl.read_parquet(positives_path).filter(pl.col("query_row").is_in(hidden["query_row"].unique()))
    sample = pl.read_parquet(topic_sample) if topic_sample else None
    measured: dict[str, list[pl.DataFrame]] = {name: [] for name in names}
    key = ["query_row", "doc_row"]
    for fold in hidden["fold"].unique().sort().to_list():
        hide = hidden.filter(pl.col("fold") == fold).select(key)
        known = None if sample is None else sample.join(hide, on=key, how="anti")  # a hidden positive is not known
        settings = {name: with_topic_bound(applied(config, setting_fields(name)), known)[0] for name in names}
        rows = hide["query_row"].sort().to_list()
        fold_hits = hits.join(similarity.filter(pl.col("fold") == fold).drop("fold"), on=key, how="inner",
                              maintain_order="left")
        fold_positives = positives.filter(pl.col("query_row").is_in(rows)).join(hide, on=key, how="anti")
        fold_scores = positive_scores.join(hide, on=key, how="anti")
        for name, setting in settings.items():
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
    table = [_row(name, frame, baseline, baseline_mean, picks) for name, frame in pooled.items()]
    differences: dict[str, dict[str, list[float]]] = {}
    tail = FAMILY_ERROR / max(len(table) - 1, 1)  # Bonferroni over the settings a start is compared with

    def difference(start: str, other: str) -> list[float]:
        measured = differences.setdefault(start, {})
        return measured.setdefault(other, difference_interval(pooled[start], pooled[other], picks, tail))

    choice, outcome, reason, start = choose(table, difference)
    for row in table:
        row["difference_interval"] = differences.get(start, {}).get(row["setting"])
    chosen = next(row for row in table if row["setting"] == choice)
    estimate = {"vs_plain": chosen["vs_plain"], "ci95": chosen["vs_plain_ci95"],
                "false_negative_reduction": None if chosen["vs_plain"] is None else round(1 - chosen["vs_plain"], 4)}
    return Calibration(outcome=outcome, choice=choice, settings=setting_fields(choice), message=reason,
                       queries=baseline.height, folds=files.folds, table=table, skipped=skipped,
                       estimate=estimate, compared_with=start)


def calibrate(files: CalibrationFiles, positives_path: str, config: BuildConfig,
              topic_sample: str | None = None) -> Calibration:
    """Mine the calibration candidates with every grid setting in every fold, measure, and choose, in this process;
    `positives_path` is the positives table of the build (tables.POSITIVES)."""
    names, skipped = applicable_settings(files, topic_sample)
    return chosen_setting(files, measure_settings(files, positives_path, config, names, topic_sample), skipped)


def fallback(queries: int, config: BuildConfig) -> Calibration:
    """The calibration's answer when too few queries have several positives: DEFAULT, unmeasured on this data."""
    return Calibration(outcome="fallback", choice=DEFAULT, settings=setting_fields(DEFAULT), queries=queries,
                       folds=config.mine.calibration_folds,
                       message=f"only {queries} queries have two or more positives (calibration needs "
                               f"{MIN_QUERIES}): mining with the default ({DEFAULT}), chosen by measurement with one "
                               f"known positive per query (README, Calibration); no estimate of its false-negative "
                               f"reduction on this data is possible",
                       table=(), skipped={}, estimate=None, compared_with=None)


def false_negative_estimate(calibration: Calibration | None, topic: TopicBound | None) -> str:
    """What a version can say about its false negatives (the manifest's `calibration` and `topic`): the calibration's
    estimate against plain top-k with its interval, or that none was possible and which fixed rule was used."""
    bound = (f" (topic bound {topic.max_topic_centrality}: the {topic.quantile} quantile of {topic.positives}"
             f" known positives' topic centralities)") if topic else ""
    if calibration is None:
        return f"False negatives: not estimated (mine.strategy fixed); mined with the options as set{bound}."
    if calibration.outcome == "fallback":
        return (f"False negatives: no estimate is possible: {calibration.queries} queries have two or more known "
                f"positives, {MIN_QUERIES} are needed to hide one and count it among the negatives. Mined with the "
                f"fixed rule {calibration.choice}{bound}, the default measured with one and two known positives per "
                f"query (README, Calibration).")
    estimate = calibration.estimate
    plain = calibration.row(BASELINE)
    kept = plain.hidden_kept if plain else 0
    if estimate is None or estimate.vs_plain is None:
        measured = (f"not estimated: plain top-k kept {kept} hidden positives among its "
                    f"negatives, fewer than the {MIN_EVENTS} a ratio needs")
    else:
        low, high = estimate.ci95
        measured = (f"estimated at {estimate.vs_plain:.2f}x plain top-k's rate (95% interval {low:.2f}-{high:.2f}x; "
                    f"plain top-k kept {kept} hidden positives)")
    return (f"False negatives: {measured}, measured on {calibration.queries} queries with several known positives, "
            f"each hidden in turn as a stand-in for the unlabelled relevant documents. Mined with "
            f"{calibration.choice}{bound} ({calibration.outcome}).")
