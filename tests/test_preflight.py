"""Preflight and permanent storage errors: a registry that is a file, a read-only registry, a workdir that cannot be
created, too little space, a disk that fills during publish. Each ends a build in one line with exit 2, naming the
path, before any embedding where it can be known in advance, and is never retried."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from negforge.flows.orchestration.preflight import store_shortfall
from negforge.schemas.manifest import Manifest
from negforge.tasks.registry.versions import Registry
from negforge.tasks.runtime.os_errors import describe, naming, permanent
from tests.conftest import ROOT, run_cli
from tests.test_registry import stage


@contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real small (or read-only) filesystem at `path`; skips where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder this process cannot write in: chmod where that stops writes (not as root), else a read-only tmpfs."""
    path.mkdir(parents=True)
    path.chmod(0o555)
    try:
        if os.access(path, os.W_OK):  # root: the mode bits do not stop writes
            with tmpfs(path, "1m", read_only=True):
                yield path
        else:
            yield path
    finally:
        path.chmod(0o755)


def _error_line(done: subprocess.CompletedProcess) -> str:
    """The one error line of a refused build (exit 2, no traceback, no retry)."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Retry" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("negforge: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def _refused(config: Path, *overrides: str) -> str:
    return _error_line(run_cli("build", "--config", str(config), *(f"--set={o}" for o in overrides), check=False))


@pytest.mark.slow
def test_unusable_registry_or_workdir_refused_before_any_work(small_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = _refused(small_config, f"publish.registry={blocker}")
    assert line == f"negforge: error: publish.registry: {blocker} is not a folder"
    line = _refused(small_config, f"runtime.workdir={blocker / 'work'}")
    assert line == f"negforge: error: runtime.workdir: {blocker} is not a folder"
    with read_only_folder(tmp_path / "read-only") as registry:
        line = _refused(small_config, f"publish.registry={registry}")
        assert line.startswith(f"negforge: error: publish.registry: cannot write in {registry}/tiny")
        assert not list(registry.iterdir())
    assert not (tmp_path / "work" / "runs").exists()  # refused before ingest


@pytest.mark.slow
def test_too_little_space_for_the_next_version_is_refused_with_the_figures(small_config, tmp_path):
    with tmpfs(tmp_path / "small-disk", "256k") as disk:
        registry = Registry(disk, "tiny")
        staged = stage(registry, "x" * 190)  # a previous version of 190,000 bytes on a 256 KiB disk
        registry.publish(staged, Manifest(parent=None), lambda m: "")
        size = sum(p.stat().st_size for p in (registry.folder / "v0001").rglob("*") if p.is_file())
        line = _refused(small_config, f"publish.registry={disk}")
        assert line.startswith(f"negforge: error: publish.registry {disk / 'tiny'}: ") and \
               f" KiB free, a new version (as large as v0001, the one before) needs about {size / 1024:.1f} KiB" in line


FILL_AT_PUBLISH = """
import sys
import time
import negforge.flows.stages.publishing as publishing
publishing.dataset_card = lambda manifest: "x" * (16 << 20)  # a README larger than the registry's disk
from negforge.flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_disk_full_during_publish_names_the_path_and_leaves_nothing(small_config, tmp_path):
    with tmpfs(tmp_path / "full-disk", "8m") as disk:
        done = subprocess.run([sys.executable, "-c", FILL_AT_PUBLISH, "build", "--config", str(small_config),
                               "--set", f"publish.registry={disk}"], cwd=ROOT, capture_output=True, text=True,
                              env=os.environ.copy(), timeout=600)
        line = _error_line(done)
        assert line.startswith(f"negforge: error: {disk / 'tiny' / '.staging-'}") and \
               line.endswith("/README.md: No space left on device"), line
        assert sorted(p.name for p in (disk / "tiny").iterdir()) == [".lock"]  # no version, no staging, no LATEST


@pytest.mark.slow
def test_a_registry_disk_that_fills_after_the_pipeline_names_the_path_and_keeps_the_versions_before(small_config,
                                                                                                   tmp_path):
    """The disk has room for a version as large as the one before (preflight passes), not for the larger one the
    build writes: it fails in its write phase, names the folder on the full disk, and leaves v0001 as it was."""
    with tmpfs(tmp_path / "registry-disk", "16m") as disk:
        first = run_cli("build", "--config", str(small_config), "--set", f"publish.registry={disk}").stdout
        registry = Registry(disk, "tiny")
        assert first.strip().splitlines()[-1] == str(registry.folder / "v0001")
        before = (registry.folder / "v0001" / "manifest.json").read_bytes()
        size = sum(p.stat().st_size for p in (registry.folder / "v0001").rglob("*") if p.is_file())
        filler = disk / "filler"  # beside the dataset folder: no entry of it
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - size - 64 * 1024))
        line = _refused(small_config, f"publish.registry={disk}", "mine.num_negatives=8")  # ~240 KB larger
        assert line.startswith(f"negforge: error: {registry.folder / '.staging-'}") and \
               line.endswith(": No space left on device"), line
        assert sorted(p.name for p in registry.folder.iterdir()) == [".lock", "LATEST", "v0001"]  # nothing staged
        assert registry.latest() == "v0001" and registry.problems("v0001", hashes=True) == []
        assert (registry.folder / "v0001" / "manifest.json").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("size", ["64k", "1m"], ids=["full-at-ingest", "full-at-input-validation"])
def test_a_workdir_disk_that_fills_is_named_and_not_retried(small_config, tmp_path, size):
    """polars (ingest) and Great Expectations (validation) report a full disk without a path, polars without an
    errno too: the build names the workdir, does not retry, and ends in one line."""
    with tmpfs(tmp_path / "work-disk", size) as disk:
        line = _refused(small_config, f"runtime.workdir={disk}")
        assert line == f"negforge: error: {disk}: No space left on device"
    assert not list((tmp_path / "registry" / "tiny").iterdir())  # created by preflight, nothing staged


def test_a_full_disk_reported_without_a_path_is_given_the_folder_being_written(tmp_path):
    """What libraries raise on a full disk or an exhausted quota: no path, and from polars or shutil.copytree no
    errno either. `naming` makes each a permanent error naming the folder; other errors pass unchanged."""
    target = tmp_path / "out"
    reported = [OSError(errno.ENOSPC, "No space left on device"), OSError("Disk quota exceeded (os error 122)"),
                shutil.Error([("a", str(target / "a"), "[Errno 28] No space left on device: 'a' -> 'b'")])]
    for error in reported:
        with pytest.raises(OSError) as named, naming(target):
            raise error
        assert named.value.filename == str(target) and permanent(named.value), error
        assert describe(named.value) in (f"{target}: No space left on device", f"{target}: Disk quota exceeded")
    for error in (OSError(errno.ENOSPC, "No space left on device", "/elsewhere/file"), ConnectionResetError(),
                  OSError("something else")):
        with pytest.raises(OSError) as passed, naming(target):
            raise error
        assert passed.value is error


def test_a_permanent_os_error_is_not_retried(tmp_path, prefect_server):
    from prefect import flow

    from negforge.flows.orchestration.task_options import negforge_task

    attempts = tmp_path / "attempts"
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    def write_under_a_file() -> None:
        with attempts.open("a") as handle:
            handle.write("x")
        (blocker / "out").write_text("never")

    @flow
    def one_task() -> None:
        negforge_task(write_under_a_file, "write", retried=True)()

    with pytest.raises(NotADirectoryError):
        one_task()
    assert attempts.read_text() == "x"


def test_the_embedding_store_estimate_warns_with_the_figures(tmp_path):
    assert store_shortfall(str(tmp_path), 10, 384) is None
    warning = store_shortfall(str(tmp_path), 10**13, 384)
    assert warning.startswith(f"runtime.workdir {tmp_path}: ") and "(10000000000000 texts x 384 dimensions" in warning


def test_an_unreachable_scheduler_or_too_small_budget_is_refused_before_any_work(tiny_beir, tmp_path):
    from tests.conftest import write_config

    config = write_config(tmp_path / "build.yaml", tiny_beir, dask_address="tcp://127.0.0.1:1")
    started = time.monotonic()
    line = _error_line(run_cli("build", "--config", str(config), check=False, timeout=120))
    assert time.monotonic() - started < 30  # Dask alone tried twice for 30 s
    assert line.startswith("negforge: error: runtime.dask_address 'tcp://127.0.0.1:1': no Dask scheduler answers "
                           "there (") and line.endswith("start one or unset runtime.dask_address"), line
    line = _refused(config, "runtime.dask_address=null", "runtime.memory_budget_mb=1")
    assert line == ("negforge: error: runtime.memory_budget_mb=1 cannot hold one block of 1024 vectors of dimension "
                    "384; the smallest that works is 6")
    assert not (tmp_path / "work").exists() and not (tmp_path / "registry").exists()  # nothing ingested or created
