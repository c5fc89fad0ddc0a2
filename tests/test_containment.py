"""Containment: nothing negforge does reads, writes or deletes through a symlink inside the workdir or the registry.
Each link points to a folder outside both, and the test checks that folder's listing and bytes afterwards; a linked
workdir or registry root, chosen by the user, is followed."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from negforge.flows.cli import main
from negforge.flows.orchestration.preflight import check_links
from negforge.schemas.config import EvaluateConfig, load_config
from negforge.schemas.evaluation import EvaluationRecord
from negforge.schemas.manifest import Manifest
from negforge.tasks.embedding.store import INDEX, EmbeddingStore
from negforge.tasks.evaluation.records import read_record, version_records
from negforge.tasks.mining.lexical import build_index
from negforge.tasks.registry.versions import Registry
from negforge.tasks.runtime.containment import NOT_FOLLOWED, inside
from tests.conftest import DEMO, beir_subset, run_cli, write_config
from tests.test_lexical import SETTINGS, _shard
from tests.test_preflight import _error_line


def _snapshot(path: Path) -> dict[str, object]:
    """Every entry under `path` (or the file itself): its kind, and a file's bytes."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): "link" if p.is_symlink() else p.read_bytes() if p.is_file() else "folder"
            for p in sorted(path.rglob("*"))}


def _moved_out(path: Path, outside: Path) -> dict[str, object]:
    """Move `path` to `outside` and link it back, as a user moving a store to another disk would; the snapshot."""
    outside.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, outside)
    path.symlink_to(outside)
    return _snapshot(outside)


def _refused(error: pytest.ExceptionInfo, path: Path) -> None:
    assert error.value.errno == errno.ELOOP and error.value.filename == str(path)
    assert error.value.strerror == NOT_FOLLOWED


def test_a_link_anywhere_below_the_root_is_refused_the_root_itself_is_followed(tmp_path):
    outside = tmp_path / "outside"
    (outside / "embeddings" / "fp").mkdir(parents=True)
    (tmp_path / "work").symlink_to(outside)  # a workdir the user linked: followed
    assert inside(tmp_path / "work", "embeddings", "fp", entries=True) == tmp_path / "work" / "embeddings" / "fp"
    assert inside(tmp_path / "work", "absent", "folder") == tmp_path / "work" / "absent" / "folder"
    (outside / "embeddings" / "fp" / "part-x.parquet").symlink_to(outside / "elsewhere")
    with pytest.raises(OSError) as error:
        inside(tmp_path / "work", "embeddings", "fp", entries=True)
    _refused(error, tmp_path / "work" / "embeddings" / "fp" / "part-x.parquet")
    (outside / "lexical").symlink_to(outside / "embeddings")
    with pytest.raises(OSError) as error:
        inside(tmp_path / "work", "lexical", "key")
    _refused(error, tmp_path / "work" / "lexical")


@pytest.mark.parametrize("linked", ["root", "fingerprint", "part", "lock", "index"])
def test_the_embedding_store_refuses_a_link_in_its_place_or_inside_it_and_touches_nothing_there(tmp_path, linked):
    root, outside = tmp_path / "work" / "embeddings", tmp_path / "outside"
    store = EmbeddingStore(root, "fp")
    part = store.put(pl.Series("text_hash", ["a" * 32, "b" * 32]), np.ones((2, 8), np.float32))
    store.lookup(pl.DataFrame({"text_hash": ["a" * 32]}))  # writes the index under the lock
    path = {"root": root, "fingerprint": root / "fp", "part": root / "fp" / part, "lock": root / "fp" / ".lock",
            "index": root / "fp" / INDEX}[linked]
    before = _moved_out(path, outside / linked)
    with pytest.raises(OSError) as error:
        EmbeddingStore(root, "fp")
    _refused(error, path)
    assert _snapshot(outside / linked) == before and path.is_symlink()


def test_a_lock_linked_to_nothing_is_not_created_through(tmp_path):
    store = EmbeddingStore(tmp_path / "embeddings", "fp")
    (store.folder / ".lock").symlink_to(tmp_path / "absent")
    with pytest.raises(OSError) as error:
        EmbeddingStore(tmp_path / "embeddings", "fp")
    _refused(error, store.folder / ".lock")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):  # linked after the store was opened
        store.compact()
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("linked", ["lexical", "index", "index file"])
def test_the_lexical_index_is_neither_read_nor_built_through_a_link(tmp_path, linked):
    corpus = _shard(tmp_path / "corpus.parquet", ["insulin resistance in muscle", "gut microbiota", "the cat sat"])
    work = tmp_path / "work"
    index = Path(build_index([corpus], SETTINGS, str(work)))
    path = {"lexical": work / "lexical", "index": index, "index file": index / "params.index.json"}[linked]
    before = _moved_out(path, tmp_path / "outside" / linked)
    with pytest.raises(OSError) as error:
        build_index([corpus], SETTINGS, str(work))
    _refused(error, path)
    assert _snapshot(tmp_path / "outside" / linked) == before


def test_gc_reports_a_kept_store_holding_a_link_and_checks_nothing_through_it(tmp_path, capsys):
    work = tmp_path / "work"
    (work / "runs" / "20260101T000000-kept").mkdir(parents=True)
    (work / "runs" / "20260101T000000-kept" / "fingerprints.json").write_text('["fp"]')
    store = EmbeddingStore(work / "embeddings", "fp")
    (store.folder / "damaged-part-x.parquet").write_bytes(b"damaged")
    (store.folder / ".lock").symlink_to(tmp_path / "absent-lock")
    assert main(["gc", "--registry", str(tmp_path / "registry"), "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert f"not removed: {store.folder / '.lock'}: a symlink" in out and "removed 0 damaged" in out
    assert (store.folder / "damaged-part-x.parquet").exists() and not (tmp_path / "absent-lock").exists()


def test_a_linked_latest_is_neither_replaced_by_a_publish_nor_by_a_rollback(tmp_path):
    from tests.test_registry import _publish_here, stage

    _publish_here(tmp_path, "a")
    registry = Registry(tmp_path, "ds")
    before = _moved_out(registry.folder / "LATEST", tmp_path / "outside" / "LATEST")
    for attempt in (lambda: registry.rollback("v0001"),
                    lambda: registry.publish(stage(registry, "b"), Manifest(), str)):
        with pytest.raises(OSError) as error:
            attempt()
        _refused(error, registry.folder / "LATEST")
    assert _snapshot(tmp_path / "outside" / "LATEST") == before and (registry.folder / "LATEST").is_symlink()
    assert registry.versions() == ["v0001"]


def test_evaluation_records_are_not_read_or_written_through_a_link(tmp_path):
    folder = tmp_path / "registry" / "ds" / "evaluations"
    folder.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    record = {"dataset": "ds", "version": "v0001", "key": "key", "created_at": "2026-12-07T00:00:00+00:00",
              "evaluation": {"folder": "f", "split": "test", "corpus": "c", "queries": 1, "qrels": "q",
                             "doc_template": "{text}", "positive_threshold": 0.0, "key": "k"},
              "model": {"name": "m", "path": "p", "weights_sha256": "w", "query_prompt": "", "corpus_prompt": "",
                        "fingerprint": "f"},
              "settings": {}, "seeds": [0], "training": {"rows": 1, "rows_left_out": 0, "negatives_per_row": 1},
              "metrics": {"base": {}, "fine_tuned": {}},
              "ndcg@10_gain": {"mean": 0, "ci": [0, 0], "level": 0.95, "queries": 1, "seeds": 1, "samples": 1},
              "base": {"per_query_ndcg@10": {}, "seconds": 0, "cached": False}, "fine_tuned": [], "timings": {}}
    (tmp_path / "outside" / "v0001-key.json").write_text(json.dumps(record))
    assert read_record(tmp_path / "outside" / "v0001-key.json", EvaluationRecord).version == "v0001"  # a record
    (folder / "v0001-key.json").symlink_to(tmp_path / "outside" / "v0001-key.json")
    assert read_record(folder / "v0001-key.json", EvaluationRecord) is None
    assert version_records(folder.parent, "v0001") == []
    from negforge.flows.evaluate import check_request

    with pytest.raises(OSError) as error:  # before the version, the split or the model is looked at
        check_request(str(tmp_path / "registry"), "ds", "latest", EvaluateConfig())
    _refused(error, folder / "v0001-key.json")
    folder.rename(tmp_path / "outside" / "evaluations")
    folder.symlink_to(tmp_path / "outside" / "evaluations")
    assert version_records(folder.parent, "v0001") == []


@pytest.mark.parametrize("linked", ["registry/tiny", "registry/tiny/.lock", "registry/tiny/LATEST",
                                    "registry/tiny/evaluations",
                                    "work/runs", "work/embeddings", "work/lexical"])
def test_preflight_refuses_a_link_where_a_run_writes(tmp_path, linked):
    config = load_config(write_config(tmp_path / "build.yaml", beir_subset(DEMO, tmp_path / "data", 2, 10)),
                         ["evaluate.eval=" + str(tmp_path / "data")])
    (tmp_path / linked).parent.mkdir(parents=True)
    (tmp_path / linked).symlink_to(tmp_path / "absent")
    with pytest.raises(OSError) as error:
        check_links(config)
    _refused(error, tmp_path / linked)
    assert not (tmp_path / "absent").exists()


@pytest.mark.slow
def test_builds_remines_and_evaluations_refuse_links_inside_workdir_and_registry_and_leave_their_targets_alone(
        small_config, tmp_path, prefect_server):
    run_cli("build", "--config", str(small_config))
    work, registry = tmp_path / "work", tmp_path / "registry"
    fingerprint, = (work / "embeddings").iterdir()
    index, = (work / "lexical").iterdir()
    part = next(fingerprint.glob("part-*.parquet"))
    build = ("build", "--config", str(small_config), "--set=mine.num_negatives=2")
    remine = ("remine", "--from", "tiny@v0001", "--registry", str(registry), "--set=mine.num_negatives=2")
    evaluate = ("evaluate", "tiny@v0001", "--registry", str(registry), "--eval", str(tmp_path / "small"))
    (registry / "tiny" / "evaluations").mkdir()
    cases = [(fingerprint, build), (part, build), (index, build), (work / "runs", build), (work / "embeddings", build),
             (registry / "tiny", build), (work / "runs", remine), (registry / "tiny" / "evaluations", evaluate)]
    for number, (path, command) in enumerate(cases):
        outside = tmp_path / "outside" / str(number)
        before = _moved_out(path, outside)
        line = _error_line(run_cli(*command, check=False))
        assert line == f"negforge: error: {path}: {NOT_FOLLOWED}", (command, path)
        assert _snapshot(outside) == before and os.readlink(path) == str(outside)
        path.unlink()  # put back for the next case
        os.replace(outside, path)
    assert Registry(registry, "tiny").versions() == ["v0001"]
    assert not [p for p in (registry / "tiny").iterdir() if p.name.startswith(".staging-")]
