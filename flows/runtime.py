"""Where a build runs: a Prefect API (a local one started on loopback when none is configured) and a Dask cluster.

Dask worker processes must report to the same Prefect API as the flow, so a local server is started once and its
URL is put in the environment before the cluster's workers are spawned (DESIGN.md section 4).
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from schemas.config import RuntimeConfig

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def quiet_environment() -> None:
    """Settings every negforge process needs: no analytics (no network here), quiet Dask, offline model hub."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def prefect_api() -> Iterator[Callable[[], str]]:
    """Use the configured Prefect API, or start a local server on 127.0.0.1 for the duration.

    Yields a function that waits until the API is up and returns its URL. The server starts in the background, so
    the caller's imports overlap with it; its URL is in the environment at once, so Dask workers report to it.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        yield lambda: configured
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer(port=_free_port())
    starter = threading.Thread(target=server.start, kwargs={"timeout": 120}, daemon=True)
    starter.start()

    def ready() -> str:
        starter.join()
        if server.server_process is None or server.server_process.poll() is not None:
            raise RuntimeError(f"the local Prefect server did not start on {server.address}")
        return server.api_url

    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield ready
    finally:
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # send the last run logs before the server goes away
        os.environ.pop("PREFECT_API_URL", None)
        starter.join()
        server.stop()


def dask_task_runner(runtime: RuntimeConfig):
    """The DaskTaskRunner for this build: an existing scheduler, or a local cluster sized to the machine.

    Local workers get torch/BLAS threads equal to `threads_per_worker`, no statistical profiler, and not Dask's
    default MALLOC_TRIM_THRESHOLD_: setting it freezes glibc's mmap threshold, so every activation tensor is a fresh
    mmap; embedding then page-faulted twice as often and ran 15-30% slower (measured in README "Benchmark").
    """
    import dask
    from prefect_dask import DaskTaskRunner

    if runtime.dask_address:
        return DaskTaskRunner(address=runtime.dask_address)
    threads = str(runtime.threads_per_worker)
    dask.config.set({"distributed.worker.profile.enabled": False,
                     "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                                             "OPENBLAS_NUM_THREADS": threads}})
    workers = runtime.n_workers or max(1, (os.cpu_count() or 1) // runtime.threads_per_worker)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": workers, "threads_per_worker": runtime.threads_per_worker,
                                          "processes": True, "dashboard_address": None})
