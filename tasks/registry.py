"""The registry: immutable versions `<registry>/<dataset>/vNNNN/` and a `LATEST` file naming the newest good one.

A version is staged in a hidden folder beside the versions, then, under an exclusive lock, given the next number and
renamed into place, so it is whole or absent; `LATEST` is replaced atomically afterwards. Content equal to the newest
version's (same data hash) publishes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

VERSION = re.compile(r"^v(\d{4,})$")
HASHED_FOLDERS = ("data", "ids", "exports")


def data_hash(folder: Path) -> str:
    """sha256 over the relative paths and bytes of the published data files."""
    digest = hashlib.sha256()
    for sub in HASHED_FOLDERS:
        for file in sorted((folder / sub).rglob("*")) if (folder / sub).exists() else []:
            if file.is_file():
                digest.update(f"{file.relative_to(folder)}\n".encode())
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Registry:
    """The versions of one dataset in a local (POSIX) registry folder."""

    def __init__(self, root: str | Path, dataset: str) -> None:
        self.folder = Path(root) / dataset
        self.dataset = dataset

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.folder.exists():
            return []
        names = [p.name for p in self.folder.iterdir() if p.is_dir() and VERSION.match(p.name)]
        return sorted(names, key=lambda n: int(n[1:]))

    def latest(self) -> str | None:
        path = self.folder / "LATEST"
        return path.read_text().strip() if path.exists() else None

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.folder / version / "manifest.json"
        if not VERSION.match(version) or not path.exists():
            raise KeyError(f"{self.folder}: no version {version} (have: {', '.join(self.versions()) or 'none'})")
        return json.loads(path.read_text())

    def intact(self, version: str) -> bool:
        """Whether the version's data files are all there with their recorded sizes (cheap: no hashing)."""
        folder = self.folder / version
        files = self.manifest(version).get("files", {})
        return all((folder / config / name).is_file() for config in ("data", "ids") for name in files.get(config, []))

    def staging(self) -> Path:
        """A fresh hidden folder on the registry's filesystem, for building a candidate version."""
        path = self.folder / f".staging-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def publish(self, staged: Path, finish: Callable[[Path, str, str | None, str], None]) -> tuple[Path, bool]:
        """Give `staged` the next version number, unless it equals the newest version.

        Args:
            staged: a folder made by `staging()` holding data/ and ids/.
            finish: writes the manifest and card into the staged folder, given (folder, version, parent, hash).

        Returns:
            The version folder and whether it is new (False: up to date, nothing published).
        """
        digest = data_hash(staged)
        with self._lock():
            parent = self.latest()
            if parent and self.manifest(parent).get("data_hash") == digest:
                shutil.rmtree(staged, ignore_errors=True)
                return self.folder / parent, False
            existing = self.versions()
            version = f"v{(int(existing[-1][1:]) + 1 if existing else 1):04d}"
            target = self.folder / version
            try:
                finish(staged, version, parent, digest)
                os.rename(staged, target)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            _fsync_dir(self.folder)
            _write_atomic(self.folder / "LATEST", version + "\n")
            return target, True

    def rollback(self, version: str) -> None:
        """Point LATEST at an existing version; nothing is deleted, and the next build still takes max + 1."""
        with self._lock():
            if version not in self.versions():
                raise KeyError(f"{self.folder}: no version {version} (have: {', '.join(self.versions()) or 'none'})")
            _write_atomic(self.folder / "LATEST", version + "\n")


def datasets(root: str | Path) -> list[Registry]:
    """Every dataset of a registry folder."""
    root = Path(root)
    return [Registry(root, p.name) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")] \
        if root.exists() else []
