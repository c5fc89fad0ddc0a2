"""Runs on a Dask cluster that is already running, runs that lose a worker or the whole process part way, and a
local cluster that does not close in time."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import psutil
import pytest

from tests.conftest import ROOT, dask_scheduler_and_workers, local_workers, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def scheduler(prefect_server):
    """`dask scheduler` and two `dask worker` processes on loopback (workers get the Prefect API URL)."""
    with dask_scheduler_and_workers() as address:
        yield address


def test_a_running_scheduler_does_the_work(small_config, scheduler):
    from distributed import Client

    version = run_cli("build", "--config", str(small_config), "--set", f"runtime.dask_address={scheduler}").stdout
    manifest = json.loads((Path(version.strip().splitlines()[-1]) / "manifest.json").read_text())
    assert manifest["config"]["runtime"]["dask_address"] == scheduler and manifest["counts"]["rows"] > 0
    with Client(scheduler) as client:
        ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        workers = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.workers))
    assert any(name.startswith("embed") for name in ran) and any(name.startswith("search") for name in ran)
    assert workers == 2
    local = run_cli("build", "--config", str(small_config), "--set",
                    f"publish.registry={small_config.parent / 'local'}").stdout  # the session's local cluster
    assert json.loads((Path(local.strip().splitlines()[-1]) / "manifest.json").read_text())["data_hash"] == \
        manifest["data_hash"]


def _stored(workdir: Path) -> int:
    return sum(pl.read_parquet(p, columns=["text_hash"]).height
               for p in (workdir / "embeddings").glob("*/part-*.parquet"))


def _build_until(config: Path, workdir: Path, stored_at_least: int) -> subprocess.Popen:
    """Start a build on its own local cluster (its own process group, so killing it leaves nothing running) and
    return once the store holds `stored_at_least` vectors."""
    process = subprocess.Popen([sys.executable, "-m", "negforge.flows.cli", "build", "--config", str(config),
                                "--set", "runtime.shard_size=8", "--set", "runtime.dask_address=null"], cwd=ROOT, env=os.environ.copy(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while _stored(workdir) < stored_at_least:
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "embedding did not start within 300 s"
        time.sleep(0.1)
    return process


def _version(stdout: str) -> Path:
    return Path(stdout.strip().splitlines()[-1])


def test_a_killed_worker_loses_no_work_and_a_killed_run_resumes(small_config):
    workdir = small_config.parent / "work"
    unique = 120  # small_config: 100 documents and 20 queries, all distinct texts

    # a Dask worker process dies part way: its shard runs again elsewhere (taking from the store what the dead worker
    # had stored before dying), and the run publishes once
    process = _build_until(small_config, workdir, 16)
    workers = local_workers(psutil.Process(process.pid).children(recursive=True))
    workers[0].send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    # the run adopted the cluster the CLI started before it began, and killing its workers at the end (a killed
    # worker's named semaphores would be reported at exit) left nothing behind
    assert "Connecting to existing Dask cluster" in err and "leaked semaphore" not in err, err[-3000:]
    manifest = json.loads((_version(out) / "manifest.json").read_text())
    embedded, cached = manifest["embed"]["texts_embedded"], manifest["embed"]["texts_cached"]
    assert embedded + cached == unique and cached <= 8 and _stored(workdir) == unique  # at most the dead one's shard
    assert [p.name for p in _version(out).parent.glob("v*")] == ["v0001"]

    # the whole run dies part way (workers, flow and all): a retry embeds only what was not stored, publishes once
    other = small_config.parent / "resumed"
    process = _build_until(other_config := _with_workdir(small_config, other), other, 16)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    stored_before = _stored(other)
    assert 0 < stored_before < unique
    retried = json.loads((_version(run_cli("build", "--config", str(other_config)).stdout) /
                          "manifest.json").read_text())
    assert retried["embed"] == {"texts_embedded": unique - stored_before, "texts_cached": stored_before,
                                "store_repaired": []}
    assert [p.name for p in (other / "registry" / "tiny").glob("v*")] == ["v0001"]

    # the same inputs give the same data whatever happened to the runs: a clean build publishes the same data hash
    clean_config = _with_workdir(small_config, small_config.parent / "clean")
    clean = json.loads((_version(run_cli("build", "--config", str(clean_config)).stdout) / "manifest.json").read_text())
    assert clean["data_hash"] == manifest["data_hash"] == retried["data_hash"]


def _with_workdir(config: Path, folder: Path) -> Path:
    """The same build config with its workdir and registry in `folder`."""
    path = folder.with_suffix(".yaml")
    path.write_text(config.read_text().replace("registry: registry", f"registry: {folder / 'registry'}")
                    .replace("workdir: work", f"workdir: {folder}"))
    return path


CLOSE_TIMES_OUT = """
import sys

import distributed.nanny

kill = distributed.nanny.WorkerProcess.kill


async def kill_then_time_out(self, *args, **kwargs):
    await kill(self, *args, **kwargs)
    raise TimeoutError()  # what Dask raises when it has not joined a killed worker in time (on a loaded machine)


distributed.nanny.WorkerProcess.kill = kill_then_time_out
from negforge.flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_local_cluster_that_does_not_close_in_time_fails_no_finished_build(small_config):
    """The run's own cluster (started early by the CLI, adopted by the run) times out closing its workers after the
    build published: one warning line, and the build still prints its version and exits 0."""
    done = subprocess.run([sys.executable, "-c", CLOSE_TIMES_OUT, "build", "--config", str(small_config),
                           "--set", "runtime.dask_address=null"], cwd=ROOT, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _version(done.stdout) == small_config.parent / "registry" / "tiny" / "v0001"
    assert [line.split(" - ", 1)[1] for line in done.stderr.splitlines() if "did not close" in line] == [
        "the run's local Dask cluster did not close cleanly (TimeoutError()); the run's outcome stands"]


def test_closing_a_cluster_is_bounded_and_at_most_a_warning(monkeypatch, caplog):
    from negforge.flows.orchestration import dask_cluster as task_runner

    monkeypatch.setattr(task_runner, "CLOSE_TIMEOUT_S", 0.5)
    blocked = threading.Event()

    def times_out() -> None:
        raise TimeoutError()

    with caplog.at_level(logging.WARNING, logger=task_runner.__name__):
        assert task_runner.close_bounded("the cluster", lambda: None)
        assert task_runner.close_bounded("the cluster", times_out)
        started = time.monotonic()
        assert not task_runner.close_bounded("the cluster", blocked.wait)  # a close that never returns
        took = time.monotonic() - started
    blocked.set()
    assert 0.5 <= took < 5
    assert [record.getMessage() for record in caplog.records] == [
        "the cluster did not close cleanly (TimeoutError()); the run's outcome stands",
        "the cluster did not close within 0.5 s; left to stop with this process"]
