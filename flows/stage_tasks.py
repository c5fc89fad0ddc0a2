"""How the flows make Prefect tasks of the functions in tasks/: readable run names, no result caching, and retries
of transient errors only for the tasks that touch storage or models."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from negforge.tasks.preflight import permanent


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a second try can fix: I/O, network and timeouts, not bad input, a failed check or a permanent
    OS error (not a folder, read-only, no permission, no space)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, (OSError, TimeoutError, ConnectionError)) and not permanent(error)


def stage_task(fn: Any, name: str, retried: bool = False) -> Any:
    """A task whose runs are named readably; `retried` ones (storage, models) retry transient errors with backoff."""
    retry = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": _transient} if retried else {}
    return task(fn, name=name, task_run_name=name, cache_policy=NO_CACHE, **retry)
