"""Garbage collection: old run workspaces, embedding-store fingerprints no published version or recent run uses,
and staging folders of builds that are gone."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from negforge.tasks.embedding_store import EmbeddingStore
from negforge.tasks.registry import NotFound, datasets

log = logging.getLogger(__name__)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _run_fingerprints(run: Path) -> set[str]:
    marker = run / "fingerprints.json"
    return set(json.loads(marker.read_text())) if marker.exists() else set()


def _published_fingerprints(registry: str | Path) -> set[str]:
    """Fingerprints of every published version; a version without a readable manifest holds none."""
    used: set[str] = set()
    for dataset in datasets(registry):
        for version in dataset.versions():
            try:
                used.update(dataset.manifest(version)["model"]["fingerprints"].values())
            except NotFound as error:
                log.warning("%s", error)
    return used


def collect_garbage(workdir: str | Path, registry: str | Path, keep_runs: int, dry_run: bool) -> dict[str, Any]:
    """Remove all but the newest `keep_runs` run workspaces, the store fingerprints nothing kept refers to, store
    parts that fail their checksum (and killed writers' leftovers), and abandoned staging folders.

    Returns:
        What was (or, with dry_run, would be) removed, and the store size before and after.
    """
    workdir = Path(workdir)
    runs = sorted((workdir / "runs").iterdir()) if (workdir / "runs").exists() else []
    kept_runs, old_runs = runs[len(runs) - keep_runs:] if keep_runs else [], runs[:len(runs) - keep_runs]
    used = set().union(*(_run_fingerprints(r) for r in kept_runs)) if kept_runs else set()
    used |= _published_fingerprints(registry)
    store = workdir / "embeddings"
    stale = [p for p in sorted(store.iterdir()) if p.is_dir() and p.name not in used] if store.exists() else []
    before = _size(store)
    freed = sum(_size(p) for p in old_runs + stale)
    if not dry_run:
        for path in old_runs + stale:
            shutil.rmtree(path, ignore_errors=True)
    kept_fingerprints = [p for p in sorted(store.iterdir()) if p.is_dir()] if store.exists() and not dry_run else []
    damaged = [name for folder in kept_fingerprints
               for name in EmbeddingStore(store, folder.name).remove_damaged()]  # checksums: not in a dry run
    staging = [path for dataset in datasets(registry) for path in dataset.remove_abandoned(dry_run)]
    return {"runs_removed": [str(p) for p in old_runs], "fingerprints_removed": [p.name for p in stale],
            "damaged_parts_removed": damaged, "staging_removed": [str(p) for p in staging], "bytes_freed": freed,
            "store_bytes_before": before,
            "store_bytes_after": before - sum(_size(p) for p in stale), "dry_run": dry_run}
