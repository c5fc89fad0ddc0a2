"""The scaled data plane end to end: results independent of partitioning, a no-op rebuild that starts nothing,
approximate indexes measured by their probe, and settings refused before any work."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import local_workers, run_cli

pytestmark = pytest.mark.slow


def _version(done) -> str:
    return done.stdout.strip().splitlines()[-1]


def _manifest(version_dir: str) -> dict:
    return json.loads((Path(version_dir) / "manifest.json").read_text())


def test_data_does_not_depend_on_partitions_even_with_hub_cap_and_adaptive_depth(config, prefect_server):
    options = [a for o in ("mine.max_uses_per_negative=1", "mine.max_depth=160", "mine.relative_margin=0.2",
                           "mine.num_negatives=5", "mine.range_max=6",
                           "mine.strategy=fixed", "validate.min_coverage=0") for a in ("--set", o)]
    one = _version(run_cli("build", "--config", str(config), *options, "--set", "runtime.tasks_per_worker=1",
                           "--set", "runtime.n_workers=1", "--set", "runtime.dask_address=null"))
    many = _version(run_cli("build", "--config", str(config), *options, "--set", "runtime.tasks_per_worker=9",
                            "--set", f"publish.registry={config.parent / 'many'}"))  # the session's two workers
    first, second = _manifest(one), _manifest(many)
    assert first["task_runs"]["search_and_mine"] == 1 and second["task_runs"]["search_and_mine"] == 18
    assert first["adaptive_depth"]["queries_deepened"] > 0  # the options exercise deepening ...
    assert first["reasons"].get("over_used", 0) > 0  # ... and the global hub cap
    assert first["data_hash"] == second["data_hash"]
    assert first["adaptive_depth"] == second["adaptive_depth"]


def test_an_unchanged_rebuild_answers_up_to_date_before_starting_anything(config, tiny_beir, prefect_server):
    first = _version(run_cli("build", "--config", str(config)))
    runs = sorted((config.parent / "work" / "runs").iterdir())
    started = time.monotonic()
    again = run_cli("build", "--config", str(config))
    assert again.stdout.strip().splitlines()[-2:] == ["up to date", first]
    assert sorted((config.parent / "work" / "runs").iterdir()) == runs  # no run workspace: nothing ran
    assert "Flow run" not in again.stderr and "Task run" not in again.stderr  # no flow run at all
    assert time.monotonic() - started < 30

    from negforge.flows.build import build_training_set
    from negforge.schemas.config import load_config

    served = build_training_set(load_config(config))  # as a served or triggered run does: one quick flow run
    assert served.published is False and served.version_dir == first
    assert sorted((config.parent / "work" / "runs").iterdir()) == runs

    (tiny_beir / "queries.jsonl").write_text((tiny_beir / "queries.jsonl").read_text().replace("a", "A", 1))
    changed = run_cli("build", "--config", str(config))
    assert len(sorted((config.parent / "work" / "runs").iterdir())) == len(runs) + 1  # inputs changed: it ran
    assert _version(changed).startswith(str(Path(first).parent))


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_are_probed_and_tuned_to_the_target_recall(config, prefect_server, index):
    done = run_cli("build", "--config", str(config), "--set", f"search.index={index}", "--set", "search.nlist=4",
                   "--set", "search.probe_queries=40", "--set", "search.target_recall=0.95")
    probe = _manifest(_version(done))["search"]["probe"]
    assert probe["kind"] == index and probe["queries"] == 40
    assert probe["met_target"] and probe["recall"] >= 0.95
    assert 0 <= probe["negatives_changed"] <= 1


@pytest.mark.parametrize(("setting", "message"), [
    ("search.nlist=64", "search.nlist <= 5"),
    ("runtime.memory_budget_mb=1", "the smallest that works is 6"),
])
def test_settings_that_cannot_work_are_refused_before_embedding(config, prefect_server, setting, message):
    extra = ["--set", "search.index=ivf"] if setting.startswith("search") else []
    done = run_cli("build", "--config", str(config), "--set", setting, *extra, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and setting.split("=")[0] in done.stderr
    assert not (config.parent / "work" / "embeddings").exists() or not any(
        (config.parent / "work" / "embeddings").rglob("*.parquet"))


def test_a_worker_killed_during_search_reruns_its_partition_and_publishes_once(small_config, prefect_server):
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from tests.conftest import ROOT

    expected = _manifest(_version(run_cli("build", "--config", str(small_config), "--set",
                                          f"publish.registry={small_config.parent / 'reference'}")))
    earlier = set((small_config.parent / "work" / "runs").iterdir())
    process = subprocess.Popen([sys.executable, "-m", "negforge.flows.cli", "build", "--config", str(small_config),
                                "--set", "runtime.dask_address=null", "--set", "runtime.tasks_per_worker=4"],
                               cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not [p for p in (small_config.parent / "work" / "runs").glob("*/progress/search/*.json")
               if p.parent.parent.parent not in earlier]:
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "search did not start within 300 s"
        time.sleep(0.05)
    workers = local_workers(psutil.Process(process.pid).children(recursive=True))
    workers[0].send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    version = out.strip().splitlines()[-1]
    manifest = _manifest(version)
    assert [p.name for p in Path(version).parent.glob("v*")] == ["v0001"]
    assert manifest["data_hash"] == expected["data_hash"] and manifest["reasons"] == expected["reasons"]
