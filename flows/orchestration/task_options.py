"""How negforge declares its Prefect tasks: readable run names, no Prefect result caching (stages are idempotent
through their own content-addressed outputs), and retries only where a second try can help."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from contextlib import contextmanager
from typing import Any, Iterator

from prefect import tags, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TagsContext

from negforge.flows.orchestration.console_lines import escape_console_lines
from negforge.flows.orchestration.workdir_mirror import worker_side
from negforge.tasks.runtime.os_errors import permanent


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a second try can fix: I/O, network and timeouts, not bad input, a failed check or a permanent
    OS error (not a folder, read-only, no permission, no space)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, (OSError, TimeoutError, ConnectionError)) and not permanent(error)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    return getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None)


def _task_body(fn: Any) -> Any:
    """`fn` as a task runs it: with the process's console lines escaped (flows/orchestration/console_lines.py; a remote
    worker's too, which no negforge code set up), handing the memory it freed back to the OS when it returns. glibc
    keeps freed pages in its arenas, so a worker held ~200 MB more than it used after embedding (measured with the 100k
    bench), and the whole tree's peak is the sum of such high-water marks. No full `gc.collect()`: with torch and
    Great Expectations loaded it walks ~750k objects (0.35 s) per task run, seconds per small build, and the freed
    pages were glibc's, not cycles'. (Not a Prefect state hook: those log two lines per task run.) With the workdir
    on an object store, a worker runs it through its mirror (flows/orchestration/workdir_mirror.py)."""
    fn = worker_side(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        escape_console_lines()
        try:
            return fn(*args, **kwargs)
        finally:
            trim = _malloc_trim()
            if trim:
                trim(0)

    return run


def negforge_task(fn: Any, name: str, retried: bool = False) -> Any:
    """A task whose runs are named readably, escape their console lines and give back the memory they freed;
    `retried` ones (storage, models) retry transient errors with backoff."""
    retry = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": _transient} if retried else {}
    return task(_task_body(fn), name=name, task_run_name=name, cache_policy=NO_CACHE, **retry)


def run_tags(dataset: str) -> list[str]:
    """The tags of a dataset's flow runs, from the CLI, a deployment or a subflow: the UI filters a dataset's runs."""
    return ["negforge", dataset]


def dataset_tags(dataset: str) -> Any:
    """`run_tags` around the CLI's runs and the subflows a flow starts (inside a flow's body the task runs are
    untagged, and a subflow run takes its tags from there)."""
    return tags(*run_tags(dataset))


@contextmanager
def untagged_task_runs() -> Iterator[None]:
    """Run a flow's body with no tags on its task runs; the flow run keeps its own (the CLI's `negforge` and dataset
    tags, or the deployment's), so the UI still filters a dataset's runs. Prefect checks tag concurrency limits before
    every tagged task run starts and remembers "no limit for these tags" for 5 s only: on a build's own cluster the
    first tasks of each stage then waited ~2 s (py-spy: in `acquire_concurrency_slots_with_lease`, all else idle;
    a 100k build had ~7 s of such gaps, and none without tags)."""
    with TagsContext(current_tags=set()):
        yield
