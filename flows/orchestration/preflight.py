"""Preflight: before any work, check that the registry and the workdir can take what a run writes, so that a run
that cannot finish stops at once, naming the path and the figures, instead of after the whole pipeline. It checks
several domains (the runtime's storage and links, the registry's last version, the model's dimension), so it runs
here, above them.

Too little space for the registry (less than the previous version took) refuses the run: a publish that fails at
the end wastes all of it. Too little for the embedding store only warns: the estimate (every text embedded anew) is
an upper bound, and texts already in the store need no space. What no check can foresee (a disk that fills during
the run) ends as a permanent OS error (tasks/runtime/os_errors.py).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from negforge.schemas.config import BuildConfig, ConfigError, RuntimeConfig
from negforge.schemas.console_text import quoted, shortened
from negforge.tasks.embedding.model import embedding_dimension, resolve_model
from negforge.tasks.registry.registries import on_object_store
from negforge.tasks.registry.versions import Registry
from negforge.tasks.runtime.containment import inside
from negforge.tasks.runtime.os_errors import describe
from negforge.tasks.runtime.sizing import check_budget
from negforge.tasks.storage.location import Location, check_conditional_writes

DEFAULT_DIMENSION = 4096  # when the model's config does not say: as large as common embedding models get
SCHEDULER_TIMEOUT_S = 5  # a scheduler that has not answered by then is taken for absent (Dask itself waits 30 s, twice)


class StorageError(RuntimeError):
    """A folder negforge must write is not a writable folder, or holds too little free space."""


def _size(n: int) -> str:
    """Bytes in the largest unit (up to GiB) that keeps the figure at least 1."""
    value, unit = float(n), "bytes"
    for larger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def writable_folder(path: Path, setting: str) -> None:
    """`path` is a folder this process can write in, or can be made one (it is created)."""
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise StorageError(f"{setting}: {existing} is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise StorageError(f"{setting}: cannot write in {path} ({describe(error)})") from None


def _shortfall(path: Path, needed: int, what: str) -> str | None:
    free = shutil.disk_usage(path).free
    if free >= needed:
        return None
    return f"{path}: {_size(free)} free, {what} needs about {_size(needed)}"


def check_links(config: BuildConfig) -> None:
    """Refuse a run that would read or write through a symlink inside the registry or the workdir
    (tasks/runtime/containment.py): the dataset folder, its lock, LATEST and (when the run evaluates) evaluations, and
    the workdir's folders. The fingerprint and index folders below them are checked where the run first knows their
    names."""
    if not on_object_store(config.publish.registry):  # an object store has no links
        dataset = inside(config.publish.registry, config.publish.dataset)
        for name in (".lock", "LATEST"):
            inside(dataset, name)
        if config.evaluate.eval:
            inside(dataset, "evaluations", entries=True)
    for name in ("runs", "embeddings", "lexical"):
        inside(config.runtime.workdir, name)


def preflight(config: BuildConfig) -> None:
    """Refuse a run whose registry or workdir cannot be written or holds a symlink where it writes, or whose registry
    lacks the space of the version before (the best estimate of the next one), or whose `runtime.dask_address` has no
    scheduler."""
    check_scheduler(config.runtime)
    check_links(config)
    writable_folder(Path(config.runtime.workdir), "runtime.workdir")
    if on_object_store(config.publish.registry):  # no space to estimate; what matters is that versions commit safely
        check_object_stores(config)
        return
    registry = Registry(config.publish.registry, config.publish.dataset)
    writable_folder(registry.folder, "publish.registry")
    latest = registry.latest()
    if latest:
        size = sum(p.stat().st_size for p in (registry.folder / latest).rglob("*") if p.is_file())
        short = _shortfall(registry.folder, size, f"a new version (as large as {latest}, the one before)")
        if short:
            raise StorageError(f"publish.registry {short}; free space there or choose another publish.registry")


def check_object_stores(config: BuildConfig) -> None:
    """Refuse an object-store `publish.registry` or `runtime.workdir` that cannot be used safely: missing,
    unreachable, not writable, or without conditional writes (tasks/storage/location.py check_conditional_writes);
    nothing for a local folder."""
    for setting, url in (("publish.registry", config.publish.registry), ("runtime.workdir", config.runtime.workdir)):
        if on_object_store(url):
            check_conditional_writes(Location.of(url, config.storage), setting)


async def _connect_and_close(address: str) -> None:
    from distributed.comm import connect

    comm = await connect(address, timeout=SCHEDULER_TIMEOUT_S)
    await comm.close()


def check_scheduler(runtime: RuntimeConfig) -> None:
    """Refuse, before any other work, a `runtime.dask_address` where no Dask scheduler answers: one line instead of
    two 30 s connection attempts and their tracebacks at the first task."""
    if not runtime.dask_address:
        return
    try:
        asyncio.run(_connect_and_close(runtime.dask_address))
    except Exception as error:  # refused, timed out, unknown scheme, or something that is not a Dask scheduler
        raise ConfigError(f"runtime.dask_address {quoted(runtime.dask_address)}: no Dask scheduler answers there "
                          f"({shortened(str(error), 200)}); start one or unset runtime.dask_address") from None


def check_budget_for_the_model(config: BuildConfig) -> None:
    """Refuse, before ingest, a `runtime.memory_budget_mb` too small for one block of the model's vectors, when the
    model's config says its dimension (the bundled model's does). Counted for one worker, the largest default budget:
    the build checks again with the cluster's real worker count, and with the vectors' width for other models."""
    dimension = embedding_dimension(resolve_model(config.embed.model))
    if dimension:
        check_budget(config.runtime, 1, dimension)


def store_shortfall(workdir: str, texts: int, dimension: int | None) -> str | None:
    """A warning when the embedding store's filesystem has less room than `texts` new float32 vectors take
    (`dimension`: the model's, when its config says; else DEFAULT_DIMENSION)."""
    dimension = dimension or DEFAULT_DIMENSION
    short = _shortfall(Path(workdir), texts * dimension * 4,
                       f"the embedding store ({texts} texts x {dimension} dimensions x 4 bytes, at most)")
    return f"runtime.workdir {short}; texts already in the store need no space" if short else None
