"""The registry: immutable versions `<registry>/<dataset>/vNNNN/` and a `LATEST` file naming the newest good one.

A version is staged in a hidden folder beside the versions, held by a lock while its build lives, then, under an
exclusive lock, given the next number and renamed into place, so it is whole or absent; `LATEST` is replaced
atomically afterwards. Content equal to the newest version's (same data hash) publishes nothing, unless that
version's files are damaged. Its manifest lists every file with sha256 and size, so damage can be found.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from negforge.schemas.config import ConfigError, PublishConfig, validate_config
from negforge.schemas.console_text import printable
from negforge.schemas.manifest import FileEntry, Manifest
from negforge.tasks.runtime.containment import inside, refuse_link

VERSION = re.compile(r"^v(\d{4,})$")
HASHED_FOLDERS = ("data", "ids", "exports")
STAGING = ".staging-"
EXPECTED_FILES = {"LATEST", ".lock"}
EXPECTED_FOLDERS = {".quarantine", "evaluations"}
MANIFEST = "manifest.json"

log = logging.getLogger(__name__)
_held: dict[Path, int] = {}  # staging folders of builds in this process -> the descriptor holding their lock
_published: list[object] = []  # versions this process published (folders or store locations), oldest first


class NotFound(LookupError):
    """A dataset or version the user named is absent or unusable (a user error, unlike a KeyError)."""


def check_dataset(name: str) -> str:
    """A dataset argument, checked as `publish.dataset` is, so that it names a folder inside its registry."""
    return validate_config({"dataset": name}, "argument", PublishConfig).dataset


def check_version(name: str) -> str:
    """A version argument: vNNNN, nothing that could name a path."""
    if not VERSION.match(name):
        raise ConfigError(f"version {name!r}: expected v followed by at least four digits, e.g. v0001")
    return name


def _file_entry(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        return {"sha256": hashlib.file_digest(handle, "sha256").hexdigest(), "size": path.stat().st_size}


def _files(folder: Path) -> list[str]:
    """Relative paths of the files of a version folder but its manifest, sorted; symlinks are no files of it."""
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.relative_to(folder) != Path(MANIFEST)]


def _symlinks(folder: Path) -> list[str]:
    """Relative paths of the symlinks under a version folder, sorted; a linked folder is listed, never entered."""
    found = []
    for parent, folders, files in os.walk(folder):  # followlinks=False
        found += [str(Path(parent, n).relative_to(folder)) for n in folders + files if Path(parent, n).is_symlink()]
    return sorted(found)


def checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `folder` but the manifest, by relative path."""
    return {name: _file_entry(folder / name) for name in _files(folder)}


def data_hash(files: dict[str, dict[str, Any]]) -> str:
    """sha256 over the relative paths and contents of the published data files (data/, ids/, exports/)."""
    digest = hashlib.sha256()
    for sub in HASHED_FOLDERS:
        for name in sorted(Path(n) for n in files if Path(n).parts[0] == sub):
            digest.update(f"{name}\n".encode())
            digest.update(bytes.fromhex(files[str(name)]["sha256"]))
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, text: str) -> None:
    """Write and fsync a file; an OSError names the file (a failed write() alone names none)."""
    try:
        with path.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        _write(tmp, text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def parse_manifest(data: bytes, path: object) -> Manifest:
    """A version's manifest from its bytes; NotFound naming `path` when it is unreadable or not a manifest."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NotFound(f"{path}: unreadable ({error})") from None
    if not isinstance(manifest, dict):
        raise NotFound(f"{path}: not a manifest (a JSON {type(manifest).__name__})")
    try:
        return Manifest.model_validate(manifest)
    except ValidationError as error:
        first = error.errors()[0]
        raise NotFound(f"{path}: not a manifest ({'.'.join(map(str, first['loc']))}: {first['msg']})") from None


def _expected(path: Path) -> bool:
    """Whether a dataset folder entry is one negforge made; anything else (a symlink above all) is ignored."""
    if path.is_symlink():
        return False
    if path.name in EXPECTED_FILES:
        return path.is_file()
    return path.is_dir() and (bool(VERSION.match(path.name)) or path.name in EXPECTED_FOLDERS
                              or path.name.startswith(STAGING))


class Registry:
    """The versions of one dataset in a local (POSIX) registry folder."""

    def __init__(self, root: str | Path, dataset: str) -> None:
        self.dataset = check_dataset(dataset)
        self.folder = Path(root) / self.dataset

    def versions(self) -> list[str]:
        """Version folders (real folders named vNNNN, with or without a manifest), oldest first."""
        if not self.folder.is_dir() or self.folder.is_symlink():  # a linked dataset folder lies outside the registry
            return []
        names = [p.name for p in self.folder.iterdir() if VERSION.match(p.name) and _expected(p)]
        return sorted(names, key=lambda n: int(n[1:]))

    def unexpected(self) -> list[Path]:
        """Entries of the dataset folder that negforge did not make (symlinks, stray files); never versions."""
        if self.folder.is_symlink():
            return [self.folder]
        return sorted(p for p in self.folder.iterdir() if not _expected(p)) if self.folder.is_dir() else []

    def version_folder(self, version: str) -> Path:
        """The folder of an existing version (with or without a manifest); NotFound otherwise."""
        if check_version(version) not in self.versions():
            raise NotFound(f"{self.folder}: no version {version} (have: {', '.join(self.versions()) or 'none'})")
        return self.folder / version

    def local_copy(self, version: str) -> Path:
        """The version's files as a local folder (here: the version's own folder)."""
        return self.version_folder(version)

    def side_folder(self, name: str) -> Path:
        """The local dataset folder holding `name/`, a folder beside the versions (evaluations): here, the dataset
        folder itself."""
        return self.folder

    def push_side_folder(self, name: str) -> None:
        """Store what was written into `side_folder(name)`: here it is stored already."""

    def manifest(self, version: str) -> Manifest:
        """A version's manifest; NotFound when the version or its manifest is absent, unreadable or not a manifest."""
        path = self.version_folder(version) / MANIFEST
        if path.is_symlink():
            raise NotFound(f"{path}: a symlink, not read (a version holds only its own files)")
        try:
            return parse_manifest(path.read_bytes(), path)
        except FileNotFoundError:
            raise NotFound(f"{self.folder / version}: no {MANIFEST} (an unfinished or damaged version)") from None

    def problems(self, version: str, hashes: bool = False) -> list[str]:
        """What is wrong with a version: its manifest, files missing, changed in size or, with `hashes`, in content,
        or not listed, and symlinks (never followed: what they point to lies outside the registry's care).
        Without hashes it is one stat per file, cheap enough to check LATEST before trusting it. Versions published
        before manifests listed their files have nothing to compare and report nothing but symlinks."""
        folder = self.folder / version
        links = _symlinks(folder)
        found = [f"{printable(name)}: a symlink, not followed (a version holds only its own files)" for name in links]
        try:
            listed = self.manifest(version).checksums
        except NotFound as error:
            return found + [str(error)] if MANIFEST not in links else found
        if listed is None:
            return found
        found += [f"{printable(name)}: not listed in the manifest" for name in _files(folder) if name not in listed]
        for name, expected in listed.items():
            path = folder / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                found.append(f"{name}: not a path inside the version")
            elif any(Path(name).is_relative_to(link) for link in links):
                continue  # reached through a symlink reported above: not read
            elif not path.is_file() or path.is_symlink():
                found.append(f"{name}: missing")
            elif path.stat().st_size != expected.size:
                found.append(f"{name}: {path.stat().st_size} bytes, the manifest says {expected.size}")
            elif hashes and _file_entry(path)["sha256"] != expected.sha256:
                found.append(f"{name}: sha256 differs from the manifest's")
        return found

    def whole_manifest(self, version: str) -> Manifest:
        """The manifest of a version whose files are all there (cheap check); NotFound naming the damage otherwise."""
        manifest = self.manifest(version)
        damage = self.problems(version)
        if damage:
            raise NotFound(f"{self.dataset} {version} is damaged: {'; '.join(damage)} "
                           f"(see: negforge versions verify {self.dataset}@{version} --registry {self.folder.parent})")
        return manifest

    def pointer(self) -> str | None:
        """What LATEST says, checked or not (nothing in a linked dataset folder: it is not read through)."""
        path = self.folder / "LATEST"
        if self.folder.is_symlink() or not _expected(path):
            return None
        return path.read_text(encoding="utf-8", errors="replace").strip()

    def latest(self) -> str | None:
        """The version LATEST names, when it is one with a readable manifest (else None: see `latest_problem`)."""
        name = self.pointer()
        return name if name and self.latest_problem() is None else None

    def latest_problem(self) -> str | None:
        """Why LATEST names nothing valid, with the command that fixes it; None when it is fine or absent."""
        name = self.pointer()
        if name is None:
            return None
        try:
            self.manifest(check_version(name))
            return None
        except (NotFound, ConfigError) as error:
            reason = str(error)
        whole = [v for v in self.versions() if not self.problems(v)]
        fix = (f"fix: negforge versions rollback {self.dataset} {whole[-1]} --registry {self.folder.parent}"
               if whole else "no version is whole; the next build publishes one")
        return f"{self.folder / 'LATEST'} names {name!r}, which is not a usable version ({reason}); {fix}"

    def staging(self) -> Path:
        """A fresh hidden folder on the registry's filesystem for a candidate version, locked while this process
        lives, so that the next publish or `negforge gc` removes it only once its build is gone."""
        with self._lock():
            path = self.folder / f"{STAGING}{uuid.uuid4().hex}"
            path.mkdir()
            fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _held[path] = fd
        return path

    def discard(self, staged: Path) -> None:
        """Remove a staging folder of this process and release its lock."""
        shutil.rmtree(staged, ignore_errors=True)
        fd = _held.pop(staged, None)
        if fd is not None:
            os.close(fd)

    @contextmanager
    def staged(self) -> Iterator[Path]:
        """A staging folder (see `staging`) for the duration of a block, removed however the block ends (an error, a
        refused candidate, Ctrl-C or SIGTERM), unless `publish` moved it into place: a stopped build left it behind
        until the next publish or `negforge gc`, and said that nothing was left."""
        path = self.staging()
        try:
            yield path
        finally:
            self.discard(path)

    def _abandoned(self) -> list[Path]:
        """Staging folders whose lock is free: their build died (or predates the lock). Call under the lock."""
        found = []
        for path in sorted(self.folder.glob(f"{STAGING}*")) if self.folder.is_dir() else []:
            if path in _held or not _expected(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                found.append(path)
            except BlockingIOError:
                continue
            finally:
                os.close(fd)
        return found

    def remove_abandoned(self, dry_run: bool = False) -> list[Path]:
        """Remove (or, with dry_run, list) the staging folders of builds that are gone."""
        if not self.folder.is_dir():
            return []
        with self._lock():
            found = self._abandoned()
            for path in [] if dry_run else found:
                shutil.rmtree(path, ignore_errors=True)
        return found

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """The dataset's exclusive lock. A linked dataset folder or `.lock` is refused, never written through
        (tasks/runtime/containment.py; O_NOFOLLOW: one linked after the check is refused too)."""
        inside(self.folder.parent, self.dataset, ".lock")
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _warn_about_the_folder(self) -> None:
        for path in self.unexpected():
            log.warning("%s: not made by negforge (%s), ignored", path, "a symlink" if path.is_symlink() else
                        "a file" if path.is_file() else "an unexpected folder")
        if self.latest_problem():
            log.warning("%s", self.latest_problem())

    def publish(self, staged: Path, manifest: Manifest, card: Callable[[Manifest], str]) -> tuple[Path, bool]:
        """Give `staged` the next version number, unless it equals the newest version and that one is whole.

        Args:
            staged: a folder made by `staging()` holding data/, ids/ and the rest of the version.
            manifest: the version's manifest; version, data_hash, checksums and, when it is None, parent (the
                version LATEST names) are filled in here.
            card: renders README.md from the completed manifest.

        Returns:
            The version folder and whether it is new (False: up to date, nothing published).
        """
        files = checksums(staged)
        digest = data_hash(files)
        with self._lock():
            refuse_link(self.folder / "LATEST")  # replacing a linked LATEST would remove someone else's link
            for path in self._abandoned():
                log.warning("removing %s, left by a build that is gone", path)
                shutil.rmtree(path, ignore_errors=True)
            self._warn_about_the_folder()
            latest = self.latest()
            if latest and self.manifest(latest).data_hash == digest:
                damage = self.problems(latest)
                if not damage:
                    self.discard(staged)
                    return self.folder / latest, False
                log.warning("%s %s has the same data but is damaged (%s): publishing a whole new version",
                            self.dataset, latest, "; ".join(damage))
            existing = self.versions()
            version = f"v{(int(existing[-1][1:]) + 1 if existing else 1):04d}"
            target = self.folder / version
            manifest.version, manifest.parent, manifest.data_hash = version, manifest.parent or latest, digest
            try:
                _write(staged / "README.md", card(manifest))
                manifest.checksums = {name: FileEntry(**entry) for name, entry in
                                      (files | {"README.md": _file_entry(staged / "README.md")}).items()}
                _write(staged / MANIFEST, manifest.json_text())
                os.rename(staged, target)
                try:
                    _fsync_dir(self.folder)
                    _write_atomic(self.folder / "LATEST", version + "\n")
                except BaseException:
                    os.rename(target, staged)  # LATEST could not follow: the version must not stay either
                    raise
                record_published(target)
            finally:
                self.discard(staged)
            return target, True

    def rollback(self, version: str) -> None:
        """Point LATEST at an existing whole version; nothing is deleted, and the next build still takes max + 1."""
        with self._lock():
            self.whole_manifest(version)
            _write_atomic(refuse_link(self.folder / "LATEST"), version + "\n")


def record_published(version: object) -> None:
    """Remember a version this process published (a folder, or an object-store location)."""
    _published.append(version)


def published_here() -> list[object]:
    """The versions this process published, oldest first: a run stopped after publishing must not say that nothing
    was published."""
    return list(_published)


def datasets(root: str | Path) -> list[Registry]:
    """Every dataset of a registry folder (folders with a valid dataset name; symlinks and others are skipped)."""
    root = Path(root)
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and not path.is_symlink() and not path.name.startswith("."):
            try:
                found.append(Registry(root, path.name))
            except ConfigError as error:
                log.warning("%s: skipped (%s)", path, error)
    return found
