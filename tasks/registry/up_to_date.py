"""The no-op check: would this build publish exactly the latest version again?

It would when the inputs' bytes, the config (less `runtime`, `schedule` and `evaluate`), the model's weights and the
code are those the latest version was built from, and that version's files are all there. Then nothing needs embedding,
searching or even a Dask cluster: the CLI answers "up to date" before it starts a Prefect server, and a served run
finishes in seconds. Everything compared is in the manifest, so the check reads no run workspace.
"""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec

from negforge.schemas.config import BuildConfig
from negforge.schemas.manifest import Embed, Published
from negforge.tasks.embedding.model import resolve_model
from negforge.tasks.ingest.readers import InputError, input_files
from negforge.tasks.registry.registries import config_registry
from negforge.tasks.registry.versions import NotFound

CHUNK = 1 << 22


def sha256_of(path: str) -> str | None:
    """sha256 of a file's bytes as stored (None when it cannot be read: then the check says "changed")."""
    digest = hashlib.sha256()
    try:
        with fsspec.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
    except (OSError, ValueError):
        return None
    return digest.hexdigest()


def side_inputs(config: BuildConfig) -> list[dict[str, Any]]:
    """Files outside `input` that can change a version: the evaluation split (leakage rule) and the audit's qrels."""
    paths = [config.validate_.eval_qrels, config.validate_.eval_queries, config.audit.qrels]
    return [{"path": path, "sha256": sha256_of(path)} for path in dict.fromkeys(p for p in paths if p)]


def up_to_date_result(config: BuildConfig, version: str) -> Published:
    """What a build returns when it would publish the latest version again: that version, nothing new."""
    registry = config_registry(config)
    return Published.of(registry.version_folder(version), registry.manifest(version), published=False, timings={},
                        embed=Embed(texts_embedded=0, texts_cached=0))


def unchanged_version(config: BuildConfig, code_version: str) -> str | None:
    """The latest version if building `config` now would publish exactly it again, else None."""
    registry = config_registry(config)
    try:
        latest = registry.latest()
        manifest = registry.manifest(latest) if latest else None
    except (NotFound, OSError, ValueError):
        return None
    if not manifest or manifest.code_version != code_version or not manifest.built_with(config):
        return None
    if registry.problems(latest):
        return None
    if manifest.model.weights_sha256 != resolve_model(config.embed.model).weights_sha256:
        return None
    if manifest.side_inputs != side_inputs(config):
        return None
    stored = {(entry.path, entry.sha256) for entry in manifest.inputs}
    specs = [config.input.corpus, *(config.input.pairs or [config.input.queries, config.input.qrels])]
    try:
        files = [file.path for spec in specs if spec for file in input_files(spec, config.input.format)]
    except InputError:
        return None
    current = {(path, sha256_of(path)) for path in files}
    return latest if current == stored else None
