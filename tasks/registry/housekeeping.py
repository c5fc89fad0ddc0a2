"""Garbage collection: old run workspaces, embedding-store fingerprints no published version or recent run uses,
and staging folders of builds that are gone.

gc never follows a symbolic link and never removes one: a link in the workdir was put there by someone else (a store
moved to another disk, say), removing it could break their setup and following it would delete outside the workdir.
Links are reported as not removed, and what a link points to is neither read, sized nor counted.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from negforge.tasks.embedding.store import EmbeddingStore
from negforge.tasks.registry.registries import datasets
from negforge.tasks.registry.versions import NotFound, Registry

log = logging.getLogger(__name__)
SYMLINK = "a symlink (gc neither follows nor removes links it did not make)"


def _size(path: Path) -> int:
    """Bytes of the files under a folder; links (to files or folders) are not followed."""
    if path.is_symlink() or not path.is_dir():
        return 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _folders(parent: Path) -> tuple[list[Path], list[Path]]:
    """The real folders of `parent` (sorted) and its symlinks; nothing when `parent` itself is a link."""
    if parent.is_symlink():
        return [], [parent]
    entries = sorted(parent.iterdir()) if parent.is_dir() else []
    return [p for p in entries if p.is_dir() and not p.is_symlink()], [p for p in entries if p.is_symlink()]


def _run_fingerprints(run: Path) -> set[str]:
    marker = run / "fingerprints.json"
    return set(json.loads(marker.read_text())) if marker.is_file() and not marker.is_symlink() else set()


def _published_fingerprints(registries: list[Registry]) -> set[str]:
    """Fingerprints of every published version; a version without a readable manifest holds none."""
    used: set[str] = set()
    for dataset in registries:
        for version in dataset.versions():
            try:
                used.update(dataset.manifest(version).model.fingerprints.values())
            except NotFound as error:
                log.warning("%s", error)
    return used


def _remove(folder: Path) -> str | None:
    """Remove a real folder (rmtree unlinks the links inside it, never their targets); why it stays otherwise."""
    try:
        shutil.rmtree(folder)
    except OSError as error:
        return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    return None


def _damaged_parts_removed(store: Path, fingerprint: str, not_removed: dict[str, str]) -> list[str]:
    """The damaged parts removed from a kept fingerprint's store. A store holding a symlink is not checked (that
    would read, or delete, through it): the link is added to `not_removed`."""
    try:
        return EmbeddingStore(store, fingerprint).remove_damaged()
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        not_removed[error.filename] = SYMLINK
        return []


def collect_garbage(workdir: str | Path, registry: str | Path, keep_runs: int, dry_run: bool,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Remove all but the newest `keep_runs` run workspaces, the store fingerprints nothing kept refers to, store
    parts that fail their checksum (and killed writers' leftovers), and abandoned staging folders (an object-store
    registry's: uncommitted versions whose publisher is gone; `options`: the store's storage_options).

    Returns:
        What was (or, with dry_run, would be) removed, what could not be (path -> reason; symlinks always), and
        the store size before and after.
    """
    workdir = Path(workdir)
    runs, linked_runs = _folders(workdir / "runs")
    kept_runs, old_runs = runs[len(runs) - keep_runs:] if keep_runs else [], runs[:len(runs) - keep_runs]
    used = set().union(*(_run_fingerprints(r) for r in kept_runs)) if kept_runs else set()
    registries = datasets(registry, options)
    used |= _published_fingerprints(registries)
    store = workdir / "embeddings"
    fingerprints, linked_fingerprints = _folders(store)
    stale = [p for p in fingerprints if p.name not in used]
    before = _size(store)
    sizes = {p: _size(p) for p in old_runs + stale}
    not_removed = {str(p): SYMLINK for p in linked_runs + linked_fingerprints}
    if not dry_run:
        not_removed |= {str(p): why for p in sizes if (why := _remove(p))}
    gone = [p for p in sizes if str(p) not in not_removed]
    kept_fingerprints = [] if dry_run else _folders(store)[0]
    damaged = [name for folder in kept_fingerprints  # checksums: not in a dry run
               for name in _damaged_parts_removed(store, folder.name, not_removed)]
    staging = [path for dataset in registries for path in dataset.remove_abandoned(dry_run)]
    return {"runs_removed": [str(p) for p in old_runs if p in gone],
            "fingerprints_removed": [p.name for p in stale if p in gone], "not_removed": not_removed,
            "damaged_parts_removed": damaged, "staging_removed": [str(p) for p in staging],
            "bytes_freed": sum(sizes[p] for p in gone), "store_bytes_before": before,
            "store_bytes_after": before - sum(sizes[p] for p in stale if p in gone), "dry_run": dry_run}
