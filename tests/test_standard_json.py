"""Every JSON file negforge writes is standard JSON: no NaN or Infinity, and a statistic of no values is null."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _refuse(constant: str) -> None:
    raise ValueError(f"not standard JSON: {constant}")


def _strict(path: Path) -> list:
    """Every JSON document of a .json or .jsonl file, parsed refusing NaN, Infinity and -Infinity."""
    text = path.read_text()
    lines = text.splitlines() if path.suffix == ".jsonl" else [text]
    return [json.loads(line, parse_constant=_refuse) for line in lines if line.strip()]


def test_a_build_without_negatives_writes_standard_json_with_nulls(config, tiny_beir, prefect_server):
    overrides = ["mine.strategy=fixed", "mine.max_score=-1", "validate.min_coverage=0", "validate.min_rows=0",  # none
                 f"audit.qrels={tiny_beir / 'qrels' / 'train.tsv'}"]
    done = run_cli("build", "--config", str(config), *[arg for o in overrides for arg in ("--set", o)])
    version = Path(done.stdout.strip().splitlines()[-1])
    manifest = _strict(version / "manifest.json")[0]
    assert manifest["reasons"].get("kept") is None and manifest["reasons"]["max_score"] > 0
    assert manifest["scores"]["negative"] == {"count": 0, "mean": None, "min": None, "median": None, "max": None}
    assert manifest["scores"]["positive"]["count"] > 0 and manifest["scores"]["positive"]["mean"] is not None
    assert manifest["audit"]["negatives"] == 0
    assert manifest["audit"]["false_negative_rate"] is None and manifest["audit"]["ci95"] is None
    assert set(manifest["audit"]["negative_score"].values()) == {None}
    written = [p for root in (config.parent / "registry", config.parent / "work") for p in root.rglob("*.json*")
               if "gx" not in p.relative_to(root).parts]  # Great Expectations' own project files are its own
    assert {p.name for p in written} >= {"manifest.json", "validation.json", "summary.json", "fingerprints.json",
                                         "meta.json", "flagembedding.jsonl"}
    for path in written:
        _strict(path)
