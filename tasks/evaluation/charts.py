"""Charts of evaluations, kept with them in `<registry>/<dataset>/evaluations/charts/` (never in a version): one
version's base and fine-tuned metrics, nDCG@10 per version for one evaluation key, and a comparison's per-query
differences with their paired interval."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from negforge.schemas.evaluation import Comparison, EvaluationRecord
from negforge.tasks.evaluation.metrics import METRICS
from negforge.tasks.registry.charts import NEGATIVE, OTHER, POSITIVE, figure, save


def record_chart(record: EvaluationRecord, path: Path) -> str:
    """Base and fine-tuned metrics of one evaluation (each seed a dot), with the nDCG@10 gain's interval."""
    fig, ax = figure()
    x = np.arange(len(METRICS))
    base = [record.metrics.base[m] for m in METRICS]
    tuned = [record.metrics.fine_tuned[m] for m in METRICS]
    ax.bar(x - 0.2, base, 0.4, color=OTHER, label="base model")
    ax.bar(x + 0.2, tuned, 0.4, color=POSITIVE, label=f"fine-tuned ({len(record.seeds)} seeds)")
    for run in record.fine_tuned:
        ax.scatter(x + 0.2, [run.metrics[m] for m in METRICS], color="black", s=10, zorder=3)
    for xi, value in zip(np.concatenate([x - 0.2, x + 0.2]), base + tuned):
        ax.annotate(f"{value:.3f}", (xi, value), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, METRICS)
    ax.set(ylim=(0, 1.08))
    ax.set_title(f"{record.dataset} {record.version} on {record.evaluation.split}, nDCG@10 gain:\n"
                 f"{record.gain.text()}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)


def versions_chart(records: list[EvaluationRecord], path: Path) -> str:
    """nDCG@10 of the base model and of each version's fine-tuned model (95% interval of the gain), one key."""
    fig, ax = figure()
    names = [r.version for r in records]
    base = [r.metrics.base["ndcg@10"] for r in records]
    tuned = [r.metrics.fine_tuned["ndcg@10"] for r in records]
    low = [b + r.gain.ci[0] for b, r in zip(base, records)]
    high = [b + r.gain.ci[1] for b, r in zip(base, records)]
    ax.plot(names, base, color=OTHER, marker="o", label="base model")
    ax.errorbar(names, tuned, yerr=[np.subtract(tuned, low), np.subtract(high, tuned)], color=POSITIVE, marker="o",
                capsize=4, label="fine-tuned (95% interval)")
    ax.set(ylabel="nDCG@10", title=f"nDCG@10 per version ({records[-1].evaluation.split}, "
                                   f"key {records[-1].key})")
    ax.legend(fontsize=8)
    return save(fig, path)


def comparison_chart(comparison: Comparison, path: Path) -> str:
    """The per-query nDCG@10 differences (B - A, mean over seeds) and their mean with its paired interval."""
    fig, ax = figure()
    gain = comparison.difference
    differences = np.array(list(comparison.per_query_difference.values()))
    ax.hist(differences, bins=41, color=OTHER, alpha=0.8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.axvline(gain.mean, color=NEGATIVE, label=f"mean {gain.mean:+.4f}")
    ax.axvspan(*gain.ci, color=NEGATIVE, alpha=0.2, label=f"{int(gain.level * 100)}% interval")
    ax.set(xlabel=f"nDCG@10 of {comparison.b.name} minus {comparison.a.name}, per query", ylabel="queries")
    ax.set_title(f"{comparison.b.name} minus {comparison.a.name}, nDCG@10:\n{gain.text()}", fontsize=10)
    ax.legend(fontsize=8)
    return save(fig, path)
