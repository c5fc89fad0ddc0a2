"""The `remine-training-set` flow: a new version from the candidates stored in an earlier one, in seconds.

Nothing is embedded or searched: the stored candidates (to the depth searched) are mined again with the new mining,
output or validation options (with mine.strategy auto, after calibrating again on the stored calibration
candidates), then written, validated and published like a build, with the source as parent.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import polars as pl
from prefect import flow

from negforge.flows.orchestration.console_lines import escape_console_lines
from negforge.flows.orchestration.preflight import preflight
from negforge.flows.orchestration.task_options import untagged_task_runs
from negforge.flows.orchestration.workdir_mirror import mirrored
from negforge.flows.stages.calibration import calibrated
from negforge.flows.stages.partition import mine_stored_all
from negforge.flows.stages.publishing import mine_and_publish, new_run_dir
from negforge.schemas.config import BuildConfig
from negforge.schemas.manifest import Counts, Embed, Provenance, Published, Search
from negforge.schemas.stages import COUNT_KEYS
from negforge.tasks.mining.adaptive_depth import depth_levels
from negforge.tasks.registry.candidates import check_depth, check_remine, load_candidates
from negforge.tasks.registry.registries import config_registry
from negforge.tasks.runtime.os_errors import naming
from negforge.tasks.storage.mirror import to_remote


@flow(name="remine-training-set", flow_run_name="remine {config.publish.dataset}", validate_parameters=True)
def remine_training_set(source: str, config: BuildConfig) -> Published:
    """Mine the candidates stored in `source` (a version of config.publish.dataset) again and publish the result."""
    escape_console_lines()  # a served or work-pool run's process: no CLI set it up
    # a write error naming no path is the workdir's: what writes elsewhere (the staged version) names its own
    with untagged_task_runs(), naming(config.runtime.workdir), mirrored(config) as config:
        return _remine(source, config)


def _remine(source: str, config: BuildConfig) -> Published:
    preflight(config)
    registry = config_registry(config)
    parent = registry.whole_manifest(source)
    stored = load_candidates(registry.local_copy(source) / "candidates")
    check_remine(parent.build_config(), config, stored)
    started = datetime.now(timezone.utc)
    run_dir = new_run_dir(config, started)
    timings: dict[str, float] = {}
    workers = os.cpu_count() or 1
    mining, calibration, topic = calibrated(config, stored.texts.positives, stored.calibration, workers,
                                            stored.topic_sample)
    check_depth(mining, stored)
    meta = stored.meta
    range_max, mine_depth = mining.window_and_depth(meta.max_positives)
    queries = pl.scan_parquet(stored.texts.query_files).select(pl.len()).collect().item()
    levels = depth_levels(mine_depth, mining.depth_bound(meta.max_positives, meta.documents))
    parts = mine_stored_all(stored.texts, stored.files, queries, mining, range_max, levels, meta.searchable, run_dir,
                            workers=workers)
    provenance = Provenance(
        created_at=started.isoformat(), inputs=parent.inputs, model=parent.model,
        embed=Embed(texts_embedded=0, texts_cached=0), search=Search(depth=mine_depth, range_max=range_max),
        counts=Counts(**parent.counts.model_dump(include=set(COUNT_KEYS))), rejects=parent.rejects,
        remined_from=f"{config.publish.dataset}@{source}", calibration=calibration, topic=topic,
        run_dir=to_remote(str(run_dir)), task_runs={"mine": len(parts)}, corpus_dedup=parent.corpus_dedup)
    return mine_and_publish(config, stored.texts, parts, run_dir, timings, provenance, meta, parent=source,
                            mining=mining, corpus_duplicates=stored.corpus_duplicates,
                            calibration_files=stored.calibration, topic_sample=stored.topic_sample)
