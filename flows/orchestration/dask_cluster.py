"""The task runner of negforge's flows: Dask, set up from each run's own `runtime` section.

A flow's task runner is fixed when the flow is defined, but its cluster depends on each run's config (a served
deployment, a trigger with `--set runtime.n_workers=4`). prefect-dask connects on the first task submitted, when the
run's parameters are known: that is when `BuildTaskRunner` reads `runtime` and either connects to
`runtime.dask_address` or starts a local cluster.

A local cluster belongs to the run: its workers fork from a server outside the run's process group (a Ctrl-C reaches
the whole group), and a run stopped by a signal kills them at once instead of waiting for the task each is running.
The CLI starts that cluster before the flow run begins (`local_cluster_started_early`), and the run's task runner
adopts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import distributed
import psutil
from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

from negforge.flows.orchestration.workdir_mirror import handed_out, pulling, register_mirrors
from negforge.schemas.config import BuildConfig, RuntimeConfig
from negforge.tasks.storage.mirror import mirrors

CLOSE_TIMEOUT_S = 10  # a local cluster closes in well under a second; past this, the run goes on without waiting
log = logging.getLogger(__name__)


def local_cluster_kwargs(runtime: RuntimeConfig) -> dict:
    """LocalCluster arguments and the Dask settings its workers need.

    Local workers get torch/BLAS threads equal to `threads_per_worker`, tokenizers' own thread pool (the flow
    process turns it off to stay quiet when it forks; a Dask `env` wins over the inherited value, pre-spawn-environ
    does not), no statistical profiler, and not Dask's
    default MALLOC_TRIM_THRESHOLD_: setting it freezes glibc's mmap threshold, so every activation tensor is a fresh
    mmap; embedding then page-faulted twice as often and ran 15-30% slower (measured in README "Benchmark").
    They fork from a server process that has imported torch and sentence-transformers (`_preload_forkserver`).
    """
    import dask

    threads = str(runtime.threads_per_worker)
    environment = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    console_level = os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
    if console_level:  # the CLI quiets per-task-run lines on workers' consoles too (flows/cli.py)
        environment["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = console_level
    dask.config.set({"distributed.worker.profile.enabled": False,
                     "distributed.nanny.pre-spawn-environ": environment,
                     "distributed.worker.multiprocessing-method": "forkserver"})
    _preload_forkserver()
    workers = runtime.n_workers or max(1, (os.cpu_count() or 1) // runtime.threads_per_worker)
    return {"n_workers": workers, "threads_per_worker": runtime.threads_per_worker, "processes": True,
            "dashboard_address": None, "preload": [__name__], "env": {"TOKENIZERS_PARALLELISM": "true"}}


def _preload_forkserver() -> None:
    """Have local workers fork from one server process that imported torch, sentence-transformers and this module
    once, instead of each worker importing them (~5 s of CPU each: on two cores, the wait before a +1% rebuild's
    first embedding). distributed sets the server's preload list the first time it asks for the context; this
    replaces it before the server starts (it starts with the first worker, in the environment Dask sets for it)."""
    from distributed.utils import get_mp_context

    get_mp_context().set_forkserver_preload(["negforge.flows.orchestration.forkserver_session", "distributed", "torch",
                                             "sentence_transformers", __name__])


def dask_setup(worker: distributed.Worker) -> None:
    """Run in each local worker process as it starts (the cluster's `preload`). It forked from a server outside the
    run's process group (flows/orchestration/forkserver_session.py), so a signal to the group does not reach it.

    Its torch, OpenMP and BLAS threads are set to its own thread count: it forked from a server whose libraries
    read their thread settings from the environment of the first local cluster of this process. tqdm (the model's
    progress bars) gets a thread lock instead of its multiprocessing one, a named semaphore that a killed worker
    would leave behind (the resource tracker then warns about it when the run's process exits). Its console is the
    run's (it writes to the CLI's stderr), so its lines are escaped from the start
    (flows/orchestration/console_lines.py)."""
    import torch
    import tqdm.std
    from threadpoolctl import threadpool_limits

    from negforge.flows.orchestration.console_lines import escape_console_lines

    escape_console_lines()
    threadpool_limits(worker.state.nthreads)
    torch.set_num_threads(worker.state.nthreads)
    tqdm.std.tqdm.set_lock(threading.RLock())


class WorkerSetup(WorkerPlugin):
    """`dask_setup` for the workers of an existing scheduler, which were started without negforge's preload: without
    it each worker's torch takes every core (bench/scale.py --object-store, 100k, two one-thread workers on two cores:
    the embedding stage 56.5 s without it, 45.8 s with it and the warm-up, one run each)."""

    def setup(self, worker: distributed.Worker) -> None:
        dask_setup(worker)


async def _kill_workers(cluster: distributed.LocalCluster) -> None:
    """Kill every worker process (SIGKILL), then let the nannies close: what they ran is abandoned. A worker told to
    close instead cancels its tasks while its heartbeat races the scheduler's goodbye, and under load it printed
    "Failed to communicate with scheduler during heartbeat" with a traceback on the run's console."""
    for nanny in cluster.workers.values():
        if nanny.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(nanny.pid, signal.SIGKILL)
    await asyncio.gather(*(worker.close(timeout=1) for worker in cluster.workers.values()))


def close_bounded(what: str, close: Callable[[], Any]) -> bool:
    """Run `close` (of a local cluster, its client) for at most CLOSE_TIMEOUT_S, in a thread of its own; whether it
    finished. A close that fails or takes longer is one warning line, never an error: the run's results are in hand by
    then, and on a loaded machine Dask's own wait for a killed worker (`worker.close(timeout=1)`) ran out and turned a
    published build into a failure with a traceback. What is left stops with this process."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            close()
        except Exception as error:  # whatever it is, the run's outcome is decided by now
            failed.append(error)

    closer = threading.Thread(target=run, daemon=True, name="negforge-dask-close")
    closer.start()
    closer.join(CLOSE_TIMEOUT_S)
    if closer.is_alive():
        log.warning("%s did not close within %s s; left to stop with this process", what, CLOSE_TIMEOUT_S)
        return False
    if failed:
        log.warning("%s did not close cleanly (%r); the run's outcome stands", what, failed[0])
    return True


def _run_runtime() -> RuntimeConfig:
    """The `runtime` section of the flow run in progress (its `config` parameter)."""
    context = FlowRunContext.get()
    config = context.parameters.get("config") if context else None
    if config is None:
        raise RuntimeError("BuildTaskRunner runs only inside a flow run with a `config` parameter")
    return (config if isinstance(config, BuildConfig) else BuildConfig.model_validate(config)).runtime


@dataclass
class _EarlyCluster:
    """A local cluster started before its run, with the warm-up tasks submitted to its workers."""

    kwargs: dict
    cluster: distributed.LocalCluster | None = None
    client: distributed.Client | None = None
    warm_ups: list = field(default_factory=list)
    adopted: bool = False  # a run's task runner took it over, and closes it with the run


_EARLY: list[tuple[threading.Thread, _EarlyCluster]] = []  # the one the CLI is starting, until a run adopts it


def _submit_warm_ups(client: distributed.Client, warm_up: Callable[[], Any]) -> list:
    """Run `warm_up` once on every worker, as a plain Dask task (no Prefect task run)."""
    return [client.submit(warm_up, workers=[address], allow_other_workers=False, pure=False)
            for address in client.scheduler_info(n_workers=-1)["workers"]]


@contextlib.contextmanager
def local_cluster_started_early(runtime: RuntimeConfig, warm_up: Callable[[], Any]) -> Iterator[None]:
    """Start the local cluster of a run about to begin, and load the model on its workers, while the caller imports
    the flow and the Prefect API starts (the CLI: a flow run begins ~5 s after the command). The run's task runner
    adopts it at its first use and closes it with the run; one not adopted (a run stopped before it began) is
    closed here, and so is the server its workers forked from: this is for a process that runs one flow (the CLI).
    Nothing starts when the run connects to `runtime.dask_address`."""
    if runtime.dask_address:
        yield
        return
    early = _EarlyCluster(local_cluster_kwargs(runtime))

    def start() -> None:
        with contextlib.suppress(Exception):  # the run then starts its own cluster, and reports what fails there
            early.cluster = distributed.LocalCluster(**early.kwargs)
            early.client = distributed.Client(early.cluster)
            early.warm_ups = _submit_warm_ups(early.client, warm_up)

    starter = threading.Thread(target=start, daemon=True, name="negforge-dask-early")
    starter.start()
    _EARLY.append((starter, early))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _EARLY.remove((starter, early))
        starter.join()
        if not early.adopted:  # a run stopped before it began, or one that started a cluster of its own
            close_bounded("the local Dask cluster started for the run", lambda: _close_early(early))
        _stop_forkserver()


def _close_early(early: _EarlyCluster) -> None:
    """Close a cluster started early that no run adopted, its workers killed first."""
    if early.cluster and early.cluster.status == Status.running:
        early.cluster.sync(_kill_workers, early.cluster)
    if early.client:
        early.client.close()
    if early.cluster:
        early.cluster.close()


def is_forkserver(process: psutil.Process) -> bool:
    """Whether `process` is a multiprocessing forkserver (local workers are its children)."""
    return "multiprocessing.forkserver" in " ".join(process.cmdline())


def _stop_forkserver() -> None:
    """Kill the process the workers forked from, once this process has no more use for it: left to exit on its own
    when this one does, it spends ~2 s tearing down torch while holding this process's stdout and stderr open."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if is_forkserver(child):
                child.kill()


def _adopt_early(kwargs: dict) -> _EarlyCluster | None:
    """The cluster started early for a run with these LocalCluster arguments, once it is up; None if there is none
    (or it failed to start: the run then starts its own, and reports the error if it recurs)."""
    for starter, early in list(_EARLY):
        if early.kwargs == kwargs:
            _EARLY.remove((starter, early))
            starter.join()
            return early if early.cluster and early.warm_ups else None
    return None


_STARTING = threading.Lock()  # the cluster may be started from a background thread and at the first submit


class BuildTaskRunner(DaskTaskRunner):
    """A DaskTaskRunner whose cluster comes from the run's `config.runtime`, decided at the first submit, or earlier
    with `start_in_background` (the local cluster then starts while the flow ingests)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._warm_ups: list = []
        self._mirror_plugins: set[str] = set()

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:
        """Submit as prefect-dask does; with the workdir on an object store, through the mirrors
        (flows/orchestration/workdir_mirror.py)."""
        if not mirrors():
            return super().submit(task, parameters, wait_for, dependencies)
        register_mirrors(self.client, self._mirror_plugins)
        return pulling(super().submit(task, handed_out(parameters), wait_for, dependencies))

    def duplicate(self) -> BuildTaskRunner:
        return type(self)()

    @property
    def client(self):
        with _STARTING:
            if not self._client:
                runtime = _run_runtime()
                if runtime.dask_address:
                    self.address = runtime.dask_address
                    client = DaskTaskRunner.client.fget(self)
                    client.register_plugin(WorkerSetup(), name="negforge-worker-setup")
                    return client
                self.cluster_class, self.cluster_kwargs = distributed.LocalCluster, local_cluster_kwargs(runtime)
                self._adopt(_adopt_early(self.cluster_kwargs))
            return DaskTaskRunner.client.fget(self)

    def _adopt(self, early: _EarlyCluster | None) -> None:
        """Use a cluster started early as this run's own: closed with the run, its warm-ups already submitted."""
        if early:
            self._cluster = self._exit_stack.enter_context(early.cluster)
            self._exit_stack.callback(early.client.close)
            self._warm_ups = early.warm_ups
            early.adopted = True

    def __exit__(self, exc_type: type[BaseException] | None, *rest: Any) -> None:
        """A local cluster's workers are killed first, however the run ended: a finished run has its results (closing
        them one by one took ~2 s of every build), and a run stopped by a signal (KeyboardInterrupt, Prefect's
        TerminationSignal) would otherwise give a worker busy in a model call 4 s to finish. Dask's warnings about
        the killed workers are expected then, and muted while the cluster closes. The close is bounded and cannot
        fail the run (`close_bounded`)."""
        if not (self.cluster_class and self._cluster):
            super().__exit__(exc_type, *rest)
            return
        logger = logging.getLogger("distributed")
        level = logger.level
        logger.setLevel(logging.ERROR)

        def close() -> None:
            try:
                self._cluster.sync(_kill_workers, self._cluster)
            finally:
                DaskTaskRunner.__exit__(self, exc_type, *rest)

        if close_bounded("the run's local Dask cluster", close):
            logger.setLevel(level)  # else its close goes on: its warnings about the killed workers stay muted

    def start_in_background(self, warm_up: Callable[[], Any] | None = None) -> threading.Thread:
        """Start (or connect to) the cluster in a thread that sees this flow run's context; join it to wait.

        On a local cluster of the run's own, `warm_up` then runs once on every worker, as a plain Dask task (no Prefect
        task run), so that what every task needs first (the model) loads while the flow ingests: a cold build's plan
        loaded it on one worker while the other idled (the embedding stage of a 240-text build: 13.6 s -> 9.6 s). An
        existing cluster's workers get it too: a worker that has the model already returns at once."""
        def start() -> None:
            client = self.client
            if warm_up and not self._warm_ups:
                self._warm_ups = _submit_warm_ups(client, warm_up)

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
