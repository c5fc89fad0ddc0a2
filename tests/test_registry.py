"""The registry with real processes: versions, LATEST, up-to-date, rollback, concurrent and killed publishes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from negforge.schemas.manifest import Manifest
from negforge.tasks.registry.versions import NotFound, Registry
from negforge.tasks.runtime.containment import NOT_FOLLOWED
from tests.conftest import ROOT, run_cli

PUBLISHER = """
import sys, time
from pathlib import Path
from negforge.schemas.manifest import Manifest
from negforge.tasks.registry.versions import NotFound, Registry
root, content, start_at, hang = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "hang"
from tests.test_registry import stage
registry = Registry(root, "ds")
staged = stage(registry, content)
while time.time() < start_at:
    time.sleep(0.001)
def card(manifest):
    if hang:
        Path(root, "hanging").write_text(manifest.version)
        time.sleep(600)
    return f"# {manifest.version}"
path, new = registry.publish(staged, Manifest(parent=None, content=content), card)
print(path.name, new)
"""


def stage(registry: Registry, content: str) -> Path:
    """A staged candidate version whose data is `content` repeated."""
    staged = registry.staging()
    (staged / "data").mkdir()
    (staged / "data" / "train-00000-of-00001.parquet").write_text(content * 1000)
    (staged / "ids").mkdir()
    return staged


def _publish_here(root: Path, content: str) -> tuple[str, bool]:
    """Publish in this process, with the manifest fields `versions list` prints."""
    registry = Registry(root, "ds")
    manifest = Manifest(parent=None, content=content, created_at="2026-11-26T00:00:00", counts={"rows": 1})
    path, new = registry.publish(stage(registry, content), manifest, lambda m: f"# {m.version}")
    return path.name, new


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
        assert manifest.version == version
        data = (registry.folder / version / "data" / "train-00000-of-00001.parquet").read_text()
        assert data == manifest.content * 1000


def test_versions_take_max_plus_one_and_latest_follows_also_after_a_rollback(tmp_path):
    registry = Registry(tmp_path, "ds")
    assert _publish(tmp_path, "a") == "v0001 True"
    assert _publish(tmp_path, "a") == "v0001 False"  # same content: up to date
    assert _publish(tmp_path, "b") == "v0002 True"
    assert registry.manifest("v0002").parent == "v0001"
    registry.rollback("v0001")
    assert registry.latest() == "v0001" and registry.versions() == ["v0001", "v0002"]
    assert _publish(tmp_path, "c") == "v0003 True"
    assert registry.latest() == "v0003" and registry.manifest("v0003").parent == "v0001"
    with pytest.raises(NotFound, match="no version v0009"):
        registry.rollback("v0009")


def test_concurrent_publishes_of_different_content_get_distinct_whole_versions(tmp_path):
    start_at = time.time() + 3
    processes = [_publisher(tmp_path, content, start_at) for content in "wxyz"]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in processes)
    assert outputs == ["v0001 True", "v0002 True", "v0003 True", "v0004 True"]
    registry = Registry(tmp_path, "ds")
    _whole(registry)
    assert {registry.manifest(v).content for v in registry.versions()} == set("wxyz")
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
    assert marker.read_text() == "v0002"  # it holds the lock, with its card half-way written
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
        manifest = registry.manifest(version).as_dict() | {"created_at": "2026-11-26T00:00:00", "counts": {"rows": 1},
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


def test_verify_hashes_every_file_and_a_damaged_version_is_marked_then_replaced(tmp_path, capsys):
    from negforge.flows.cli import main

    registry = Registry(tmp_path, "ds")
    assert _publish_here(tmp_path, "a") == ("v0001", True)
    assert set(registry.manifest("v0001").checksums) == {"data/train-00000-of-00001.parquet", "README.md"}
    assert main(["versions", "verify", "--registry", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "ds v0001  ok\n"

    data = registry.folder / "v0001" / "data" / "train-00000-of-00001.parquet"
    data.write_text("b" * 1000)  # same size, other bytes: only hashing finds it
    assert registry.problems("v0001") == []
    assert main(["versions", "verify", "ds@v0001", "--registry", str(tmp_path)]) == 1
    assert "DAMAGED: data/train-00000-of-00001.parquet: sha256 differs" in capsys.readouterr().out

    data.unlink()  # the case: a published parquet deleted
    assert main(["versions", "list", "ds", "--registry", str(tmp_path)]) == 0
    assert "DAMAGED: data/train-00000-of-00001.parquet: missing  LATEST" in capsys.readouterr().out
    assert _publish_here(tmp_path, "a") == ("v0002", True)  # same content, but v0001 is damaged: a whole new one
    assert registry.latest() == "v0002" and registry.problems("v0002", hashes=True) == []
    assert registry.manifest("v0002").parent == "v0001"
    assert main(["versions", "rollback", "ds", "v0001", "--registry", str(tmp_path)]) == 2  # not to a damaged one
    assert registry.latest() == "v0002"


def test_latest_naming_nothing_valid_a_version_without_manifest_and_strays_block_nothing(tmp_path, capsys):
    from negforge.flows.cli import main

    registry = Registry(tmp_path, "ds")
    _publish_here(tmp_path, "a")
    (registry.folder / "LATEST").write_text("garbage!!\n")
    (registry.folder / "v0002").mkdir()  # a version without its manifest
    (registry.folder / "v0007").symlink_to(registry.folder / "v0001")
    (registry.folder / "notes.txt").write_text("mine")
    assert registry.versions() == ["v0001", "v0002"] and registry.latest() is None

    assert main(["versions", "list", "ds", "--registry", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("v0001  2026-11-26") and "v0002  DAMAGED: " in out and "no manifest.json" in out
    assert "names 'garbage!!'" in err and f"fix: negforge versions rollback ds v0001 --registry {tmp_path}" in err
    assert f"{registry.folder / 'v0007'}: not made by negforge" in err and "notes.txt: not made by negforge" in err
    assert main(["versions", "verify", "ds", "--registry", str(tmp_path)]) == 1
    assert "ds v0001  ok" in capsys.readouterr().out

    assert _publish_here(tmp_path, "b") == ("v0003", True)  # the next number; LATEST named no parent
    assert registry.latest() == "v0003" and registry.manifest("v0003").parent is None
    (registry.folder / "LATEST").write_text("v0002\n")  # a version without manifest as LATEST
    assert registry.latest() is None and "no manifest.json" in registry.latest_problem()
    assert _publish_here(tmp_path, "b") == ("v0004", True)


def test_arguments_stay_inside_their_registry(tmp_path, capsys):
    from negforge.flows.cli import main

    other = Registry(tmp_path / "other", "dataset")
    for content in ("a", "b"):
        other.publish(stage(other, content), Manifest(parent=None), lambda m: "")
    root = tmp_path / "R"
    _publish_here(root, "a")
    before = (other.folder / "LATEST").read_text()
    assert main(["versions", "rollback", "../other/dataset", "v0001", "--registry", str(root)]) == 2
    assert "argument: dataset: " in capsys.readouterr().err
    assert (other.folder / "LATEST").read_text() == before == "v0002\n"
    for argv in (["versions", "list", "../other/dataset"], ["versions", "show", "ds", "../../other/dataset/v0001"],
                 ["versions", "diff", "ds", "v0001", "../v0001"], ["versions", "verify", "../other/dataset@v0001"],
                 ["versions", "verify", "ds@../v0001"], ["remine", "--from", "../other/dataset@v0001"]):
        assert main([*argv, "--registry", str(root)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("negforge: error: ") and err.count("\n") == 1, err


STAGER = """
import sys, time
from negforge.tasks.registry.versions import Registry
print(Registry(sys.argv[1], "ds").staging(), flush=True)
time.sleep(600)
"""


def _stager(root: Path) -> tuple[subprocess.Popen, Path]:
    """A process that stages a version and lives on (as a build would), and its staging folder."""
    process = subprocess.Popen([sys.executable, "-c", STAGER, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return process, Path(process.stdout.readline().strip())


def test_staging_folders_of_killed_builds_are_removed_by_gc_and_the_next_publish(tmp_path, capsys):
    from negforge.flows.cli import main

    killed, abandoned = _stager(tmp_path)
    alive, in_use = _stager(tmp_path)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    gc = ["gc", "--registry", str(tmp_path), "--workdir", str(tmp_path / "work")]
    try:
        assert main([*gc, "--dry-run"]) == 0
        assert "would remove 1 staging folders" in capsys.readouterr().out and abandoned.exists()
        assert main(gc) == 0
        assert "removed 1 staging folders" in capsys.readouterr().out
        assert not abandoned.exists() and in_use.exists()  # a living build's folder stays
    finally:
        alive.kill()
        alive.wait(timeout=30)
    assert _publish_here(tmp_path, "a") == ("v0001", True)
    assert not in_use.exists() and list(Registry(tmp_path, "ds").folder.glob(".staging-*")) == []


def test_gc_reads_only_the_registry_and_workdir_and_takes_set(tmp_path, capsys):
    from negforge.flows.cli import main

    config = tmp_path / "gc.yaml"
    config.write_text("publish:\n  registry: registry\nruntime:\n  workdir: work\n")  # no input section
    for run in ("20260101T000000-a", "20260102T000000-b"):
        (tmp_path / "elsewhere" / "runs" / run).mkdir(parents=True)
    assert main(["gc", "--config", str(config), "--set", f"runtime.workdir={tmp_path / 'elsewhere'}",
                 "--keep-runs", "1"]) == 0
    assert "removed 1 run workspaces" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "elsewhere" / "runs").iterdir()] == ["20260102T000000-b"]



def test_gc_refuses_a_negative_count_of_runs_to_keep_and_removes_nothing(tmp_path):
    runs = [tmp_path / "work" / "runs" / name for name in ("20260101T000000-a", "20260102T000000-b")]
    for run in runs:
        run.mkdir(parents=True)
    # -1 once removed every run (runs[len(runs) + 1:] keeps none)
    for count, why in (("-1", "must be 0 or more, got -1"), ("two", "expected a whole number, got 'two'")):
        done = run_cli("gc", "--registry", str(tmp_path / "registry"), "--workdir", str(tmp_path / "work"),
                       "--keep-runs", count, check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"negforge gc: error: argument --keep-runs: {why}"
        assert all(run.is_dir() for run in runs)

def test_a_key_error_is_a_bug_with_a_traceback(tmp_path, monkeypatch):
    from negforge.flows import registry_commands
    from negforge.flows.cli import main

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(registry_commands, "versions_list", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["versions", "list", "ds", "--registry", str(tmp_path)])


def _outside(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder beside the registry and workdir, with files gc or verify must leave as they are, and its contents."""
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    for name in ("part-keep.parquet", "damaged-part-keep.parquet", "deep/data.bin", ".lock"):
        (outside / name).write_bytes(name.encode() * 100)
    return outside, _contents(outside)


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_gc_neither_follows_nor_removes_symlinks_and_says_what_it_did_not_remove(tmp_path):
    outside, before = _outside(tmp_path)
    work = tmp_path / "work"
    (work / "runs" / "20260101T000000-old").mkdir(parents=True)
    (work / "runs" / "20260102T000000-linked").symlink_to(outside)
    (work / "runs" / "20260103T000000-new").mkdir()
    (work / "embeddings" / "real-unused").mkdir(parents=True)
    (work / "embeddings" / "real-unused" / "part-x.parquet").write_bytes(b"x" * 1000)
    (work / "embeddings" / "real-unused" / "link-inside").symlink_to(outside)
    (work / "embeddings" / "linked-unused").symlink_to(outside)
    done = run_cli("gc", "--registry", str(tmp_path / "registry"), "--workdir", str(work), "--keep-runs", "1")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "removed 1 run workspaces and 1 store fingerprints" in done.stdout
    assert f"not removed: {work / 'runs' / '20260102T000000-linked'}: a symlink" in done.stdout
    assert f"not removed: {work / 'embeddings' / 'linked-unused'}: a symlink" in done.stdout
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["20260102T000000-linked", "20260103T000000-new"]
    assert [p.name for p in (work / "embeddings").iterdir()] == ["linked-unused"]
    assert (work / "embeddings" / "linked-unused").is_symlink() and _contents(outside) == before


def test_gc_leaves_a_linked_store_or_runs_folder_and_what_it_points_to(tmp_path):
    outside, _ = _outside(tmp_path)
    (outside / "fingerprint").mkdir()  # looks like a store fingerprint and a run
    (outside / "fingerprint" / "damaged-part-x.parquet").write_bytes(b"old")
    before = _contents(outside)
    work = tmp_path / "work"
    work.mkdir()
    (work / "embeddings").symlink_to(outside)
    (work / "runs").symlink_to(outside)
    done = run_cli("gc", "--registry", str(tmp_path / "registry"), "--workdir", str(work), "--keep-runs", "0")
    assert done.returncode == 0, done.stderr
    assert "removed 0 run workspaces and 0 store fingerprints" in done.stdout
    assert "removed 0 damaged embedding-store parts" in done.stdout
    assert done.stdout.count(": a symlink") == 2 and _contents(outside) == before


def test_gc_reports_a_folder_it_could_not_remove_as_not_removed(tmp_path):
    from tests.test_preflight import tmpfs

    work = tmp_path / "work"
    old, inner = work / "runs" / "20260101T000000-old", work / "runs" / "20260101T000000-old" / "inner"
    inner.mkdir(parents=True)
    (inner / "file").write_text("x")
    (work / "runs" / "20260102T000000-new").mkdir()
    inner.chmod(0o500)  # its file cannot be unlinked, unless by root: then a mount point cannot be removed
    gc = ("gc", "--registry", str(tmp_path / "registry"), "--workdir", str(work), "--keep-runs", "1")
    try:
        with tmpfs(old / "mounted", "1m") if os.access(inner, os.W_OK) else nullcontext():
            done = run_cli(*gc)
    finally:
        inner.chmod(0o700)
    assert "removed 0 run workspaces" in done.stdout and old.is_dir()
    assert f"not removed: {old}: " in done.stdout


def test_versions_verify_names_every_symlink_in_a_version_and_reads_nothing_through_it(tmp_path):
    outside, _ = _outside(tmp_path)
    registry = Registry(tmp_path / "R", "ds")
    for content in ("a", "b", "c"):
        _publish_here(tmp_path / "R", content)
    data = registry.folder / "v0001" / "data"
    (outside / "data").mkdir()
    os.replace(data, outside / "data")  # the same files, moved outside and linked back: sizes and hashes match
    data.symlink_to(outside / "data")
    (registry.folder / "v0002" / "extra").symlink_to(outside)
    manifest = registry.folder / "v0003" / "manifest.json"
    os.replace(manifest, outside / "manifest.json")
    manifest.symlink_to(outside / "manifest.json")
    before = _contents(outside)
    done = run_cli("versions", "verify", "ds", "--registry", str(tmp_path / "R"), check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ds v0001  DAMAGED: data: a symlink, not followed (a version holds only its own files)"
    assert lines[1] == "ds v0002  DAMAGED: extra: a symlink, not followed (a version holds only its own files)"
    assert lines[2] == ("ds v0003  DAMAGED: manifest.json: a symlink, not followed (a version holds only its own "
                        "files)")
    assert _contents(outside) == before


def test_a_linked_dataset_folder_or_lock_is_never_written_through(tmp_path):
    outside, before = _outside(tmp_path)
    root = tmp_path / "R"
    root.mkdir()
    (root / "ds").symlink_to(outside)
    with pytest.raises(OSError, match="a symlink, which negforge does not follow") as refused:
        Registry(root, "ds").staging()
    assert refused.value.errno == errno.ELOOP and refused.value.filename == str(root / "ds")
    (root / "ds").unlink()
    _publish_here(root, "a")
    (root / "ds" / ".lock").unlink()
    (root / "ds" / ".lock").symlink_to(outside / "absent-lock")
    done = run_cli("versions", "rollback", "ds", "v0001", "--registry", str(root), check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lock = root / "ds" / ".lock"
    assert done.stderr.splitlines()[-1] == f"negforge: error: {lock}: {NOT_FOLLOWED}"
    assert _contents(outside) == before and not (outside / "absent-lock").exists()
