"""Charts of a version's own data, drawn into its `charts/` folder before it is published: positive and negative
score histograms, candidates removed per reason, negative score by rank and, with an audit, the share of each
filter's candidates that held-out judgements call relevant; with `mine.strategy: auto`, the calibration's settings
(false-negative rate with its interval against hardness).

PNG files (Hub and GitHub render them in README.md; the Prefect UI shows them inline as data URIs), drawn with
matplotlib's Agg canvas on Figure objects, never pyplot's global state, so tasks may draw in threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from negforge.schemas.manifest import Calibration
from negforge.schemas.stages import Mined
from negforge.tasks.calibration.calibrate import MIN_COVERAGE

DPI = 100
POSITIVE, NEGATIVE, OTHER = "#2a9d8f", "#e76f51", "#577590"


def figure(width: float = 6.4, height: float = 3.6):
    """A Figure with one axes on the Agg canvas (white background: readable on the UI's dark theme too)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained", facecolor="white")
    return fig, fig.add_subplot()


def save(fig: Any, path: Path) -> str:
    """Write the figure as PNG (no timestamp, so equal data give equal bytes); returns the file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path.name


def _scores(ids: pl.DataFrame, folder: Path) -> str:
    fig, ax = figure()
    positives = ids["positive_score"].drop_nulls().to_numpy()
    negatives = ids["negative_scores"].explode().drop_nulls().to_numpy()
    values = np.concatenate([positives, negatives]) if positives.size + negatives.size else np.zeros(1)
    bins = np.linspace(values.min(), values.max() + 1e-6, 41)
    ax.hist(positives, bins=bins, alpha=0.7, color=POSITIVE, label=f"positives ({positives.size})")
    ax.hist(negatives, bins=bins, alpha=0.7, color=NEGATIVE, label=f"negatives ({negatives.size})")
    ax.set(xlabel="cosine similarity to the query", ylabel="pairs", title="Positive and negative scores")
    ax.legend()
    return save(fig, folder / "scores.png")


def _reasons(reasons: dict[str, int], folder: Path) -> str:
    removed = {name: count for name, count in reasons.items() if name != "kept"}
    fig, ax = figure(height=max(2.4, 0.45 * len(removed) + 1.2))
    names = list(removed)[::-1]
    ax.barh(names, [removed[n] for n in names], color=OTHER)
    for y, name in enumerate(names):
        ax.annotate(f" {removed[name]}", (removed[name], y), va="center", fontsize=8)
    ax.set(xlabel="candidates", title=f"Candidates removed, per reason (kept: {reasons.get('kept', 0)})")
    return save(fig, folder / "reasons.png")


def _by_rank(ids: pl.DataFrame, folder: Path) -> str:
    fig, ax = figure()
    ranked = ids.select(pl.col("negative_scores").alias("score")).with_row_index("row").explode("score")
    ranked = ranked.drop_nulls("score").with_columns(pl.int_range(1, pl.len() + 1).over("row").alias("rank"))
    ranks = sorted(ranked["rank"].unique().to_list())
    if ranks:
        ax.boxplot([ranked.filter(pl.col("rank") == r)["score"].to_numpy() for r in ranks], tick_labels=ranks,
                   showfliers=False)
    else:
        ax.text(0.5, 0.5, "no negatives", ha="center", transform=ax.transAxes)
    ax.set(xlabel="negative's rank in its row (1: hardest kept)", ylabel="cosine similarity to the query",
           title="Negative score by rank")
    return save(fig, folder / "negative-rank.png")


def _audit(report: dict[str, Any], folder: Path) -> str:
    by_reason = report.get("by_reason", {})
    names = ["kept", *by_reason]
    rates = [report["false_negative_rate"] or 0.0, *[v["judged_relevant"] or 0.0 for v in by_reason.values()]]
    fig, ax = figure(height=max(2.4, 0.45 * len(names) + 1.2))
    ax.barh(names[::-1], rates[::-1], color=[OTHER] * len(by_reason) + [NEGATIVE])
    if report.get("ci95"):
        ax.errorbar([rates[0]], [len(names) - 1], xerr=[[rates[0] - report["ci95"][0]], [report["ci95"][1] - rates[0]]],
                    fmt="none", ecolor="black", capsize=4)
    ax.set(xlabel="share judged relevant by the held-out qrels",
           title=f"False-negative audit ({report['n_queries']} queries; kept negatives with 95% interval)")
    return save(fig, folder / "audit.png")


def _calibration(calibration: Calibration, folder: Path) -> str:
    rows = [row for row in calibration.table if row.false_negative_rate is not None]
    fig, ax = figure(height=4.2)
    for row in rows:
        chosen = row.setting == calibration.choice
        rate = row.false_negative_rate
        low, high = row.ci95 or (rate, rate)
        ax.errorbar([row.hardness or 0.0], [rate], yerr=[[rate - low], [high - rate]], fmt="o", capsize=3,
                    color=POSITIVE if chosen else OTHER, alpha=1.0 if row.coverage >= MIN_COVERAGE else 0.4)
        if chosen:
            ax.annotate(f" chosen: {row.setting}", (row.hardness or 0.0, rate), fontsize=8)
    ax.set(xlabel="hardness (mean negative score / plain top-k's)", ylabel="false-negative rate (95% interval)",
           title=f"Calibration: {len(rows)} settings, {calibration.folds} folds, {calibration.queries} queries "
                 f"(faded: coverage < {MIN_COVERAGE})")
    return save(fig, folder / "calibration.png")


def version_charts(version_dir: str, mined: Mined, calibration: Calibration | None = None) -> dict[str, str]:
    """Draw the charts of a staged version into its `charts/` folder; returns {chart: path in the version}.
    `calibration`: the manifest's calibration (mine.strategy auto), drawn when it measured a table."""
    folder = Path(version_dir) / "charts"
    ids = pl.read_parquet(Path(version_dir) / "ids" / "*.parquet", columns=["positive_score", "negative_scores"])
    drawn = {"scores": _scores(ids, folder), "reasons": _reasons(mined.reasons, folder),
             "negative_rank": _by_rank(ids, folder)}
    if mined.audit and mined.audit.get("n_queries"):
        drawn["audit"] = _audit(mined.audit, folder)
    if calibration and calibration.outcome != "fallback" and calibration.table:
        drawn["calibration"] = _calibration(calibration, folder)
    return {name: f"charts/{file}" for name, file in drawn.items()}
