"""The task runner of negforge's flows: Dask, set up from each run's own `runtime` section.

A flow's task runner is fixed when the flow is defined, but its cluster depends on each run's config (a served
deployment, a trigger with `--set runtime.n_workers=4`). prefect-dask connects on the first task submitted, when the
run's parameters are known: that is when `BuildTaskRunner` reads `runtime` and either connects to
`runtime.dask_address` or starts a local cluster.

A local cluster belongs to the run: its workers leave the run's process group (a Ctrl-C reaches the whole group), and a
run stopped by a signal kills them at once instead of waiting for the task each is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import threading
from typing import Any, Callable

import distributed
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

from negforge.schemas.config import BuildConfig, RuntimeConfig


def local_cluster_kwargs(runtime: RuntimeConfig) -> dict:
    """LocalCluster arguments and the Dask settings its workers need.

    Local workers get torch/BLAS threads equal to `threads_per_worker`, tokenizers' own thread pool (the flow
    process turns it off to stay quiet when it forks; a Dask `env` wins over the inherited value, pre-spawn-environ
    does not), no statistical profiler, and not Dask's
    default MALLOC_TRIM_THRESHOLD_: setting it freezes glibc's mmap threshold, so every activation tensor is a fresh
    mmap; embedding then page-faulted twice as often and ran 15-30% slower (measured in README "Benchmark").
    """
    import dask

    threads = str(runtime.threads_per_worker)
    environment = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    console_level = os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
    if console_level:  # the CLI quiets per-task-run lines on workers' consoles too (flows/cli.py)
        environment["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = console_level
    dask.config.set({"distributed.worker.profile.enabled": False,
                     "distributed.nanny.pre-spawn-environ": environment})
    workers = runtime.n_workers or max(1, (os.cpu_count() or 1) // runtime.threads_per_worker)
    return {"n_workers": workers, "threads_per_worker": runtime.threads_per_worker, "processes": True,
            "dashboard_address": None, "preload": [__name__], "env": {"TOKENIZERS_PARALLELISM": "true"}}


def dask_setup(worker: distributed.Worker) -> None:
    """Run in each local worker process as it starts (the cluster's `preload`): move it out of the process group of
    the run, so that a Ctrl-C or a SIGTERM to the group reaches the run only, and stopping the worker is left to its
    nanny there. Otherwise each worker would print a KeyboardInterrupt traceback (polars hooks SIGINT itself), and
    the nanny would restart the worker it lost. A worker whose parent dies exits on its own (distributed watches)."""
    os.setsid()


async def _kill_workers(cluster: distributed.LocalCluster) -> None:
    """Kill every worker process (SIGKILL), then let the nannies close: what they ran is abandoned. A worker told to
    close instead cancels its tasks while its heartbeat races the scheduler's goodbye, and under load it printed
    "Failed to communicate with scheduler during heartbeat" with a traceback on the run's console."""
    for nanny in cluster.workers.values():
        if nanny.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(nanny.pid, signal.SIGKILL)
    await asyncio.gather(*(worker.close(timeout=1) for worker in cluster.workers.values()))


def _run_runtime() -> RuntimeConfig:
    """The `runtime` section of the flow run in progress (its `config` parameter)."""
    context = FlowRunContext.get()
    config = context.parameters.get("config") if context else None
    if config is None:
        raise RuntimeError("BuildTaskRunner runs only inside a flow run with a `config` parameter")
    return (config if isinstance(config, BuildConfig) else BuildConfig.model_validate(config)).runtime


_STARTING = threading.Lock()  # the cluster may be started from a background thread and at the first submit


class BuildTaskRunner(DaskTaskRunner):
    """A DaskTaskRunner whose cluster comes from the run's `config.runtime`, decided at the first submit, or earlier
    with `start_in_background` (the local cluster then starts while the flow ingests)."""

    def duplicate(self) -> BuildTaskRunner:
        return type(self)()

    @property
    def client(self):
        with _STARTING:
            if not self._client:
                runtime = _run_runtime()
                if runtime.dask_address:
                    self.address = runtime.dask_address
                else:
                    self.cluster_class, self.cluster_kwargs = distributed.LocalCluster, local_cluster_kwargs(runtime)
            return DaskTaskRunner.client.fget(self)

    def __exit__(self, exc_type: type[BaseException] | None, *rest: Any) -> None:
        """A run stopped by a signal (a BaseException: KeyboardInterrupt, Prefect's TerminationSignal) kills its local
        workers first: a worker busy in a model call would otherwise get 4 s to finish before being killed. Dask's
        warnings about the lost work and the killed workers are expected then, and muted."""
        if self.cluster_class and self._cluster and exc_type and not issubclass(exc_type, Exception):
            logging.getLogger("distributed").setLevel(logging.ERROR)
            self._cluster.sync(_kill_workers, self._cluster)
        super().__exit__(exc_type, *rest)

    def start_in_background(self, warm_up: Callable[[], Any] | None = None) -> threading.Thread:
        """Start (or connect to) the cluster in a thread that sees this flow run's context; join it to wait.

        On a local cluster of the run's own, `warm_up` then runs once on every worker, as a plain Dask task (no Prefect
        task run), so that what every task needs first (the model) loads while the flow ingests: a cold build's plan
        loaded it on one worker while the other idled (the embedding stage of a 240-text build: 13.6 s -> 9.6 s). An
        existing cluster's workers keep their models between runs."""
        def start() -> None:
            client = self.client
            if warm_up and self.cluster_class:
                self._warm_ups = [client.submit(warm_up, workers=[address], allow_other_workers=False, pure=False)
                                  for address in client.scheduler_info(n_workers=-1)["workers"]]

        starter = threading.Thread(target=contextvars.copy_context().run, args=(start,), daemon=True,
                                   name="negforge-dask-start")
        starter.start()
        return starter

    def worker_count(self) -> int:
        """How many workers the cluster has (waits for the cluster)."""
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))


def current_task_runner() -> BuildTaskRunner | None:
    """The task runner of the flow run in progress, when it is a BuildTaskRunner (None in other flows)."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    return runner if isinstance(runner, BuildTaskRunner) else None
