"""The embedding stage inside real builds: a few task runs per worker whatever the number of text files, and a damaged
store part named in the manifest and embedded again (to the same data hash) instead of failing every later build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from negforge.tasks.embedding.store import EmbeddingStore
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

UNIQUE = 120  # small_config: 100 documents and 20 queries, all distinct texts


def _build(config: Path, *overrides: str) -> dict:
    args = ["build", "--config", str(config), "--set", "runtime.shard_size=8"]  # 15 text files
    for override in overrides:
        args += ["--set", override]
    version = run_cli(*args).stdout.strip().splitlines()[-1]
    return json.loads((Path(version) / "manifest.json").read_text())


def _embedding_task_runs() -> dict[str, int]:
    """The newest build's embedding task runs, counted by task name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        report = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tiny-report"])),
                                       sort=ArtifactSort.CREATED_DESC, limit=1)[0]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[report.flow_run_id])))
    counts: dict[str, int] = {}
    for run in runs:
        if run.task_key and run.name.split(" ")[0] in ("plan", "embed", "copy", "compact"):
            name = run.name.rsplit(" ", 1)[0] if "/" in run.name else run.name
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_a_few_embedding_tasks_per_worker_and_a_damaged_part_is_embedded_again(small_config, prefect_server):
    workdir = small_config.parent / "work"
    first = _build(small_config)
    assert first["embed"] == {"texts_embedded": UNIQUE, "texts_cached": 0, "store_repaired": []}
    assert _embedding_task_runs() == {"plan embedding": 1, "embed texts": 4}  # 2 workers x 2, not 15 shards

    (folder,) = (workdir / "embeddings").iterdir()
    store = EmbeddingStore(folder.parent, folder.name)
    part = store.parts()[0]
    rows = store.read(part.name)[0].len()
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # truncated, as by a full disk

    again = _build(small_config, f"publish.registry={small_config.parent / 'registry-2'}")
    assert again["embed"] == {"texts_embedded": rows, "texts_cached": UNIQUE - rows, "store_repaired": [part.name]}
    assert again["data_hash"] == first["data_hash"]  # embedded again with other texts, to the same bits
    runs = _embedding_task_runs()
    assert runs["plan embedding"] == 1 and runs["embed texts"] <= 4 and runs["copy stored vectors"] <= 4
    assert not (folder / part.name).exists() and len(store.parts()) > 0
