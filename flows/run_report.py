"""What a run shows in the Prefect UI: artifacts keyed per dataset, so the UI keeps each dataset's history.

- `<dataset>-embedding`: progress of the embedding stage, updated as shards finish;
- `<dataset>-report`: the markdown run report (inputs and rejects, stage timings, the per-reason table, score
  distributions, short queries, validation, the version published);
- `<dataset>-sample`: a table of training rows; `<dataset>-version`: a link to the version (and its Data Docs).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from uuid import UUID

import polars as pl
from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)

SAMPLE_ROWS = 10
SAMPLE_CHARS = 160


def slug(dataset: str) -> str:
    """A dataset name as artifact keys allow it: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-") or "dataset"


class ShardProgress:
    """A progress artifact for the embedding stage, moved forward as each shard finishes."""

    def __init__(self, dataset: str, total: int) -> None:
        self.total, self.done = total, 0
        self.id: UUID = create_progress_artifact(0.0, key=f"{slug(dataset)}-embedding",
                                                 description=f"embedding: 0 of {total} shards")

    def shard_done(self) -> None:
        self.done += 1
        update_progress_artifact(self.id, 100.0 * self.done / self.total,
                                 description=f"embedding: {self.done} of {self.total} shards")


def reject_lines(reasons: dict[str, int], samples: dict[str, list[str]]) -> list[str]:
    """One line per reason a row was rejected for: its count and the first few rows (`file:line field: raw`)."""
    return [f"{reason}: {count}" + (f" (e.g. {'; '.join(samples[reason])})" if samples.get(reason) else "")
            for reason, count in reasons.items()]


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def report_markdown(manifest: dict[str, Any], version_dir: str, published: bool) -> str:
    """The run report, from the manifest the run wrote."""
    counts, rejects = manifest["counts"], manifest["rejects"]
    inputs = _table(("input", "rows read", "accepted", "rejected"),
                    [(Path(i["path"]).name, i["rows_read"], i["rows_accepted"], i["rows_rejected"])
                     for i in manifest["inputs"]])
    reject_list = "".join(f"\n- {line}" for line in reject_lines(rejects["reasons"], rejects.get("samples", {})))
    timings = _table(("stage", "seconds"), list(manifest["timings"].items()))
    per_query = manifest["reasons_per_query"]
    reasons = _table(("outcome", "candidates", "queries", "mean per query", "max per query"),
                     [(name, n, per_query.get(name, {}).get("queries", ""), per_query.get(name, {}).get("mean", ""),
                       per_query.get(name, {}).get("max", "")) for name, n in manifest["reasons"].items()])
    scores = _table(("scores", "count", "mean", "min", "median", "max"),
                    [(kind, *[stats.get(k, "") for k in ("count", "mean", "min", "median", "max")])
                     for kind, stats in manifest["scores"].items()])
    short = manifest["short_queries"]
    validation = manifest["validation"]
    outcome = "published" if published else "up to date: equal to the latest version, nothing published"
    return f"""# {manifest['dataset']} {manifest['version']}: {outcome}

Version folder: `{version_dir}`

## Inputs
{inputs}

{counts['documents']} documents ({counts['unique_texts']} unique texts), {counts['queries_used']} queries with \
positives, {counts['positives']} positives. Rejected rows: {counts['rows_rejected']}; rejects file \
`{rejects['path']}`.{reject_list}

Embedded {manifest['embed']['texts_embedded']} texts, {manifest['embed']['texts_cached']} \
from the store.

## Stage timings
{timings}

## Candidates and why they were dropped
{reasons}

## Scores
{scores}

## Queries short of negatives
{short['count']}{': ' + ', '.join(short['ids'][:20]) if short['ids'] else ''}{' ...' if len(short['ids']) > 20 else ''}

## Validation
Passed: {validation['expectations']} expectations; drift warnings: {'; '.join(validation['warnings']) or 'none'}.

## Result
{counts['rows']} training rows, {counts['id_rows']} id rows; data hash `{manifest['data_hash']}`.
"""


def _sample(version_dir: Path) -> list[dict[str, Any]]:
    """The first training rows, long texts shortened, as JSON-ready dicts."""
    rows = pl.read_parquet(sorted((version_dir / "data").glob("*.parquet"))[0], n_rows=SAMPLE_ROWS)
    shortened = rows.with_columns(pl.col(pl.String).str.slice(0, SAMPLE_CHARS))
    return [{k: (v if isinstance(v, (str, int, float)) or v is None else str(v)) for k, v in row.items()}
            for row in shortened.iter_rows(named=True)]


def publish_artifacts(manifest: dict[str, Any], version_dir: str, published: bool) -> None:
    """The report, sample table and version link of a finished run."""
    key = slug(manifest["dataset"])
    folder = Path(version_dir)
    create_markdown_artifact(report_markdown(manifest, version_dir, published), key=f"{key}-report",
                             description=f"negforge run report: {manifest['dataset']} {manifest['version']}")
    create_table_artifact(_sample(folder), key=f"{key}-sample",
                          description=f"first {SAMPLE_ROWS} training rows of {manifest['version']}")
    docs = folder / "validation" / "data_docs" / "index.html"
    create_link_artifact(folder.resolve().as_uri(), link_text=f"{manifest['dataset']} {manifest['version']}",
                         key=f"{key}-version",
                         description=f"Data Docs: {docs.resolve().as_uri()}" if docs.exists() else None)
