"""A registry on an object store (a real S3 API on loopback): conditional writes, versions claimed and committed,
concurrent and killed publishers, LATEST by compare-and-swap, and the refusals before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from negforge.schemas.manifest import Manifest
from negforge.tasks.registry.object_versions import CLAIM, COMMITTED
from negforge.tasks.registry.registries import datasets, open_registry
from negforge.tasks.storage.location import Location, StoreError, check_conditional_writes
from tests.conftest import ROOT


def _stage(registry, content: str) -> Path:
    staged = registry.staging()
    for folder in ("data", "ids"):
        (staged / folder).mkdir()
        (staged / folder / "train-00000.parquet").write_text(f"{folder} {content}")
    return staged


def _publish(registry, content: str):
    return registry.publish(_stage(registry, content), Manifest(dataset=registry.dataset), lambda m: f"# {m.version}")


@pytest.mark.parametrize("where", ["s3", "local"])
def test_conditional_writes(where, s3, tmp_path):
    location = Location.of(f"{s3}/x/LATEST" if where == "s3" else tmp_path / "x" / "LATEST")
    assert location.create(b"v0001\n") and not location.create(b"v0002\n")
    data, tag = location.tagged()
    assert data == b"v0001\n"
    assert location.swap(b"v0002\n", tag)
    assert not location.swap(b"v0003\n", tag)  # someone moved it since the tag was read
    assert location.read_bytes() == b"v0002\n"
    assert not (location.parent / "absent").swap(b"x", "some-tag") if where == "local" else True


def test_versions_are_committed_numbered_and_deduplicated(s3):
    registry = open_registry(f"{s3}/registry", "ds")
    assert registry.versions() == [] and registry.latest() is None
    first, new = _publish(registry, "a")
    assert (first.name, new) == ("v0001", True)
    assert _publish(registry, "a") == (first, False)  # same data: up to date, nothing published
    second, _ = _publish(registry, "b")
    assert registry.versions() == ["v0001", "v0002"] and registry.latest() == "v0002"
    assert registry.manifest("v0002").parent == "v0001" and registry.problems("v0002", hashes=True) == []
    (second / "data" / "train-00000.parquet").write_bytes(b"data c")  # same size, other content
    assert registry.problems("v0002", hashes=True) == ["data/train-00000.parquet: sha256 differs from the manifest's"]
    registry.rollback("v0001")
    assert registry.latest() == "v0001"
    assert [d.dataset for d in datasets(f"{s3}/registry")] == ["ds"]
    local = registry.local_copy("v0001")
    assert (local / "data" / "train-00000.parquet").read_text() == "data a"


def _claimed_by(registry, version: str, pid: int) -> dict:
    """An uncommitted version, half uploaded, claimed by process `pid` of this host."""
    claim = {"owner": "x", "host": os.uname().nodename, "pid": pid, "heartbeat": time.time()}
    (registry.folder / version / CLAIM).create(json.dumps(claim).encode())
    (registry.folder / version / "data" / "train-00000.parquet").write_bytes(b"half")
    return claim


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_an_uncommitted_version_is_absent_and_gc_removes_it_once_its_publisher_is_gone(s3):
    registry = open_registry(f"{s3}/registry", "ds")
    _publish(registry, "a")
    claim = _claimed_by(registry, "v0002", _dead_pid())
    assert registry.versions() == ["v0001"] and registry.latest() == "v0001"
    live = {**claim, "pid": os.getpid()}
    (registry.folder / "v0003" / CLAIM).create(json.dumps(live).encode())
    assert [p.name for p in registry.remove_abandoned()] == ["v0002"]  # v0003's publisher (this process) lives
    assert not (registry.folder / "v0002").exists() and (registry.folder / "v0003" / CLAIM).exists()
    assert _publish(registry, "b")[0].name == "v0004"  # v0003 stays claimed while its owner lives


PUBLISHER = """
import sys, time
from pathlib import Path
from negforge.schemas.manifest import Manifest
from negforge.tasks.registry.registries import open_registry

registry = open_registry(sys.argv[1], "ds")
staged = registry.staging()
for folder in ("data", "ids"):
    (staged / folder).mkdir()
    (staged / folder / "train-00000.parquet").write_text(f"{folder} {sys.argv[2]}")
Path(sys.argv[3]).touch()
while not Path(sys.argv[4]).exists():  # start together
    time.sleep(0.01)
def card(manifest):
    if sys.argv[2] == "hang":
        Path(sys.argv[3] + ".claimed").touch()
        time.sleep(600)
    return "# card"
print(registry.publish(staged, Manifest(dataset="ds"), card)[0].name)
"""


def _publishers(s3: str, tmp_path: Path, contents: list[str]) -> list[subprocess.Popen]:
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", PUBLISHER, f"{s3}/registry", content,
                                   str(tmp_path / f"ready-{content}"), str(go)], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for content in contents]
    while not all((tmp_path / f"ready-{content}").exists() for content in contents):
        time.sleep(0.05)
    go.touch()
    return processes


def test_two_concurrent_publishers_give_two_whole_versions(s3, tmp_path):
    processes = _publishers(s3, tmp_path, ["a", "b"])
    names = sorted(p.communicate(timeout=120)[0].strip() for p in processes)
    assert names == ["v0001", "v0002"], [p.stderr for p in processes]
    registry = open_registry(f"{s3}/registry", "ds")
    assert registry.versions() == ["v0001", "v0002"] and registry.latest() == "v0002"
    contents = {(registry.folder / v / "data" / "train-00000.parquet").read_text() for v in names}
    assert contents == {"data a", "data b"}
    assert all(registry.problems(v, hashes=True) == [] for v in names)


def test_a_killed_publisher_leaves_nothing_visible(s3, tmp_path):
    registry = open_registry(f"{s3}/registry", "ds")
    _publish(registry, "a")
    (hanging,) = _publishers(s3, tmp_path, ["hang"])
    while not (tmp_path / "ready-hang.claimed").exists():
        time.sleep(0.05)
    hanging.send_signal(signal.SIGKILL)
    hanging.wait(timeout=30)
    assert (registry.folder / "v0002" / CLAIM).exists() and not (registry.folder / "v0002" / COMMITTED).exists()
    assert registry.versions() == ["v0001"] and registry.latest() == "v0001"
    assert [p.name for p in registry.remove_abandoned()] == ["v0002"]
    assert _publish(registry, "b")[0].name == "v0002"


def test_stores_that_cannot_hold_versions_are_refused(s3, tmp_path):
    check_conditional_writes(Location.of(f"{s3}/registry"), "publish.registry")  # this one can
    with pytest.raises(StoreError, match=r"^publish.registry s3://no-such-bucket-x/r: no such bucket"):
        check_conditional_writes(Location.of("s3://no-such-bucket-x/r"), "publish.registry")
    with pytest.raises(StoreError, match=r"memory://r: negforge cannot write conditionally to memory:// stores"):
        check_conditional_writes(Location.of("memory://r"), "publish.registry")
    assert Location.of(f"{s3}/registry").children() == []  # the probe is gone


@pytest.mark.slow
def test_build_evaluate_remine_and_versions_commands_on_an_object_store(config, s3, prefect_server, monkeypatch,
                                                                        tmp_path, capsys):
    import datasets
    from datasets import load_dataset

    from tests.conftest import run_cli
    from tests.test_evaluate import TINY, eval_subset

    registry_url = f"{s3}/registry"
    built = run_cli("build", "--config", str(config), "--set", f"publish.registry={registry_url}")
    assert built.stdout.strip().splitlines()[-1] == f"{registry_url}/tiny/v0001"
    evaluated = run_cli("evaluate", "tiny@v0001", "--eval", str(eval_subset(tmp_path / "eval")), "--registry",
                        registry_url, *TINY)
    record = evaluated.stdout.strip().splitlines()[-1]
    assert record.startswith(f"{registry_url}/tiny/evaluations/v0001-") and Location.of(record).exists()
    remined = run_cli("remine", "--from", "tiny@v0001", "--registry", registry_url, "--set", "mine.strategy=fixed",
                      "--set", "mine.relative_margin=0.1")
    assert remined.stdout.strip().splitlines()[-1] == f"{registry_url}/tiny/v0002"
    registry = open_registry(registry_url, "tiny")
    assert registry.versions() == ["v0001", "v0002"] and registry.latest() == "v0002"
    assert registry.manifest("v0002").parent == "v0001" and "storage" not in registry.manifest("v0001").config

    from negforge.flows.cli import main

    def versions(*arguments: str) -> str:  # in this process: a subprocess per command would cost seconds each
        assert main(["versions", *arguments, "--registry", registry_url]) == 0
        return capsys.readouterr().out

    capsys.readouterr()
    listing = versions("list", "tiny").splitlines()
    assert listing[0].startswith("v0001") and listing[1].startswith("v0002") and listing[1].endswith("LATEST")
    shown = versions("show", "tiny", "v0001")
    assert f"folder: {registry_url}/tiny/v0001" in shown and "evaluation " in shown
    assert versions("verify", "tiny@v0002").strip() == "tiny v0002  ok"
    assert "negatives changed in" in versions("diff", "tiny", "v0001", "v0002")
    versions("rollback", "tiny", "v0001")
    assert registry.latest() == "v0001"

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # the tests' offline switch also bars s3:// URLs
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}}
    remote = load_dataset("parquet", data_files=f"{registry_url}/tiny/v0001/data/*.parquet", storage_options=options,
                          split="train")
    local = load_dataset(str(registry.local_copy("v0001")), split="train")
    assert remote.num_rows == local.num_rows > 0 and remote.to_list() == local.to_list()


@pytest.mark.parametrize("setting", ["publish.registry", "runtime.workdir"])
def test_a_build_to_a_missing_bucket_is_refused_before_any_work(config, s3, setting):
    from tests.conftest import run_cli

    done = run_cli("build", "--config", str(config), "--set", f"{setting}=s3://no-such-bucket-y/place", check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"negforge: error: {setting} s3://no-such-bucket-y/place: no such bucket or container"], done.stderr


def test_gc_reaches_the_store_with_the_configs_storage_options(s3, s3_server, tmp_path, monkeypatch, capsys):
    from negforge.flows.cli import main

    registry = open_registry(f"{s3}/registry", "ds")
    _publish(registry, "a")
    _claimed_by(registry, "v0002", _dead_pid())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)  # only the config says where the store is and how to sign in
    config = tmp_path / "gc.yaml"
    config.write_text(f"""publish: {{registry: "{s3}/registry"}}
runtime: {{workdir: "{tmp_path / 'work'}"}}
storage: {{key: testing, secret: testing, client_kwargs: {{endpoint_url: "{s3_server}"}}}}
""")
    assert main(["gc", "--config", str(config)]) == 0
    assert "removed 1 staging folders of builds that are gone" in capsys.readouterr().out
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert not (registry.folder / "v0002").exists() and registry.versions() == ["v0001"]
