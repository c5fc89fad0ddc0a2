"""Re-mining from the candidates stored in a version: exact when unchanged, equal to a full build when changed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _manifest(version_dir: str) -> dict:
    return json.loads((Path(version_dir) / "manifest.json").read_text())


def test_remine_reproduces_and_matches_full_builds(config, prefect_server):
    first = run_cli("build", "--config", str(config)).stdout.strip().splitlines()[-1]
    registry = str(Path(first).parent.parent)

    unchanged = run_cli("remine", "--from", "tiny@v0001", "--registry", registry).stdout.strip().splitlines()
    assert unchanged[-2:] == ["up to date", first]  # same options: byte-identical data

    remined = run_cli("remine", "--from", "tiny@v0001", "--registry", registry,
                      "--set", "mine.num_negatives=2", "--set", "mine.relative_margin=0.02").stdout.strip()
    remined_dir = remined.splitlines()[-1]
    manifest = _manifest(remined_dir)
    assert Path(remined_dir).name == "v0002"
    assert manifest["parent"] == "v0001" and manifest["remined_from"] == "tiny@v0001"
    assert manifest["embed"] == {"texts_embedded": 0, "texts_cached": 0}
    assert manifest["adaptive_depth"]["needs_deeper"] == 0
    assert "search" not in manifest["timings"] and "embed" not in manifest["timings"]

    full = run_cli("build", "--config", str(config), "--set", f"publish.registry={config.parent / 'other'}",
                   "--set", "mine.num_negatives=2", "--set", "mine.relative_margin=0.02").stdout.strip()
    assert _manifest(full.splitlines()[-1])["data_hash"] == manifest["data_hash"]


def test_remine_refuses_what_the_stored_candidates_cannot_serve(config, prefect_server):
    first = run_cli("build", "--config", str(config)).stdout.strip().splitlines()[-1]
    registry = str(Path(first).parent.parent)
    deeper = run_cli("remine", "--from", "tiny@v0001", "--registry", registry, "--set", "mine.range_max=500",
                     check=False)
    assert deeper.returncode == 2 and "need the top 502 candidates per query" in deeper.stderr
    model = run_cli("remine", "--from", "tiny@v0001", "--registry", registry, "--set", "embed.batch_size=4",
                    check=False)
    assert model.returncode == 2 and "so embed.batch_size cannot change" in model.stderr
    assert len(model.stderr.strip().splitlines()) == 1  # refused before a run starts: no Prefect lines
    missing = run_cli("remine", "--from", "tiny@v0009", "--registry", registry, check=False)
    assert missing.returncode == 2 and "no version v0009" in missing.stderr
    started = time.monotonic()
    unreachable = run_cli("remine", "--from", "tiny@v0001", "--registry", registry, "--set", "mine.num_negatives=2",
                          "--set", "runtime.dask_address=tcp://127.0.0.1:1", check=False, timeout=120)
    assert time.monotonic() - started < 30  # the 5 s probe, not Dask's two 30 s attempts
    lines = unreachable.stderr.strip().splitlines()  # refused before a run starts: one line, no Prefect lines
    assert unreachable.returncode == 2 and len(lines) == 1, unreachable.stderr[-3000:]
    assert lines[0].startswith("negforge: error: runtime.dask_address 'tcp://127.0.0.1:1': no Dask scheduler answers "
                               "there (") and lines[0].endswith("start one or unset runtime.dask_address"), lines
    assert sorted(p.name for p in (Path(registry) / "tiny").glob("v*")) == ["v0001"]
