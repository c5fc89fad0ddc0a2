"""The version's README.md: a dataset card whose YAML header lets `datasets.load_dataset` find both configs."""

from __future__ import annotations

import yaml

from negforge.schemas.manifest import Manifest
from negforge.tasks.calibration.calibrate import false_negative_estimate

CHART_TITLES = {"scores": "Positive and negative scores", "reasons": "Candidates removed, per reason",
                "negative_rank": "Negative score by rank", "audit": "False-negative audit"}


def _charts(charts: dict[str, str]) -> str:
    """The version's charts (files in its `charts/` folder), as images relative to this card."""
    if not charts:
        return ""
    return "\n## Charts\n\n" + "\n\n".join(f"![{CHART_TITLES.get(name, name)}]({path})"
                                              for name, path in charts.items()) + "\n"


def dataset_card(manifest: Manifest) -> str:
    """Render the card from the manifest: configs header, then what the data is and how it was made."""
    header = {
        "configs": [
            {"config_name": "default", "default": True, "data_files": [{"split": "train", "path": "data/train-*"}]},
            {"config_name": "ids", "data_files": [{"split": "train", "path": "ids/train-*"}]},
        ],
        # `datasets` caches a local folder under its name ("v0001") and a hash of this header, so two registries'
        # v0001 would share a cache entry; the byte sizes make the header differ wherever the data differs.
        "dataset_info": [{"config_name": name, "dataset_size": manifest.files.bytes[folder]}
                         for name, folder in (("default", "data"), ("ids", "ids"))],
        "tags": ["negforge", "hard-negatives", "sentence-transformers"],
    }
    cfg, counts = manifest.build_config(), manifest.counts
    mine = {k: v for k, v in cfg.mine.model_dump(mode="json").items() if v is not None}
    reasons = "\n".join(f"| {name} | {count} |" for name, count in manifest.reasons.items())
    return f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# {manifest.dataset} {manifest.version}

Hard-negative training set built by negforge from {', '.join(i.path for i in manifest.inputs)}.

- Layout: `{cfg.output.format}`{' with scores' if cfg.output.scores else ''}; {counts.rows} training rows
  (config `default`), {counts.id_rows} id rows (config `ids`: query_id, positive_id, negative_ids, scores).
- Model: `{manifest.model.name}` (weights sha256 `{manifest.model.weights_sha256[:16]}...`).
- Mining: {', '.join(f'{k}={v}' for k, v in mine.items())}.
- {false_negative_estimate(manifest.calibration, manifest.topic)}
- Queries short of negatives: {manifest.short_queries.count}.
- Parent version: {manifest.parent or 'none'}; data hash `{manifest.data_hash[:16]}...`.

```python
from datasets import load_dataset
train = load_dataset("<this folder>", split="train")          # the training rows
ids = load_dataset("<this folder>", "ids", split="train")     # the same rows by id, with scores
# where the version lives on an object store (s3://bucket/registry/<dataset>/<version>), with the store's options:
train = load_dataset("parquet", data_files="<version URL>/data/*.parquet", split="train",
                     storage_options={{"client_kwargs": {{"endpoint_url": "..."}}}})  # or the AWS_* environment
```

| candidate outcome | count |
|---|---|
{reasons}
{_charts(manifest.charts)}"""
