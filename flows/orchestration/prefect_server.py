"""The Prefect API a run reports to: the configured one, a local API for one CLI run, or a full local server.

Dask worker processes must report to the same Prefect API as the flow, so a local server is started once and its
URL is put in the environment before the cluster's workers are spawned (DESIGN.md section 4). The Dask side is in
flows/orchestration/dask_cluster.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

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
def _server_process(args: list[str], port: int, grace: float) -> Iterator[tuple[str, Callable[[float], str]]]:
    """Run a Prefect server process on 127.0.0.1:`port` for the duration; yield its API URL and a function that
    waits until the API answers (or the timeout passes) and returns the URL. On exit the server gets SIGTERM, and
    SIGKILL after `grace` seconds.

    The server runs in its own session: a Ctrl-C or a SIGTERM to the CLI's process group then reaches the CLI only,
    which records the run's end on the server before stopping it (a server stopped first would leave the run's
    state unrecorded and its last API calls retried for many seconds).
    """
    import httpx

    api = f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryFile() as errors:
        env = os.environ | {"PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True, env=env)

        def wait_until_up(timeout: float) -> str:
            deadline = time.monotonic() + timeout
            while True:
                if server.poll() is not None:
                    errors.seek(0)
                    raise RuntimeError(f"the Prefect server exited ({server.returncode}): "
                                       f"{errors.read().decode(errors='replace')[-2000:]}")
                try:
                    if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                        return api
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Prefect server on port {port} did not answer within {timeout:.0f} s")
                time.sleep(0.2)

        try:
            yield api, wait_until_up
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()


def temporary_api() -> Any:
    """The app of the temporary API server a CLI run starts (a uvicorn factory): Prefect's API as its own
    temporary server runs it, without UI or scheduler, with the services that record task runs and events.

    The server runs in its own session, so should the CLI die without stopping it (SIGKILL), it stops itself.
    """
    from prefect.server.api.server import create_app

    parent = os.getppid()

    def stop_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down

    threading.Thread(target=stop_with_parent, name="stop-with-parent", daemon=True).start()
    return create_app(ephemeral=True, final=True)


@contextmanager
def prefect_api() -> Iterator[Callable[[], str]]:
    """Use the configured Prefect API, or start a temporary local one on 127.0.0.1 for the duration.

    Yields a function that waits until the API is up and returns its URL. The server starts in the background, so
    the caller's imports overlap with it; its URL is in the environment at once, so Dask workers report to it.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        yield lambda: configured
        return
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:temporary_api", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    with _server_process(args, port, grace=5) as (api, wait_until_up):
        os.environ["PREFECT_API_URL"] = api
        try:
            with temporary_settings(updates={PREFECT_API_URL: api}):
                yield lambda: wait_until_up(120)
        finally:
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # send the last run logs before the server goes away
            os.environ.pop("PREFECT_API_URL", None)


@contextmanager
def local_server(port: int | None = None, timeout: float = 300) -> Iterator[str]:
    """Run `prefect server start` (API, UI and services such as the scheduler) on 127.0.0.1 for the duration.

    Yields the API URL, once it answers. A fresh PREFECT_HOME migrates its database first, which takes a minute on
    these machines.
    """
    port = port or free_port()
    args = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
            "--no-prompt"]
    with _server_process(args, port, grace=20) as (api, wait_until_up):
        yield wait_until_up(timeout)
