"""The Prefect API a run reports to: the configured one, a local API for one CLI run, or a full local server.

Dask worker processes must report to the same Prefect API as the flow, so a local server is started once and its
URL is put in the environment before the cluster's workers are spawned (DESIGN.md section 4). The Dask side is in
flows/task_runner.py.
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

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


def free_port() -> int:
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

    server = SubprocessASGIServer(port=free_port())
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


@contextmanager
def local_server(port: int | None = None, timeout: float = 300) -> Iterator[str]:
    """Run `prefect server start` (API, UI and services such as the scheduler) on 127.0.0.1 for the duration.

    Yields the API URL, once it answers. The server runs in its own process group, stopped on exit. A fresh
    PREFECT_HOME migrates its database first, which takes a minute on these machines.
    """
    import signal
    import subprocess
    import sys
    import time

    import httpx

    port = port or free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port), "--no-prompt"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                              env=os.environ | {"PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the Prefect server exited ({server.returncode}): "
                                   f"{server.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server on port {port} did not answer within {timeout:.0f} s")
            time.sleep(0.5)
        yield api
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
