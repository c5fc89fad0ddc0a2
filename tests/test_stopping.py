"""Stopping a CLI build: SIGINT (Ctrl-C) or SIGTERM, to the process or to its whole process group, ends it within
10 s with one line and exit code 128 + the signal, stops the local Prefect API server and Dask cluster it started
(no process of its tree is left), and publishes or stages nothing; stopped while it writes its version, it leaves
no staging folder, and stopped after publishing, it says which version it published. A build killed outright leaves
no process either."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable, Iterator

import psutil
import pytest

from tests.conftest import DEMO, ROOT, beir_subset, local_workers, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    """One Prefect home for these builds' own temporary API servers (its database is migrated once)."""
    return tmp_path_factory.mktemp("prefect-home")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll `condition` until it holds; return the seconds it took, or fail naming `what`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what} not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def embedding(tmp_path, prefect_home) -> Iterator[tuple[subprocess.Popen, list[psutil.Process], IO[str]]]:
    """A CLI build of the demo data with its own temporary API server and local cluster, in its own process group,
    once embedding is under way (an embedding task has reported progress): the process, its whole process tree then,
    its stderr."""
    config = write_config(tmp_path / "build.yaml", DEMO, dataset="stopped")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(prefect_home)}
    with (tmp_path / "stderr.txt").open("w+") as stderr:
        cli = subprocess.Popen([sys.executable, "-m", "negforge.flows.cli", "build", "--config", str(config)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        tree = [psutil.Process(cli.pid)]
        try:
            runs = tmp_path / "work" / "runs"
            _wait(lambda: list(runs.glob("*/embed/progress/embed-*.json")) or cli.poll() is not None, 600, "embedding")
            assert cli.poll() is None, "the build ended before embedding was under way"
            tree += psutil.Process(cli.pid).children(recursive=True)
            commands = [" ".join(p.cmdline()) for p in tree]
            assert any("uvicorn" in c for c in commands) and len(local_workers(tree)) >= 2, commands
            yield cli, tree, stderr
        finally:
            for process in tree:  # leave no process of the test behind
                if _alive(process):
                    process.kill()


# Both signals and both ways of sending them, in two builds (one handler serves both signals): Ctrl-C to the
# process, and SIGTERM to the group as a service manager sends it.
@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["SIGINT", "SIGTERM-to-group"])
def test_a_signal_during_embedding_stops_the_build_and_everything_it_started(embedding, tmp_path, signum, to_group):
    cli, tree, stderr = embedding
    if to_group:
        os.killpg(cli.pid, signum)
    else:
        cli.send_signal(signum)
    took = _wait(lambda: not any(_alive(p) for p in tree), 10, "the whole process tree gone")
    assert cli.wait() == 128 + signum, took
    stderr.seek(0)
    err = stderr.read()
    assert "Traceback" not in err
    assert "Restarting worker" not in err  # the workers' server is outside the group: no worker died of the signal
    assert [line for line in err.splitlines() if line.startswith("negforge:")] == \
        [f"negforge: stopped by {signal.Signals(signum).name}; nothing was published"]
    dataset = tmp_path / "registry" / "stopped"
    assert not list(dataset.glob("v*")) and not list(dataset.glob(".staging-*")) and not (dataset / "LATEST").exists()


STOP_AFTER = """
import sys
import time
from pathlib import Path

import negforge.flows.stages.publishing as publishing  # the publishing tail's steps

marker, step_name = Path(sys.argv.pop(1)), sys.argv.pop(1)
step = getattr(publishing, step_name)


def then_wait(*args, **kwargs):
    done = step(*args, **kwargs)
    marker.touch()  # the build is past `step`: the test sends its signal now
    time.sleep(600)
    return done


setattr(publishing, step_name, then_wait)
from negforge.flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


# A stop while the version is written (its staging folder holds data) removes the staging folder; one after the
# version was published (while the run reports it, or evaluates it) says which version stays.
@pytest.mark.parametrize("step, published", [("save_candidates", False), ("publish_artifacts", True)],
                         ids=["while-writing", "after-publishing"])
def test_a_stop_at_the_end_of_a_build_leaves_no_staging_folder_and_says_what_was_published(tmp_path, prefect_home,
                                                                                             step, published):
    config = write_config(tmp_path / "build.yaml", beir_subset(DEMO, tmp_path / "small", 20, 100))
    marker, dataset = tmp_path / "past-the-step", tmp_path / "registry" / "tiny"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(prefect_home)}
    with (tmp_path / "stderr.txt").open("w+") as stderr:
        cli = subprocess.Popen([sys.executable, "-c", STOP_AFTER, str(marker), step, "build", "--config", str(config)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            _wait(lambda: marker.exists() or cli.poll() is not None, 600, f"the build past {step}")
            assert cli.poll() is None, "the build ended before the step"
            staged = list(dataset.glob(".staging-*"))
            assert published or (len(staged) == 1 and list((staged[0] / "data").iterdir())), staged
            cli.send_signal(signal.SIGINT)
            assert cli.wait(timeout=60) == 128 + signal.SIGINT
        finally:
            if cli.poll() is None:
                os.killpg(cli.pid, signal.SIGKILL)
        stderr.seek(0)
        err = stderr.read()
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("negforge:")] == [
        "negforge: stopped by SIGINT; " + (f"published before the stop: {dataset / 'v0001'}" if published
                                           else "nothing was published")]
    assert not list(dataset.glob(".staging-*"))
    assert sorted(p.name for p in dataset.glob("v*")) == (["v0001"] if published else [])
    assert (dataset / "LATEST").exists() == published


def test_a_build_killed_outright_leaves_no_process(embedding):
    cli, tree, _ = embedding
    cli.kill()  # SIGKILL to the build alone: its server and the workers' forkserver stop by themselves
    _wait(lambda: not any(_alive(p) for p in tree), 10, "the whole process tree gone")


def test_a_stop_that_pydantic_reports_as_a_serialization_error_still_stops_the_run(monkeypatch, capsys):
    """A stop raised inside pydantic-core's serializer (Prefect's TerminationSignal for SIGTERM, this CLI's Stopped
    for SIGINT) arrives as a PydanticSerializationError: the CLI still ends with the stop line and 128 + the signal,
    while any other error stays an error."""
    import argparse

    from pydantic_core import PydanticSerializationError

    from negforge.flows.cli import _run_flow

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # configured: no local server is started

    def failing(error: Exception) -> Callable[[], Callable[[], dict]]:
        def run() -> dict:
            raise error
        return lambda: run

    args = argparse.Namespace(debug=True)
    disguised = PydanticSerializationError("Error calling function `_ser_model`: TerminationSignal: ")
    assert _run_flow(args, "ds", failing(disguised)) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; nothing was published" in capsys.readouterr().err

    def interrupted() -> dict:  # Ctrl-C: this CLI's own handler raises Stopped, which pydantic-core wraps
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as stop:
            raise PydanticSerializationError(f"Error calling function `_ser_model`: Stopped: {stop}") from None
        return {}
    assert _run_flow(args, "ds", lambda: interrupted) == 128 + signal.SIGINT
    assert "stopped by SIGINT; nothing was published" in capsys.readouterr().err
    with pytest.raises(PydanticSerializationError):
        _run_flow(args, "ds", failing(PydanticSerializationError("Error calling function `x`: ValueError: y")))
