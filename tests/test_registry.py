"""The registry with real processes: versions, LATEST, up-to-date, rollback, concurrent and killed publishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from negforge.tasks.registry import Registry
from tests.conftest import ROOT, run_cli

PUBLISHER = """
import json, sys, time
from pathlib import Path
from negforge.tasks.registry import Registry
root, content, start_at, hang = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "hang"
registry = Registry(root, "ds")
staged = registry.staging()
(staged / "data").mkdir()
(staged / "data" / "train-00000-of-00001.parquet").write_text(content * 1000)
(staged / "ids").mkdir()
while time.time() < start_at:
    time.sleep(0.001)
def finish(folder, version, parent, digest):
    (folder / "manifest.json").write_text(json.dumps({"version": version, "parent": parent, "data_hash": digest,
                                                      "content": content}))
    if hang:
        Path(root, "hanging").write_text(version)
        time.sleep(600)
path, new = registry.publish(staged, finish)
print(path.name, new)
"""


def _publisher(root: Path, content: str, start_at: float, hang: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, str(root), content, str(start_at),
                             "hang" if hang else "go"], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _publish(root: Path, content: str) -> str:
    process = _publisher(root, content, 0)
    out, _ = process.communicate(timeout=60)
    return out.strip()


def _whole(registry: Registry) -> None:
    """Every visible version has its manifest and its data."""
    for version in registry.versions():
        manifest = registry.manifest(version)
        assert manifest["version"] == version
        data = (registry.folder / version / "data" / "train-00000-of-00001.parquet").read_text()
        assert data == manifest["content"] * 1000


def test_versions_take_max_plus_one_and_latest_follows_also_after_a_rollback(tmp_path):
    registry = Registry(tmp_path, "ds")
    assert _publish(tmp_path, "a") == "v0001 True"
    assert _publish(tmp_path, "a") == "v0001 False"  # same content: up to date
    assert _publish(tmp_path, "b") == "v0002 True"
    assert registry.manifest("v0002")["parent"] == "v0001"
    registry.rollback("v0001")
    assert registry.latest() == "v0001" and registry.versions() == ["v0001", "v0002"]
    assert _publish(tmp_path, "c") == "v0003 True"
    assert registry.latest() == "v0003" and registry.manifest("v0003")["parent"] == "v0001"
    with pytest.raises(KeyError, match="no version v0009"):
        registry.rollback("v0009")


def test_concurrent_publishes_of_different_content_get_distinct_whole_versions(tmp_path):
    start_at = time.time() + 3
    processes = [_publisher(tmp_path, content, start_at) for content in "wxyz"]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in processes)
    assert outputs == ["v0001 True", "v0002 True", "v0003 True", "v0004 True"]
    registry = Registry(tmp_path, "ds")
    _whole(registry)
    assert {registry.manifest(v)["content"] for v in registry.versions()} == set("wxyz")
    assert registry.latest() == "v0004"


def test_concurrent_publishes_of_identical_content_publish_once(tmp_path):
    start_at = time.time() + 3
    processes = [_publisher(tmp_path, "same", start_at) for _ in range(3)]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in processes)
    assert outputs == ["v0001 False", "v0001 False", "v0001 True"]
    assert Registry(tmp_path, "ds").versions() == ["v0001"]


def test_a_publisher_killed_mid_publish_leaves_no_partial_version(tmp_path):
    assert _publish(tmp_path, "first") == "v0001 True"
    hanging = _publisher(tmp_path, "second", 0, hang=True)
    marker = tmp_path / "hanging"
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "v0002"  # it holds the lock, with its manifest half-way written
    os.kill(hanging.pid, signal.SIGKILL)
    hanging.wait(timeout=30)
    registry = Registry(tmp_path, "ds")
    assert registry.versions() == ["v0001"] and registry.latest() == "v0001"
    _whole(registry)
    assert _publish(tmp_path, "third") == "v0002 True"  # the kernel released the dead process's lock


def test_versions_commands(tmp_path, capsys):
    for content in ("a", "b"):
        _publish(tmp_path, content)
    from negforge.flows.cli import main

    registry = Registry(tmp_path, "ds")
    for version in registry.versions():
        manifest = registry.manifest(version) | {"created_at": "2026-11-26T00:00:00", "counts": {"rows": 1},
                                                 "config": {"mine": {"num_negatives": 3}}}
        (registry.folder / version / "manifest.json").write_text(json.dumps(manifest))
    assert main(["versions", "list", "ds", "--registry", str(tmp_path)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("v0001") and listing[1].startswith("v0002") and listing[1].endswith("LATEST")
    assert main(["versions", "rollback", "ds", "v0001", "--registry", str(tmp_path)]) == 0
    assert registry.latest() == "v0001"
    assert main(["versions", "show", "ds", "v0003", "--registry", str(tmp_path)]) == 2
    assert "no version" not in capsys.readouterr().out


@pytest.mark.slow
def test_diff_and_show_of_two_real_builds(config, prefect_server):
    first = run_cli("build", "--config", str(config)).stdout.strip().splitlines()[-1]
    second = run_cli("build", "--config", str(config), "--set", "mine.num_negatives=2").stdout.strip().splitlines()[-1]
    registry = str(Path(first).parent.parent)
    diff = run_cli("versions", "diff", "tiny", "v0001", "v0002", "--registry", registry).stdout
    assert "config mine.num_negatives: 3 -> 2" in diff
    assert "negatives changed in" in diff and "mean negative score" in diff
    show = run_cli("versions", "show", "tiny", "v0002", "--registry", registry).stdout
    assert "parent v0001" in show and "validation: passed" in show
    assert Path(second).name == "v0002"
    gc = run_cli("gc", "--config", str(config), "--keep-runs", "1").stdout
    assert "removed 1 run workspaces" in gc
