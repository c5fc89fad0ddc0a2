"""A process's mirror of a workdir on an object store (a real S3 API on loopback): what it pulls, pushes and deletes,
and how task arguments and results cross between mirrors as store URLs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from negforge.tasks.storage import mirror as mirrors
from negforge.tasks.storage.location import Location


@dataclass(frozen=True)
class _Result:
    files: tuple[str, ...]
    kind: str


@pytest.fixture
def two_processes(s3, tmp_path, monkeypatch):
    """Two mirrors of one workdir, as two processes (a flow and a worker) would hold them."""
    monkeypatch.setattr(mirrors, "_MIRRORS", {})
    flow = mirrors.Mirror(f"{s3}/work", {}, tmp_path / "flow-cache")
    worker = mirrors.Mirror(f"{s3}/work", {}, tmp_path / "worker-cache")
    yield flow, worker
    flow.close()
    worker.close()


def test_a_worker_sees_what_the_flow_pushed_and_the_flow_what_the_worker_pushed(two_processes, s3):
    flow, worker = two_processes
    run = flow.root / "runs" / "r1"
    (run / "ingest").mkdir(parents=True)
    (run / "ingest" / "texts.parquet").write_bytes(b"texts")
    (run / "ingest" / ".texts.parquet.tmp-1").write_bytes(b"half")  # a temporary file: never pushed
    flow.push()
    assert Location.of(f"{s3}/work/runs/r1").files() == {"ingest/texts.parquet": 5}

    worker.pull(worker.local(f"{s3}/work/runs/r1/ingest"))
    assert (worker.root / "runs" / "r1" / "ingest" / "texts.parquet").read_bytes() == b"texts"
    (worker.root / "runs" / "r1" / "mine").mkdir()
    (worker.root / "runs" / "r1" / "mine" / "part-0.parquet").write_bytes(b"mined")
    (worker.root / "runs" / "r1" / "ingest" / "texts.parquet").unlink()  # deleted by the worker: deleted on the store
    worker.push()
    assert Location.of(f"{s3}/work/runs/r1").files() == {"mine/part-0.parquet": 5}

    flow.pull(run / "mine" / "part-0.parquet")  # a single file
    assert (run / "mine" / "part-0.parquet").read_bytes() == b"mined"
    assert flow.requests["put"] == 1 and worker.requests["delete"] == 1


def test_arguments_and_results_cross_as_urls(two_processes, s3, monkeypatch):
    flow, worker = two_processes
    files = (str(flow.root / "runs" / "r1" / "a.parquet"), "/elsewhere/b.parquet")
    Path(files[0]).parent.mkdir(parents=True)
    Path(files[0]).write_bytes(b"a")
    monkeypatch.setattr(mirrors, "_MIRRORS", {flow.url: flow})
    mirrors.push_all()
    handed = mirrors.to_remote({"result": _Result(files, "corpus"), "workdir": str(flow.root)})
    assert handed == {"result": _Result((f"{s3}/work/runs/r1/a.parquet", "/elsewhere/b.parquet"), "corpus"),
                      "workdir": f"{s3}/work"}

    monkeypatch.setattr(mirrors, "_MIRRORS", {worker.url: worker})
    received = mirrors.to_local(handed)
    assert received["result"].files == (str(worker.root / "runs" / "r1" / "a.parquet"), "/elsewhere/b.parquet")
    assert Path(received["result"].files[0]).read_bytes() == b"a"  # named, so pulled
    assert received["workdir"] == str(worker.root) and not (worker.root / "runs" / "r1" / "b").exists()
    assert worker.requests["get"] == 1  # the workdir itself is not pulled because it was named


def test_gc_refuses_a_workdir_on_a_store_in_one_line(tmp_path, capsys):
    from negforge.flows.cli import main

    assert main(["gc", "--workdir", "s3://bucket/work", "--registry", str(tmp_path / "registry")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "negforge: error: runtime.workdir s3://bucket/work: gc does not reach a workdir on an object store yet; give "
        "--workdir a local folder (with --registry) or expire the store's runs/ with its own lifecycle rules"]
