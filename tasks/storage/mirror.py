"""A workdir on an object store, seen by each process as a private local folder that mirrors it.

The stages read and write local files: numpy maps the vector matrices, FAISS and bm25s open local files, polars
writes parquet. With `runtime.workdir` on a store, every process (the flow, each Dask worker) keeps its own mirror
under its cache folder, and only store URLs cross between processes:

- what a task is handed names store URLs; the task's process maps them to its mirror and pulls those files (a file,
  or every file under a folder), skipping what it already holds at the same size;
- the shared caches (the embedding store, the BM25 indexes) are pulled by the code that reads them, a part or an index
  at a time, never because a task names the workdir;
- after a task, and before the flow hands work out, the process pushes what it wrote or changed since its last
  push (the embedding store pushes each part as soon as it is written, so a killed task loses at most the part it
  was embedding), and deletes on the store what it deleted (a compacted part, a stopped run's staging folder);
  per-process state is never pushed (locks, temporary files, the store's key index, parts set aside as damaged);
- a task's result names store URLs again, which the flow maps to its own mirror and pulls.

Each process's mirror is private (a folder per process): two processes never push each other's half-written files.
So the store holds every result once its task has returned, a run killed and started again finds there what its
tasks finished, and a worker on another machine needs nothing of the flow's machine but the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from negforge.tasks.storage.location import Location

LAZY = ("", "/embeddings", "/lexical")  # below the workdir: pulled by the code that reads them, never as a whole
PROCESS_STATE = ("index.parquet",)  # rebuilt by each process from the files it holds (tasks/embedding/store.py)


def cache_root(cache_dir: str | Path | None) -> Path:
    """The local cache folder: `runtime.cache_dir`, or one in the temporary folder."""
    return Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "negforge-cache"


def _process_state(name: str) -> bool:
    """Files that describe one process's view, not results: never pushed."""
    return name.startswith((".", "damaged-")) or ".tmp" in name or name in PROCESS_STATE


class Mirror:
    """The local mirror of one workdir URL in this process."""

    def __init__(self, url: str, options: dict[str, Any] | None, cache_dir: str | Path | None) -> None:
        self.location = Location.of(url, options)
        self.url = self.location.url
        key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        folder = cache_root(cache_dir) / "workdirs" / key
        _remove_abandoned(folder)
        self.root = folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.root.mkdir(parents=True, exist_ok=True)
        self._synced: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) as last pulled or pushed
        self._lock = threading.Lock()
        self.requests = {"list": 0, "get": 0, "put": 0, "delete": 0}

    def local(self, url: str) -> str | None:
        """This URL's path in the mirror; None for a URL outside the workdir."""
        if url == self.url or url.startswith(self.url + "/"):
            return str(self.root) + url[len(self.url):]
        return None

    def remote(self, path: str) -> str | None:
        """A mirror path's URL; None for a path outside the mirror."""
        root = str(self.root)
        if path == root or path.startswith(root + "/"):
            return self.url + path[len(root):]
        return None

    def _relative(self, path: str | Path) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def pull(self, path: str | Path) -> None:
        """Bring the store's file at `path` (a mirror path), or every file under that folder, into the mirror;
        files already here at the same size are kept."""
        relative = self._relative(path)
        where = self.location if relative == "." else self.location / relative
        self.requests["list"] += 1
        found = where.files()
        if not found and not relative.endswith("/") and relative != ".":
            size = _file_size(where)
            self.requests["list"] += 1
            found = {"": size} if size is not None else {}
        for name, size in found.items():
            target, source = (Path(path) / name, where / name) if name else (Path(path), where)
            with self._lock:
                if target.is_file() and target.stat().st_size == size:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
                self.requests["get"] += 1
                source.fs.get_file(source.path, str(partial))
                os.replace(partial, target)
                self._synced[self._relative(target)] = _stamp(target)

    def push(self) -> None:
        """Send the store what this process wrote, changed or deleted in the mirror since its last push."""
        with self._lock:
            present = {}
            for folder, folders, names in os.walk(self.root):
                folders[:] = [name for name in folders if not name.startswith(".")]  # temporary or hidden
                for name in names:
                    if not _process_state(name):
                        path = Path(folder) / name
                        present[self._relative(path)] = path
            for relative, path in sorted(present.items()):
                stamp = _stamp(path)
                if self._synced.get(relative) != stamp:
                    self._upload(path)
            for relative in sorted(set(self._synced) - set(present)):
                self.requests["delete"] += 1
                (self.location / relative).remove()
                del self._synced[relative]

    def push_file(self, path: Path) -> None:
        """Send one file to the store now (a part that a killed task must not lose), not at the task's end."""
        with self._lock:
            self._upload(path)

    def _upload(self, path: Path) -> None:
        target = self.location / self._relative(path)
        self.requests["put"] += 1
        target.fs.put_file(str(path), target.path)
        self._synced[self._relative(path)] = _stamp(path)

    def lazy(self, url: str) -> bool:
        """Whether a URL is the workdir or one of its shared caches, pulled piecewise by their readers."""
        return url in {self.url + suffix for suffix in LAZY}

    def close(self) -> None:
        """Remove this process's mirror (its results are on the store)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _remove_abandoned(folder: Path) -> None:
    """Remove the mirrors of processes of this host that are gone (a killed worker never removes its own)."""
    for mirror in folder.glob("*-*"):
        pid = mirror.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(mirror, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _file_size(location: Location) -> int | None:
    try:
        info = location.fs.info(location.path)
    except FileNotFoundError:
        return None
    return int(info["size"]) if info.get("type") == "file" else None


_MIRRORS: dict[str, Mirror] = {}  # this process's mirrors, by workdir URL
_REGISTERING = threading.Lock()


def mirror_of(url: str, options: dict[str, Any] | None, cache_dir: str | Path | None) -> Mirror:
    """This process's mirror of a workdir URL (made at first use)."""
    with _REGISTERING:
        key = Location.of(url).url
        if key not in _MIRRORS:
            _MIRRORS[key] = Mirror(url, options, cache_dir)
        return _MIRRORS[key]


def mirrors() -> list[Mirror]:
    return list(_MIRRORS.values())


def forget(mirror: Mirror) -> None:
    """Drop a mirror from this process (its folder removed)."""
    with _REGISTERING:
        _MIRRORS.pop(mirror.url, None)
    mirror.close()


def _mapped(value: Any, convert: Callable[[str], str]) -> Any:
    """`value` with every string that `convert` changes replaced, through tuples, lists, dicts, dataclasses and
    pydantic models (what tasks take and return); the same object when nothing changed."""
    if isinstance(value, str):
        return convert(value)
    if isinstance(value, (list, tuple)):
        items = [_mapped(item, convert) for item in value]
        if all(new is old for new, old in zip(items, value)):
            return value
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        items = {key: _mapped(item, convert) for key, item in value.items()}
        return value if all(items[key] is value[key] for key in value) else items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {f.name: new for f in dataclasses.fields(value) if f.init
                   and (new := _mapped(getattr(value, f.name), convert)) is not getattr(value, f.name)}
        return dataclasses.replace(value, **changed) if changed else value
    if isinstance(value, BaseModel):
        changed = {name: new for name in type(value).model_fields
                   if (new := _mapped(getattr(value, name), convert)) is not getattr(value, name)}
        return value.model_copy(update=changed) if changed else value
    return value


def to_remote(value: Any) -> Any:
    """`value` with every path in a mirror of this process replaced by its store URL."""
    def convert(text: str) -> str:
        for mirror in mirrors():
            url = mirror.remote(text)
            if url is not None:
                return url
        return text

    return _mapped(value, convert) if _MIRRORS else value


def to_local(value: Any) -> Any:
    """`value` with every workdir URL replaced by its path in this process's mirror, the files it names pulled
    (the workdir itself and its shared caches excepted: their readers pull what they read)."""
    named: list[tuple[Mirror, str]] = []

    def convert(text: str) -> str:
        for mirror in mirrors():
            path = mirror.local(text)
            if path is not None:
                if not mirror.lazy(text):
                    named.append((mirror, path))
                return path
        return text

    if not _MIRRORS:
        return value
    mapped = _mapped(value, convert)
    for mirror, path in dict.fromkeys(named):
        mirror.pull(path)
    return mapped


def in_mirror(path: str | Path) -> bool:
    """Whether a path is in a mirror of this process (its workdir is on an object store)."""
    return any(mirror.remote(str(path)) is not None for mirror in mirrors())


def fetch(path: str | Path) -> None:
    """Pull a mirror path (file or folder) from the store; nothing for a path that is not in a mirror (a local
    workdir)."""
    for mirror in mirrors():
        if mirror.remote(str(path)) is not None:
            mirror.pull(path)
            return


def push_now(path: str | Path) -> None:
    """Send a mirror file to the store at once; nothing for a path that is not in a mirror."""
    for mirror in mirrors():
        if mirror.remote(str(path)) is not None:
            mirror.push_file(Path(path))
            return


def push_all() -> None:
    """Push every mirror of this process."""
    for mirror in mirrors():
        mirror.push()
