"""The flow's and the workers' side of a workdir on an object store (tasks/storage/mirror.py).

The flow works in its own mirror: `mirrored` gives it the run's config with `runtime.workdir` set to that folder.
When it hands a task out (`BuildTaskRunner.submit`), it pushes what it wrote and the task's arguments name store
URLs; the worker maps them to its mirror, pulls what they name, runs the task, pushes what it wrote and returns URLs,
which the flow maps back and pulls when it reads the result. Workers learn where the workdir is, and with which
storage options, from a Dask worker plugin the flow registers on the cluster (so an external scheduler's workers,
started before the run, need nothing but the store's credentials in their environment or in the config's `storage`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from typing import Any, Callable, Iterator

import distributed
from distributed.diagnostics.plugin import WorkerPlugin
from prefect_dask.task_runners import PrefectDaskFuture

from negforge.schemas.config import BuildConfig
from negforge.tasks.registry.registries import on_object_store
from negforge.tasks.storage.mirror import forget, mirror_of, mirrors, push_all, to_local, to_remote


@contextlib.contextmanager
def mirrored(config: BuildConfig) -> Iterator[BuildConfig]:
    """The run's config as its flow uses it: an object-store workdir replaced by this process's mirror of it. At the
    end what the flow wrote last is pushed and the mirror dropped (after a failed run too, without that push: what its
    tasks finished is on the store already, for a resume)."""
    if not on_object_store(config.runtime.workdir):
        yield config
        return
    mirror = mirror_of(config.runtime.workdir, config.storage, config.runtime.cache_dir)
    try:
        yield config.model_copy(update={"runtime": config.runtime.model_copy(update={"workdir": str(mirror.root)})})
        mirror.push()
    finally:
        forget(mirror)


class MirrorPlugin(WorkerPlugin):
    """Tells a worker where a workdir on an object store is: it opens its own mirror of it."""

    def __init__(self, url: str, options: dict[str, Any], cache_dir: str | None) -> None:
        self.url, self.options, self.cache_dir = url, options, cache_dir
        self.name = "negforge-workdir-" + hashlib.sha256(url.encode()).hexdigest()[:12]

    def setup(self, worker: distributed.Worker) -> None:
        mirror_of(self.url, self.options, self.cache_dir)

    def teardown(self, worker: distributed.Worker) -> None:
        for mirror in mirrors():
            if mirror.url == self.url:
                forget(mirror)


def register_mirrors(client: distributed.Client, registered: set[str]) -> None:
    """Register a plugin on the cluster for each mirror of this process not registered yet (names in `registered`)."""
    for mirror in mirrors():
        plugin = MirrorPlugin(mirror.url, mirror.location.options, None)
        if plugin.name not in registered:
            client.register_plugin(plugin, name=plugin.name)
            registered.add(plugin.name)


class PullingFuture(PrefectDaskFuture):
    """A task's future whose result names paths in the flow's mirror, pulled from the store."""

    def result(self, *args: Any, **kwargs: Any) -> Any:
        return to_local(super().result(*args, **kwargs))


def handed_out(parameters: dict[str, Any]) -> dict[str, Any]:
    """A task's parameters as the flow hands them out: what the flow wrote pushed first, paths as store URLs."""
    push_all()
    return to_remote(parameters)


def pulling(future: PrefectDaskFuture) -> PrefectDaskFuture:
    return PullingFuture(wrapped_future=future.wrapped_future, task_run_id=future.task_run_id)


def _on_worker() -> bool:
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def worker_side(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as a worker runs it with a workdir on a store: store URLs in, its mirror's files pulled, what it wrote
    pushed, URLs out. Elsewhere (a local workdir, a task run in the flow's own process) `fn` itself."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not (mirrors() and _on_worker()):
            return fn(*args, **kwargs)
        args, kwargs = to_local((args, kwargs))
        result = fn(*args, **kwargs)
        push_all()
        return to_remote(result)

    return run
