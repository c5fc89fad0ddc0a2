"""Which registry a `publish.registry` names: a local folder (versions.py: rename and locks) or an object-store URL
(object_versions.py: conditional writes). Commands open registries here, so both kinds answer alike."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from negforge.schemas.config import BuildConfig, ConfigError
from negforge.tasks.registry.object_versions import ObjectRegistry
from negforge.tasks.registry.versions import Registry
from negforge.tasks.registry.versions import datasets as folder_datasets
from negforge.tasks.storage.location import Location

log = logging.getLogger(__name__)


def on_object_store(root: str | Path) -> bool:
    return not Location.of(root).local


def open_registry(root: str | Path, dataset: str, options: dict[str, Any] | None = None,
                  cache: str | Path | None = None) -> Registry:
    """The registry of `dataset` under `root`, with the store's `options` (fsspec storage_options) and the local
    cache for what must be opened as local files."""
    if on_object_store(root):
        return ObjectRegistry(str(root), dataset, options, Path(cache) if cache else None)
    return Registry(str(root).removeprefix("file://"), dataset)


def config_registry(config: BuildConfig) -> Registry:
    """The registry a build config publishes to."""
    return open_registry(config.publish.registry, config.publish.dataset, config.storage, config.runtime.cache_dir)


def datasets(root: str | Path, options: dict[str, Any] | None = None) -> list[Registry]:
    """Every dataset of a registry (names that are valid dataset names; others are skipped with a warning)."""
    if not on_object_store(root):
        return folder_datasets(str(root).removeprefix("file://"))
    found = []
    for name in Location.of(root, options).children():
        if name.startswith("."):
            continue
        try:
            found.append(open_registry(root, name, options))
        except ConfigError as error:
            log.warning("%s/%s: skipped (%s)", root, name, error)
    return found
