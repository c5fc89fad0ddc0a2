"""Shared fixtures: real data locations, small BEIR datasets cut from the shipped demo, a session Prefect server."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "scifact-demo"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
DEMO_CONFIG = ROOT / "deployments" / "datasets" / "scifact-demo.yaml"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
if "PYTEST_XDIST_WORKER" in os.environ or "PREFECT_HOME" not in os.environ:
    # each xdist worker (they inherit the controller's environment) gets its own Prefect home, so its session
    # server has a database of its own; removed when the process ends, after the session server has stopped
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="negforge-prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def scifact() -> Path:
    """The full SciFact copy in ../shared; tests that need it skip where it is absent."""
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"{SCIFACT} is absent (the shared SciFact copy is only on the project's machines)")
    return SCIFACT


def write_beir(target: Path, docs: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]]) -> Path:
    """Write a BEIR-layout dataset (corpus.jsonl, queries.jsonl, qrels/train.tsv) and return its folder."""
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    (target / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (target / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in qrels)]
    (target / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return target


def beir_subset(source: Path, target: Path, n_queries: int, n_docs: int) -> Path:
    """The first `n_queries` train queries of `source` with their positives, padded with other documents."""
    rows = [line.split("\t") for line in (source / "qrels/train.tsv").read_text().splitlines()[1:] if line]
    chosen: list[str] = []
    for q, _, _ in rows:
        if q not in chosen and len(chosen) < n_queries:
            chosen.append(q)
    qrels = [(q, d, int(s)) for q, d, s in rows if q in chosen]
    needed = {d for _, d, _ in qrels}
    corpus = [json.loads(line) for line in (source / "corpus.jsonl").read_text().splitlines()]
    others = [d for d in corpus if d["_id"] not in needed]
    keep = needed | {d["_id"] for d in others[: max(0, n_docs - len(needed))]}
    docs = [{"_id": d["_id"], "title": d["title"], "text": d["text"]} for d in corpus if d["_id"] in keep]
    queries = [json.loads(line) for line in (source / "queries.jsonl").read_text().splitlines()]
    queries = [{"_id": q["_id"], "text": q["text"]} for q in queries if q["_id"] in chosen]
    return write_beir(target, docs, queries, qrels)


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    """40 demo queries and 200 documents: enough for a real flow run in seconds."""
    return beir_subset(DEMO, tmp_path / "tiny", 40, 200)


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect server (API, UI, scheduler and the other services) on loopback for the whole test session,
    with its own database."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from negforge.flows.orchestration.prefect_server import local_server

    with local_server() as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
        APILogHandler().flush()
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server, conditional writes included) on loopback for the session; nothing reaches the
    internet."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch) -> str:
    """A fresh bucket on the loopback S3 API, as `s3://<bucket>`; credentials and endpoint in the environment (as
    users set them), so CLI subprocesses reach it too."""
    import uuid

    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    bucket = f"negforge-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="session")
def dask_address(prefect_server) -> str:
    """One local Dask cluster for the session's builds, set up as a build's own (flows/orchestration/dask_cluster.py),
    started after the Prefect server so its workers report there. Builds that use it skip starting workers and loading
    the model; tests of the local-cluster path itself set runtime.dask_address=null."""
    from distributed import LocalCluster

    from negforge.flows.orchestration.dask_cluster import local_cluster_kwargs
    from negforge.schemas.config import RuntimeConfig

    with LocalCluster(**local_cluster_kwargs(RuntimeConfig(n_workers=2))) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def config(tmp_path, tiny_beir, dask_address) -> Path:
    """A build YAML over `tiny_beir`, with its registry and workdir under tmp_path, run on the session's cluster."""
    return write_config(tmp_path / "build.yaml", tiny_beir, dask_address=dask_address)


@pytest.fixture
def small_config(tmp_path, dask_address) -> Path:
    """The same build YAML over 20 demo queries and 100 documents, for tests whose subject is not the data."""
    return write_config(tmp_path / "build.yaml", beir_subset(DEMO, tmp_path / "small", 20, 100),
                        dask_address=dask_address)


def write_config(path: Path, data: Path, dataset: str = "tiny", extra: str = "",
                 dask_address: str | None = None, max_seq_length: int | None = 64) -> Path:
    """A build YAML over the BEIR folder `data`, with its registry and workdir beside it; `extra` adds sections.
    Texts are cut at `max_seq_length` tokens (null: the model's 256): embedding is most of a test build's time, and
    the tests whose subject is the embedding itself set it."""
    embed = f"embed:\n  max_seq_length: {max_seq_length}\n" if max_seq_length else ""
    path.write_text(f"""{embed}
input:
  corpus: {data / 'corpus.jsonl'}
  queries: {data / 'queries.jsonl'}
  qrels: {data / 'qrels/train.tsv'}
mine:
  num_negatives: 3
output:
  exports: [flagembedding]
publish:
  registry: registry
  dataset: {dataset}
runtime:
  workdir: work
  shard_size: 64
  n_workers: 2
  dask_address: {dask_address or 'null'}
{extra}""")
    return path


@contextlib.contextmanager
def dask_scheduler_and_workers(wrap: Callable[[list[str]], list[str]] = lambda command: command) -> Iterator[str]:
    """`dask scheduler` and two `dask worker` processes on loopback (each worker's command line through `wrap`),
    stopped at the end; yields the scheduler's address once both workers have joined."""
    from distributed import Client

    from negforge.flows.orchestration.prefect_server import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    dask = [sys.executable, "-m", "dask"]
    commands = [[*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"]]
    commands += [wrap([*dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"])
                 for i in range(2)]
    processes = [subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for command in commands]
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)


def local_workers(processes: list) -> list:
    """The Dask worker processes of a local cluster among `processes` (psutil): they fork from the cluster's
    forkserver process (flows/orchestration/dask_cluster.py)."""
    from negforge.flows.orchestration.dask_cluster import is_forkserver

    return [process for process in processes if process.parent() is not None and is_forkserver(process.parent())]


def run_cli(*args: str, check: bool = True, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `negforge ARGS` as a user would, in the project root (or `cwd`)."""
    done = subprocess.run([sys.executable, "-m", "negforge.flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done
