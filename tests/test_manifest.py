"""The typed manifest reads every manifest published before it and writes it back unchanged.

The fixtures are real manifests (their checksums trimmed to the training set's files): a build and a remine of the
tests' tiny config published by the code at 7d7b075, the last before the manifest was typed, a build by 13c83f0, and
a MEDLINE build by 13c83f0 with `mine.strategy: auto` (the calibration's whole table, before it was typed; paths
shortened).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from negforge.schemas.config import ConfigError
from negforge.schemas.manifest import Manifest

FIXTURES = Path(__file__).parent / "fixtures"
PUBLISHED = sorted(FIXTURES.glob("manifest-*.json"))


@pytest.mark.parametrize("path", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_a_published_manifest_reads_and_writes_back_byte_for_byte(path):
    manifest = Manifest.read(path)
    assert manifest.json_text() == path.read_text()
    raw = json.loads(path.read_text())
    assert manifest.counts.rows == raw["counts"]["rows"] and manifest.inputs[0].path == raw["inputs"][0]["path"]
    assert manifest.scores.negative.mean == raw["scores"]["negative"]["mean"]
    assert manifest.model.weights_sha256 == raw["model"]["weights_sha256"]
    assert set(manifest.checksums) == set(raw["checksums"])
    if raw["calibration"] and raw["calibration"]["table"]:
        assert [row.setting for row in manifest.calibration.table] == [r["setting"] for r in raw["calibration"]["table"]]
        assert manifest.topic.max_topic_centrality == raw["topic"]["max_topic_centrality"]


def test_a_remine_keeps_its_own_order_and_what_it_lacks_stays_absent():
    raw = json.loads((FIXTURES / "manifest-remine-7d7b075.json").read_text())
    manifest = Manifest.model_validate(raw)
    assert manifest.remined_from == "tiny@v0001" and manifest.search.index == "flat" and manifest.search.probe is None
    assert list(manifest.as_dict()) == list(raw) and list(manifest.as_dict()["search"]) == ["depth", "range_max"]


def test_an_older_manifest_without_newer_fields_reads_with_defaults():
    raw = json.loads((FIXTURES / "manifest-build-7d7b075.json").read_text())
    newer = ("checksums", "charts", "audit", "side_inputs", "topic", "calibration", "task_runs", "corpus_dedup",
             "adaptive_depth", "suspected_positives")
    older = {key: value for key, value in raw.items() if key not in newer}
    older["embed"] = {k: v for k, v in raw["embed"].items() if k != "store_repaired"}
    manifest = Manifest.model_validate(older)
    assert manifest.checksums is None and manifest.charts == {} and manifest.side_inputs == []
    assert manifest.calibration is None and manifest.embed.store_repaired == []
    assert manifest.as_dict() == older and list(manifest.as_dict()) == list(older)


def test_fields_set_after_reading_are_written_and_unknown_keys_kept():
    manifest = Manifest.model_validate({"dataset": "d", "parent": None, "someday": {"a": 1}})
    manifest.version, manifest.data_hash = "v0001", "h"
    assert manifest.as_dict() == {"dataset": "d", "parent": None, "someday": {"a": 1}, "version": "v0001",
                                  "data_hash": "h"}


@pytest.mark.parametrize("path", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_a_published_config_reads_as_the_config_model(path):
    manifest, raw = Manifest.read(path), json.loads(path.read_text())
    config = manifest.build_config()
    dumped = config.model_dump(mode="json", by_alias=True)  # fields added since read as their defaults
    assert all(dumped[section][key] == value for section, values in raw["config"].items()
               for key, value in values.items())
    moved = manifest.build_config({"publish": {"registry": "/elsewhere"}}, ["mine.num_negatives=7"])
    assert (moved.publish.registry, moved.publish.dataset) == ("/elsewhere", raw["config"]["publish"]["dataset"])
    assert moved.mine.num_negatives == 7
    assert manifest.config == raw["config"]  # what was read is left as it was


def test_built_with_compares_what_determines_the_published_data():
    config = Manifest.read(FIXTURES / "manifest-build-7d7b075.json").build_config()
    built = Manifest.model_validate({"config": config.model_dump(mode="json", by_alias=True)})
    assert built.built_with(config)
    assert built.built_with(config.model_copy(update={"runtime": config.runtime.model_copy(update={"n_workers": 9})}))
    assert not built.built_with(config.model_copy(update={"mine": config.mine.model_copy(update={"num_negatives": 9})}))


def test_a_config_the_code_refuses_names_the_version():
    manifest = Manifest.read(FIXTURES / "manifest-build-7d7b075.json")
    manifest.config["mine"] = manifest.config["mine"] | {"retired_option": 1}
    with pytest.raises(ConfigError, match=r"^tiny@v0001 config: mine.retired_option: unknown field"):
        manifest.build_config()
