"""A workdir on an object store (a real S3 API on loopback): workers that share nothing with the flow but the store,
workers killed while embedding and while searching, and a run killed part way that resumes from what the store
holds."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from negforge.tasks.storage.location import Location
from tests.conftest import DEMO, ROOT, beir_subset, dask_scheduler_and_workers, local_workers, run_cli, write_config

pytestmark = pytest.mark.slow
UNIQUE = 120  # small_config: 100 documents and 20 queries, all distinct texts


def _private_mounts() -> bool:
    """Whether this process may give a child its own mount namespace (root, or a user namespace allowed)."""
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def private_workers(prefect_server, s3):
    """`dask scheduler` and two `dask worker` processes, each worker in its own mount namespace with an empty
    temporary folder mounted over /tmp: every file of the flow's (its tests' folders, its mirror, its cache) is out
    of their sight. They reach the store through the environment, as users' workers do."""
    if not _private_mounts():
        pytest.skip("unshare --mount is not allowed here (needs root or user namespaces)")

    def private(command: list[str]) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"mount -t tmpfs tmpfs /tmp && exec {shlex.join(command)}"]

    with dask_scheduler_and_workers(private) as address:
        yield address


def _on_store(s3: str, data: Path) -> dict[str, str]:
    """A BEIR folder's inputs copied to the store: the workers read them from there."""
    Location.of(f"{s3}/input").upload(data)
    return {"input.corpus": f"{s3}/input/corpus.jsonl", "input.queries": f"{s3}/input/queries.jsonl",
            "input.qrels": f"{s3}/input/qrels/train.tsv"}


def _sets(values: dict[str, str]) -> list[str]:
    return [argument for key, value in values.items() for argument in ("--set", f"{key}={value}")]


def _manifest(url: str) -> dict:
    return json.loads(Location.of(f"{url}/manifest.json").read_text())


@pytest.fixture(scope="module")
def local_data_hash(tmp_path_factory, dask_address) -> str:
    """The data hash of a local build (workdir and registry in folders, the session's cluster) of what `small_config`
    holds: the tests below publish the same inputs from the store."""
    folder = tmp_path_factory.mktemp("local-build")
    config = write_config(folder / "build.yaml", beir_subset(DEMO, folder / "small", 20, 100),
                          dask_address=dask_address)
    version = run_cli("build", "--config", str(config)).stdout.strip().splitlines()[-1]
    return json.loads((Path(version) / "manifest.json").read_text())["data_hash"]


def test_workers_that_share_nothing_but_the_store_publish_what_a_local_build_does(small_config, s3, private_workers,
                                                                                   local_data_hash):
    from distributed import Client

    with Client(private_workers) as client:  # the workers cannot see the flow's files
        assert not any(client.run(os.path.exists, str(small_config)).values())
    on_store = {**_on_store(s3, small_config.parent / "small"), "runtime.workdir": f"{s3}/work",
                "publish.registry": f"{s3}/registry", "runtime.dask_address": private_workers}
    built = run_cli("build", "--config", str(small_config), *_sets(on_store))
    version = built.stdout.strip().splitlines()[-1]
    assert version == f"{s3}/registry/tiny/v0001"
    manifest = _manifest(version)
    assert manifest["run_dir"].startswith(f"{s3}/work/runs/")  # the run's files are on the store, named by URL
    work = Location.of(f"{s3}/work")
    assert any(name.startswith(manifest["run_dir"].rsplit("/", 1)[1]) for name in (work / "runs").children())
    assert any(path.endswith(".parquet") for path in (work / "embeddings").files())

    assert manifest["data_hash"] == local_data_hash

    # a remine of the store's version, its workspace on the store too
    remined = run_cli("remine", "--from", "tiny@v0001", "--registry", f"{s3}/registry", "--set",
                      f"runtime.workdir={s3}/work", "--set", "mine.strategy=fixed", "--set", "mine.relative_margin=0.1")
    assert remined.stdout.strip().splitlines()[-1] == f"{s3}/registry/tiny/v0002"


def _stored(workdir: str) -> int:
    """Vectors in the embedding store of a workdir on the store (parts of about 8 texts: runtime.shard_size)."""
    import polars as pl

    store = Location.of(f"{workdir}/embeddings")
    return sum(pl.read_parquet((store / path).read_bytes(), columns=["text_hash"]).height
               for path in store.files() if "/part-" in path)


def _build_until(config: Path, s3: str, name: str, ready: Callable[[str], bool]) -> tuple[subprocess.Popen, list[str]]:
    """Start a build on its own local cluster (its own process group) with workdir `s3/name` and registry
    `s3/name-registry`; return it and its settings once `ready(workdir)`."""
    settings = ["--set", f"runtime.workdir={s3}/{name}", "--set", f"publish.registry={s3}/{name}-registry",
                "--set", "runtime.dask_address=null", "--set", "runtime.shard_size=8",
                "--set", "runtime.tasks_per_worker=4"]
    process = subprocess.Popen([sys.executable, "-m", "negforge.flows.cli", "build", "--config", str(config),
                                *settings], cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not ready(f"{s3}/{name}"):
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the build did not get there within 300 s"
        time.sleep(0.2)
    return process, settings


def _vectors_written(workdir: str) -> bool:
    return any(path.endswith("/vectors/corpus.npy") for path in Location.of(f"{workdir}/runs").files())


def test_workers_killed_while_embedding_and_while_searching_on_the_store_lose_no_work(small_config, s3,
                                                                                      local_data_hash):
    import psutil

    # one build, two kills: a worker while the store fills, then one (its nanny starts a new worker each time) once the
    # vectors are on the store and the run searches
    process, _ = _build_until(small_config, s3, "work", lambda workdir: _stored(workdir) >= 16)
    local_workers(psutil.Process(process.pid).children(recursive=True))[0].send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 300
    while not _vectors_written(f"{s3}/work") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    for worker in local_workers(psutil.Process(process.pid).children(recursive=True))[:1]:
        worker.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    manifest = _manifest(out.strip().splitlines()[-1])
    assert manifest["embed"]["texts_embedded"] + manifest["embed"]["texts_cached"] == UNIQUE
    assert Location.of(f"{s3}/work-registry/tiny").children() == ["LATEST", "v0001"]
    assert manifest["data_hash"] == local_data_hash


def test_a_run_killed_part_way_resumes_from_what_the_store_holds(small_config, s3):
    process, settings = _build_until(small_config, s3, "resumed", lambda workdir: _stored(workdir) >= 16)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    stored_before = _stored(f"{s3}/resumed")
    assert 0 < stored_before < UNIQUE

    retried = _manifest(run_cli("build", "--config", str(small_config), *settings).stdout.strip().splitlines()[-1])
    assert retried["embed"] == {"texts_embedded": UNIQUE - stored_before, "texts_cached": stored_before,
                                "store_repaired": []}
    assert Location.of(f"{s3}/resumed-registry/tiny").children() == ["LATEST", "v0001"]
