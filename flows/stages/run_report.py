"""What a run shows in the Prefect UI: artifacts keyed per dataset, so the UI keeps each dataset's history.

- `<dataset>-<stage>` (embed, search): progress of a long stage, moved as its tasks report
(flows/orchestration/stage_progress.py);
- `<dataset>-report`: the markdown run report (inputs and rejects, stage timings, the per-reason table, score
  distributions, short queries, validation, the version published) and the version's charts, inline as data-URI
  images (the UI renders those; a file path would not load in a browser);
- `<dataset>-sample`: a table of training rows; `<dataset>-version`: a link to the version (and its Data Docs).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import polars as pl
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from negforge.flows.orchestration.artifact_keys import slug
from negforge.schemas.console_text import printable
from negforge.schemas.manifest import Calibration, Manifest, Search, TopicBound
from negforge.tasks.calibration.calibrate import false_negative_estimate

SAMPLE_ROWS = 10
SAMPLE_CHARS = 160


def reject_lines(reasons: dict[str, int], samples: dict[str, list[str]]) -> list[str]:
    """One line per reason a row was rejected for: its count and the first few rows (`file:line field: raw`), their
    control characters escaped (the log and the report show them)."""
    return [f"{reason}: {count}" + (f" (e.g. {'; '.join(map(printable, samples[reason]))})"
                                    if samples.get(reason) else "") for reason, count in reasons.items()]


def image_markdown(path: Path, alt: str) -> str:
    """A PNG inline in markdown as a data URI: the Prefect UI shows it where it could not load a local file."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def _charts(manifest: Manifest, files: Path) -> str:
    """The version's charts (those its manifest lists and its folder holds), inline."""
    charts = [(name, files / path) for name, path in manifest.charts.items()]
    return "\n\n".join(image_markdown(path, name.replace("_", " ")) for name, path in charts if path.is_file())


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _search_line(search: Search) -> str:
    """The search settings, and the recall probe of an approximate index."""
    line = f"Depth {search.depth}, window {search.range_max}, index `{search.index}`."
    probe = search.probe
    if probe:
        knob = "nprobe" if probe.kind == "ivf" else "efSearch"
        line += (f" Recall probe on {probe.queries} queries: {knob} {probe.knob}, candidate-window recall "
                 f"{probe.recall}{'' if probe.met_target else ' (target NOT met)'}, mined negatives changed "
                 f"{probe.negatives_changed}.")
    return line


def _calibration_section(calibration: Calibration | None, topic: TopicBound | None) -> str:
    """What is known of the version's false negatives, then the calibration's table and choice (mine.strategy auto)."""
    known = false_negative_estimate(calibration, topic)
    if not calibration or calibration.outcome == "fallback":
        return known
    table = _table(("setting", "false-negative rate", "95% interval", "x plain top-k", "95% interval", "coverage",
                    "hardness"),
                   [(row.setting, row.false_negative_rate, row.ci95, row.vs_plain, row.vs_plain_ci95, row.coverage,
                     row.hardness) for row in calibration.table])
    skipped = "".join(f"\n- skipped {name}: {reason}" for name, reason in calibration.skipped.items())
    return (f"{known}\n\n{calibration.queries} queries with several positives, at most {calibration.folds} "
            f"folds, each hiding another of their positives.\n\n{table}{skipped}\n\nChosen: "
            f"**{calibration.choice}**: {calibration.message}.")


def report_markdown(manifest: Manifest, version_dir: str, published: bool, files: Path | None = None) -> str:
    """The run report, from the manifest the run wrote."""
    counts, rejects = manifest.counts, manifest.rejects
    inputs = _table(("input", "rows read", "accepted", "rejected"),
                    [(printable(Path(i.path).name), i.rows_read, i.rows_accepted, i.rows_rejected)
                     for i in manifest.inputs])
    reject_list = "".join(f"\n- {line}" for line in reject_lines(rejects.reasons, rejects.samples))
    timings = _table(("stage", "seconds"), list(manifest.timings.items()))
    per_query = manifest.reasons_per_query
    reasons = _table(("outcome", "candidates", "queries", "mean per query", "max per query"),
                     [(name, n, per_query.get(name, {}).get("queries", ""), per_query.get(name, {}).get("mean", ""),
                       per_query.get(name, {}).get("max", "")) for name, n in manifest.reasons.items()])
    statistics = ("count", "mean", "min", "median", "max")
    scores = _table(("scores", *statistics), [(kind, *["" if getattr(stats, k) is None else getattr(stats, k)
                                                       for k in statistics]) for kind, stats in manifest.scores])
    short = manifest.short_queries
    short_ids = [printable(query_id) for query_id in short.ids[:20]]
    validation = manifest.validation
    outcome = "published" if published else "up to date: equal to the latest version, nothing published"
    return f"""# {manifest.dataset} {manifest.version}: {outcome}

Version folder: `{version_dir}`

## Inputs
{inputs}

{counts.documents} documents ({counts.unique_texts} unique texts), {counts.queries_used} queries with \
positives, {counts.positives} positives. Rejected rows: {counts.rows_rejected}; rejects file \
`{rejects.path}`.{reject_list}

Embedded {manifest.embed.texts_embedded} texts, {manifest.embed.texts_cached} \
from the store.

## Stage timings
{timings}

Task runs per stage: {', '.join(f'{k} {v}' for k, v in manifest.task_runs.items() if v) or 'none'}.

## Search
{_search_line(manifest.search)}

## Calibration
{_calibration_section(manifest.calibration, manifest.topic)}

## Candidates and why they were dropped
{reasons}

## Scores
{scores}

## Queries short of negatives
{short.count}{': ' + ', '.join(short_ids) if short_ids else ''}{' ...' if len(short.ids) > 20 else ''}

## Validation
Passed: {validation.expectations} expectations; drift warnings: {'; '.join(validation.warnings) or 'none'}.

## Result
{counts.rows} training rows, {counts.id_rows} id rows; data hash `{manifest.data_hash}`.

## Charts
{_charts(manifest, files or Path(version_dir)) or 'none (a version published before charts were drawn)'}
"""


def _sample(version_dir: Path) -> list[dict[str, Any]]:
    """The first training rows, long texts shortened, as JSON-ready dicts."""
    rows = pl.read_parquet(sorted((version_dir / "data").glob("*.parquet"))[0], n_rows=SAMPLE_ROWS)
    shortened = rows.with_columns(pl.col(pl.String).str.slice(0, SAMPLE_CHARS))
    return [{k: (v if isinstance(v, (str, int, float)) or v is None else str(v)) for k, v in row.items()}
            for row in shortened.iter_rows(named=True)]


def publish_artifacts(manifest: Manifest, version_dir: str, published: bool, files: Path | None = None) -> None:
    """The report, sample table and version link of a finished run; `files`: a local copy of the version's files
    (default: `version_dir` itself, a local folder)."""
    key = slug(manifest.dataset)
    folder = files or Path(version_dir)
    create_markdown_artifact(report_markdown(manifest, version_dir, published, folder), key=f"{key}-report",
                             description=f"negforge run report: {manifest.dataset} {manifest.version}")
    create_table_artifact(_sample(folder), key=f"{key}-sample",
                          description=f"first {SAMPLE_ROWS} training rows of {manifest.version}")
    docs = folder / "validation" / "data_docs" / "index.html"
    link = version_dir if "://" in version_dir else folder.resolve().as_uri()  # an object store's URL as it is
    create_link_artifact(link, link_text=f"{manifest.dataset} {manifest.version}",
                         key=f"{key}-version",
                         description=f"Data Docs: {docs.resolve().as_uri()}" if docs.exists() else None)
