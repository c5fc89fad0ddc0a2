"""A place on a local disk or an object store, named by a URL: the one way negforge reads, writes, lists and deletes
registry and workdir files, and commits versions (`create`: create-if-absent; `swap`: compare-and-swap).

Plain paths and `file://` are local folders (a write is a temporary file renamed into place; `create` links it,
which fails when the name exists; `swap` holds a lock file while it compares). On S3 both are single PUTs with a
precondition (`If-None-Match: *`, `If-Match: <ETag>`), so two writers can never both win. Stores where negforge
cannot make writes conditional are refused before any work (`check_conditional_writes`).

Credentials and endpoints come from `storage_options` (the config's `storage` section) and the environment, as
fsspec takes them; they are never part of a URL shown or recorded.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

UNCONDITIONAL = ("negforge cannot write conditionally to {protocol}:// stores (it can to s3:// and local folders), "
                 "so it cannot publish there safely")
S3_RETRIES = {"mode": "standard", "max_attempts": 6}  # throttling, 5xx and timeouts, with backoff; never 403/404


class StoreError(OSError):
    """A store refused what negforge needs (no bucket, no permission, no conditional writes): one line naming the
    URL and the reason, never a secret."""


def _precondition_failed(error: BaseException) -> bool:
    """Whether a store error is a failed precondition (HTTP 412, or S3's 409 conditional-request conflict)."""
    response = getattr(error, "response", None) or getattr(error.__cause__, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"PreconditionFailed", "ConditionalRequestConflict"} or status in {409, 412}


@dataclass(frozen=True)
class Location:
    """A file or folder at `url` (no trailing slash), with the fsspec `options` that reach it."""

    url: str
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, url: str | Path, options: dict[str, Any] | None = None) -> Location:
        text = str(url)
        if "://" not in text:
            text = str(Path(text).absolute())
        return cls(text.rstrip("/") or "/", dict(options or {}))

    @cached_property
    def _fs_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        options = dict(self.options)
        if self.protocol == "s3":
            options.setdefault("config_kwargs", {}).setdefault("retries", S3_RETRIES)
            options.setdefault("use_listings_cache", False)  # another writer's objects must show at once
        return fsspec.core.url_to_fs(self.url, **options)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_path[0]

    @property
    def path(self) -> str:
        return self._fs_path[1]

    @property
    def protocol(self) -> str:
        return self.url.split("://")[0] if "://" in self.url else "file"

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.url.rsplit("/", 1)[0], self.options)

    def __truediv__(self, part: str) -> Location:
        return Location(f"{self.url}/{part.strip('/')}", self.options)

    def __str__(self) -> str:
        return self.url

    # -- reads -------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def children(self) -> list[str]:
        """Names directly below this folder, sorted (none when it does not exist)."""
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        return sorted({entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries} - {""})

    def files(self) -> dict[str, int]:
        """Every file below this folder, by path relative to it, with its size."""
        try:
            found = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.path.rstrip("/") + "/"
        return {name[len(prefix):]: int(info["size"]) for name, info in sorted(found.items())
                if info.get("type") != "directory" and name.startswith(prefix)}

    # -- writes ------------------------------------------------------------------------------------------------
    def write_bytes(self, data: bytes) -> None:
        """Write whole or not at all: a local file is written beside and renamed into place; an object PUT is."""
        if not self.local:
            self.fs.pipe_file(self.path, data)
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def upload(self, folder: Path) -> None:
        """Copy a local folder's files here (a local folder: copied; an object store: PUT one by one)."""
        self.fs.put(f"{folder}/", self.path.rstrip("/") + "/", recursive=True)

    def download(self, folder: Path) -> Path:
        """Copy this folder's files into a local folder (what must be opened as a local file); the local folder."""
        folder.mkdir(parents=True, exist_ok=True)
        self.fs.get(self.path.rstrip("/") + "/", f"{folder}/", recursive=True)
        return folder

    def remove(self) -> None:
        """Delete this file, or this folder and everything below it; nothing when it is absent."""
        try:
            self.fs.rm(self.path, recursive=True)
        except FileNotFoundError:
            pass

    # -- conditional writes ------------------------------------------------------------------------------------
    def create(self, data: bytes) -> bool:
        """Write `data` only if nothing is here yet: True if this call created it, False if it existed."""
        if self.local:
            return self._create_local(data)
        return self._put_if(data, mode="create")

    def tagged(self) -> tuple[bytes, str] | None:
        """The content and its tag (S3: the ETag; local: its sha256), or None when absent: what `swap` compares.
        The tag is read before the content: a change in between makes the swap fail, never succeed on stale data."""
        if self.local:
            try:
                data = Path(self.path).read_bytes()
            except FileNotFoundError:
                return None
            return data, hashlib.sha256(data).hexdigest()
        self._conditional_store()
        try:
            tag = self.fs.info(self.path, refresh=True)["ETag"]
            return self.fs.cat_file(self.path), tag
        except FileNotFoundError:
            return None

    def swap(self, data: bytes, tag: str | None) -> bool:
        """Replace the content only if it is still what `tag` names (None: only if absent); True if replaced."""
        if tag is None:
            return self.create(data)
        if self.local:
            return self._swap_local(data, tag)
        return self._put_if(data, IfMatch=tag)

    def _create_local(self, data: bytes) -> bool:
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.link(tmp, target)  # atomic, and fails when the name exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _swap_local(self, data: bytes, tag: str) -> bool:
        target = Path(self.path)
        fd = os.open(target.with_name(f".{target.name}.lock"), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = self.tagged()
            if current is None or current[1] != tag:
                return False
            self.write_bytes(data)
            return True
        finally:
            os.close(fd)

    def _conditional_store(self) -> None:
        if self.protocol != "s3":
            raise StoreError(f"{self.url}: {UNCONDITIONAL.format(protocol=self.protocol)}")

    def _put_if(self, data: bytes, **condition: str) -> bool:
        """One PUT with a precondition; False when the precondition failed."""
        self._conditional_store()
        try:
            self.fs.pipe_file(self.path, data, **condition)
        except OSError as error:
            if _precondition_failed(error):
                return False
            raise
        return True


def check_conditional_writes(location: Location, setting: str) -> None:
    """Refuse, before any work, a store where versions cannot be published safely: a missing bucket, no permission
    to write, an unreachable endpoint, or writes that ignore their precondition. One line naming the URL and the
    reason (StoreError); the probe object is removed again."""
    if not location.local and location.protocol != "s3":
        raise StoreError(f"{setting} {location}: {UNCONDITIONAL.format(protocol=location.protocol)}")
    probe = location / f".negforge-probe-{uuid.uuid4().hex}"
    try:
        first, second = probe.create(b"probe"), probe.create(b"again")
        probe.remove()
    except FileNotFoundError:
        raise StoreError(f"{setting} {location}: no such bucket or container") from None
    except PermissionError:
        raise StoreError(f"{setting} {location}: no permission to write there (check the credentials and the "
                         f"bucket's policy)") from None
    except Exception as error:  # unreachable endpoint, bad credentials, TLS: the store's own words, cut short
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise StoreError(f"{setting} {location}: the store refused or did not answer ({reason})") from None
    if not (first and not second):
        raise StoreError(f"{setting} {location}: the store does not honour conditional writes (If-None-Match), so "
                         f"two publishers could overwrite each other's versions; use a store that does (AWS S3, "
                         f"MinIO, Cloudflare R2, ...)")
