"""A registry on an object store (`s3://bucket/registry`): the same versions, guarantees and commands as a local
registry folder (versions.py), made without rename or locks, by conditional writes (tasks/storage/location.py).

    <dataset>/vNNNN/.claim      created if absent: whoever creates it owns the number (the loser takes the next);
                                it names its owner and a heartbeat, so `gc` can tell a dead publisher's leftovers
    <dataset>/vNNNN/...         the version's files, uploaded after the claim (nobody else writes there)
    <dataset>/vNNNN/COMMITTED   created last, after every file is written and listed with its sha256 in
                                manifest.json: a version without it is absent to every reader
    <dataset>/LATEST            moved by compare-and-swap (ETag match), only to a committed version, never back
                                past a newer one by a concurrent publish

Two publishers at once get two whole, distinct versions; a killed one leaves an uncommitted prefix nobody sees,
which `negforge gc` removes once its owner is gone (another host's: after its heartbeat is LEASE_SECONDS old).
A version's files are where `datasets.load_dataset` reads them, with the store's `storage_options`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from negforge.schemas.manifest import FileEntry, Manifest
from negforge.tasks.registry.versions import (
    MANIFEST,
    VERSION,
    NotFound,
    Registry,
    check_dataset,
    check_version,
    checksums,
    data_hash,
    parse_manifest,
    record_published,
)
from negforge.tasks.storage.location import Location

CLAIM, COMMITTED, LATEST = ".claim", "COMMITTED", "LATEST"
EXPECTED = {LATEST, "evaluations"}
LEASE_SECONDS = 600  # a claim whose heartbeat is older belongs to a publisher that is gone
HEARTBEAT_SECONDS = 30

log = logging.getLogger(__name__)


def _number(version: str) -> int:
    return int(version[1:])


class ObjectRegistry(Registry):
    """The versions of one dataset under an object-store URL."""

    def __init__(self, root: str, dataset: str, options: dict[str, Any] | None = None,
                 cache: Path | None = None) -> None:
        self.dataset = check_dataset(dataset)
        self.folder = Location.of(root, options) / self.dataset  # type: ignore[assignment]
        # this dataset's local copies: its versions, and the mirror of its side folders
        self.cached = (cache or Path(tempfile.gettempdir()) / "negforge-cache") / "registry" / _cache_key(self.folder)

    # -- reading -----------------------------------------------------------------------------------------------
    def _prefixes(self) -> list[str]:
        """Every vNNNN prefix, committed or not, oldest first."""
        return sorted((n for n in self.folder.children() if VERSION.match(n)), key=_number)

    def versions(self) -> list[str]:
        committed = self.folder.fs.glob(f"{self.folder.path}/v*/{COMMITTED}")
        names = {path.rstrip("/").split("/")[-2] for path in committed}
        return sorted((n for n in names if VERSION.match(n)), key=_number)

    def unexpected(self) -> list[Location]:  # type: ignore[override]
        return [self.folder / n for n in self.folder.children() if not VERSION.match(n) and n not in EXPECTED]

    def version_folder(self, version: str) -> Location:  # type: ignore[override]
        if check_version(version) not in self.versions():
            raise NotFound(f"{self.folder}: no version {version} (have: {', '.join(self.versions()) or 'none'})")
        return self.folder / version

    def manifest(self, version: str) -> Manifest:
        path = self.version_folder(version) / MANIFEST
        try:
            return parse_manifest(path.read_bytes(), path)
        except FileNotFoundError:
            raise NotFound(f"{self.folder / version}: no {MANIFEST} (a damaged version)") from None

    def problems(self, version: str, hashes: bool = False) -> list[str]:
        try:
            listed = self.manifest(version).checksums
        except NotFound as error:
            return [str(error)]
        if listed is None:
            return []
        folder = self.folder / version
        present = {name: size for name, size in folder.files().items() if name not in (CLAIM, COMMITTED, MANIFEST)}
        found = [f"{name}: not listed in the manifest" for name in present if name not in listed]
        for name, expected in listed.items():
            if name not in present:
                found.append(f"{name}: missing")
            elif present[name] != expected.size:
                found.append(f"{name}: {present[name]} bytes, the manifest says {expected.size}")
            elif hashes and (folder / name).sha256() != expected.sha256:
                found.append(f"{name}: sha256 differs from the manifest's")
        return found

    def pointer(self) -> str | None:
        try:
            return (self.folder / LATEST).read_text().strip()
        except FileNotFoundError:
            return None

    def local_copy(self, version: str) -> Path:
        """The version's files in the local cache (downloaded when absent): for what must open local files."""
        target = self.cached / version
        if not target.is_dir():
            partial = target.with_name(f".{version}-{uuid.uuid4().hex}")
            try:
                self.version_folder(version).download(partial)
                os.replace(partial, target)  # a copy is whole or absent
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        return target

    def side_folder(self, name: str) -> Path:
        """A local mirror of the dataset's `name/` folder (evaluations), downloaded fresh: commands read and write
        there, and `push_side_folder` uploads what they wrote."""
        mirror = self.cached / "side"
        shutil.rmtree(mirror / name, ignore_errors=True)
        if (self.folder / name).exists():
            (self.folder / name).download(mirror / name)
        (mirror / name).mkdir(parents=True, exist_ok=True)
        return mirror

    def push_side_folder(self, name: str) -> None:
        """Upload the mirror of `name/` (whole files: a reader sees each old or new, never half)."""
        (self.folder / name).upload(self.cached / "side" / name)

    # -- staging and publishing --------------------------------------------------------------------------------
    def staging(self) -> Path:
        """A local folder to assemble the version in; it is uploaded by `publish`."""
        return Path(tempfile.mkdtemp(prefix="negforge-staged-"))

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def publish(self, staged: Path, manifest: Manifest,  # type: ignore[override]
                card: Callable[[Manifest], str]) -> tuple[Location, bool]:
        files = checksums(staged)
        digest = data_hash(files)
        latest = self.latest()
        if latest and self.manifest(latest).data_hash == digest and not self.problems(latest):
            self.discard(staged)
            return self.folder / latest, False
        version, owner = self._claim()
        target = self.folder / version
        try:
            with self._heartbeat(target / CLAIM, owner):
                manifest.version, manifest.parent, manifest.data_hash = version, manifest.parent or latest, digest
                (staged / "README.md").write_text(card(manifest), encoding="utf-8")
                manifest.checksums = {name: FileEntry(**entry) for name, entry in checksums(staged).items()}
                (staged / MANIFEST).write_text(manifest.json_text(), encoding="utf-8")
                target.upload(staged)
            if not (target / COMMITTED).create(json.dumps({"owner": owner, "data_hash": digest}).encode()):
                raise RuntimeError(f"{target}: committed by another publisher, though this one held its claim")
        except BaseException:
            target.remove()  # nothing half-made stays, and the number is free again
            self.discard(staged)
            raise
        self._keep_as_local_copy(staged, version)
        self._point_latest(version, keep_newer=True)
        record_published(target)
        return target, True

    def _claim(self) -> tuple[str, str]:
        """The next free version number, claimed by creating its claim: (version, owner id)."""
        owner = uuid.uuid4().hex
        taken = self._prefixes()
        number = _number(taken[-1]) + 1 if taken else 1
        while not (self.folder / f"v{number:04d}" / CLAIM).create(_claim_text(owner)):
            number += 1  # someone else took it between the listing and the claim
        return f"v{number:04d}", owner

    @contextmanager
    def _heartbeat(self, claim: Location, owner: str) -> Iterator[None]:
        """Refresh the claim's heartbeat while the upload runs, so `gc` never takes a live publisher for gone."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_SECONDS):
                claim.write_bytes(_claim_text(owner))

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _point_latest(self, version: str, keep_newer: bool) -> None:
        """Compare-and-swap LATEST to `version`, again until no other writer came in between; with `keep_newer`,
        not when a concurrent publish already pointed it at a newer committed version."""
        latest = self.folder / LATEST
        while True:
            current = latest.tagged()
            named = current[0].decode("utf-8", "replace").strip() if current else ""
            if keep_newer and VERSION.match(named) and _number(named) > _number(version) and named in self.versions():
                return
            if latest.swap(f"{version}\n".encode(), current[1] if current else None):
                return

    def _keep_as_local_copy(self, staged: Path, version: str) -> None:
        target = self.cached / version
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), target)

    def rollback(self, version: str) -> None:
        self.whole_manifest(version)
        self._point_latest(version, keep_newer=False)

    # -- housekeeping ------------------------------------------------------------------------------------------
    def remove_abandoned(self, dry_run: bool = False) -> list[Location]:  # type: ignore[override]
        """Uncommitted version prefixes whose publisher is gone: removed (or, with dry_run, listed)."""
        committed = set(self.versions())
        found = [self.folder / name for name in self._prefixes()
                 if name not in committed and _gone(self.folder / name / CLAIM)]
        for prefix in [] if dry_run else found:
            prefix.remove()
        return found


def _claim_text(owner: str) -> bytes:
    return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                       "heartbeat": time.time()}).encode()


def _gone(claim: Location) -> bool:
    """Whether the publisher of a claim is gone: dead on this host, silent past the lease elsewhere, or no claim."""
    try:
        text = json.loads(claim.read_bytes())
    except (FileNotFoundError, ValueError):
        return True
    if text.get("host") == socket.gethostname():
        try:
            os.kill(int(text["pid"]), 0)
        except (ProcessLookupError, ValueError, KeyError):
            return True
        except PermissionError:
            pass
    return time.time() - float(text.get("heartbeat", 0)) > LEASE_SECONDS


def _cache_key(location: Location) -> str:
    return location.url.replace("://", "/").replace("/", "_")
