"""The quality gate: run the expectation suites with Great Expectations, and quarantine a candidate that fails.

A failing candidate never reaches the registry's versions: it is moved to `<registry>/<dataset>/.quarantine/<id>/`
with the validation results (JSON) and the rendered Data Docs, and the build stops with a message naming each failed
expectation, its count of offending rows and a sample of them.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from negforge.schemas.manifest import Manifest
from negforge.tasks.runtime.os_errors import naming

SAMPLE_ROWS = 3


class ValidationFailed(RuntimeError):
    """A candidate version broke an expectation; nothing was published."""


def _context(root: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_suites(root: str | Path, checks: list[tuple[str, Any, pl.DataFrame]]) -> dict[str, Any]:
    """Validate each (table name, suite, frame) with a GX checkpoint that also renders Data Docs under `root`.

    Returns:
        success, the failures (table, expectation, column, unexpected_count, sample rows), the results file and
        the Data Docs index.
    """
    import great_expectations as gx

    root = Path(root)
    context = _context(root)
    source = context.data_sources.add_or_update_pandas("negforge")
    failures, results = [], []
    for table, suite, frame in checks:
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=table, data=batch, suite=context.suites.add_or_update(suite)))
        checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
            name=table, validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")], result_format={"result_format": "SUMMARY"}))
        simple = frame.select([c for c, t in frame.schema.items() if not isinstance(t, pl.List)]).to_pandas()
        outcome = checkpoint.run(batch_parameters={"dataframe": simple})
        for run in outcome.run_results.values():
            results.append(run.to_json_dict())
            for item in run.results:
                if not item.success:
                    column = item.expectation_config.kwargs.get("column")
                    failures.append(_failure(table, item, column, frame))
    results_path = root / "validation.json"
    # GX leaves numpy NaN and infinity in some results; standard JSON has no such numbers, so they become null
    finite = json.loads(json.dumps(results, default=str), parse_constant=lambda _: None)
    results_path.write_text(json.dumps(finite, indent=1, allow_nan=False))
    docs = root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    return {"success": not failures, "failures": failures, "results": str(results_path), "data_docs": str(docs),
            "expectations": sum(len(r["results"]) for r in results)}


def _failure(table: str, item: Any, column: str | None, frame: pl.DataFrame) -> dict[str, Any]:
    result = item.result or {}
    sample: list[dict] = []
    if column and frame.schema.get(column) == pl.Boolean:
        sample = frame.filter(~pl.col(column)).drop([c for c, t in frame.schema.items() if t == pl.Boolean]) \
            .head(SAMPLE_ROWS).to_dicts()
    return {"table": table, "expectation": item.expectation_config.type, "column": column,
            "unexpected_count": result.get("unexpected_count"), "observed": result.get("observed_value"),
            "sample": sample}


def describe_failures(failures: list[dict[str, Any]], meanings: dict[str, str]) -> str:
    """Readable lines: each failed expectation, what it means, how many rows, and a sample."""
    lines = []
    for f in failures:
        what = meanings.get(f["column"] or "", "")
        count = f["unexpected_count"] if f["unexpected_count"] is not None else f"observed {f['observed']}"
        lines.append(f"  {f['table']}: {f['expectation']}({f['column'] or ''}) failed: {count}"
                     f"{' offending rows' if f['unexpected_count'] is not None else ''}{f' - {what}' if what else ''}")
        lines.extend(f"    e.g. {json.dumps(row, default=str)[:300]}" for row in f["sample"])
    return "\n".join(lines)


def quarantine(staged: Path, registry_folder: Path, validation_root: Path) -> Path:
    """Move a refused candidate and its validation results out of the way, into `.quarantine/<time>`."""
    target = registry_folder / ".quarantine" / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
    target.mkdir(parents=True)
    with naming(target):
        shutil.move(str(staged), target / "candidate")
        shutil.copy(validation_root / "validation.json", target / "validation.json")
        docs = validation_root / "gx" / "uncommitted" / "data_docs" / "local_site"
        if docs.exists():
            shutil.copytree(docs, target / "data_docs")
    return target


def drift(previous: Manifest | None, rows: int, scores: dict[str, dict], limits: Any) -> list[str]:
    """Warnings where the row count or mean scores moved beyond the configured tolerances since `previous`."""
    if not previous:
        return []
    warnings = []
    before = previous.counts.rows
    if before and abs(rows - before) / before > limits.max_row_change:
        warnings.append(f"row count {before} -> {rows} changed by more than {limits.max_row_change:.0%}")
    for kind, stats in previous.scores:
        old, new = stats.mean, scores[kind].get("mean")
        if old is not None and new is not None and abs(new - old) > limits.max_score_shift:
            warnings.append(f"mean {kind} score {old:.4f} -> {new:.4f} shifted by more than {limits.max_score_shift}")
    return warnings
