"""The `remine-training-set` flow: a new version from the candidates stored in an earlier one, in seconds.

Nothing is embedded or searched: the stored candidates (to the depth searched) are mined again with the new mining,
output or validation options, then written, validated and published like a build, with the source as parent.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, tags

from negforge.flows.build import mine_and_publish
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import COUNT_KEYS
from negforge.tasks.candidate_store import check_remine, load_candidates
from negforge.tasks.preflight import preflight
from negforge.tasks.registry import Registry


@flow(name="remine-training-set", flow_run_name="remine {config.publish.dataset}", validate_parameters=True)
def remine_training_set(source: str, config: BuildConfig) -> dict[str, Any]:
    """Mine the candidates stored in `source` (a version of config.publish.dataset) again and publish the result."""
    with tags("negforge", config.publish.dataset):
        return _remine(source, config)


def _remine(source: str, config: BuildConfig) -> dict[str, Any]:
    preflight(config)
    registry = Registry(config.publish.registry, config.publish.dataset)
    parent = registry.whole_manifest(source)
    texts, search, depth = load_candidates(registry.folder / source / "candidates")
    check_remine(parent["config"], config, depth, texts.max_positives)
    started = datetime.now(timezone.utc)
    run_dir = Path(config.runtime.workdir) / "runs" / f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    range_max = config.mine.effective_range_max(texts.max_positives)
    mine_depth = config.search.depth or range_max + texts.max_positives
    base = {
        "created_at": started.isoformat(), "inputs": parent["inputs"], "model": parent["model"],
        "embed": {"texts_embedded": 0, "texts_cached": 0}, "search": {"depth": mine_depth, "range_max": range_max},
        "counts": {key: parent["counts"][key] for key in COUNT_KEYS}, "rejects": parent["rejects"],
        "remined_from": f"{config.publish.dataset}@{source}", "run_dir": str(run_dir),
        "corpus_dedup": parent.get("corpus_dedup"),
    }
    return mine_and_publish(config, texts, search, mine_depth, range_max, run_dir, {}, base, parent=source,
                            stored_depth=depth)
