"""Dataset configs are found from --config (a file or a folder of them) or the working directory's
deployments/datasets, never from the source tree: an installed wheel has none. Every command here runs outside the
checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli, write_config


def _configs(folder: Path) -> Path:
    """Two dataset configs in `folder`, their input paths relative to it (`../data/...`)."""
    folder.mkdir(parents=True)
    for dataset in ("alpha", "beta"):
        write_config(folder / f"{dataset}.yaml", Path("..") / "data", dataset)
    return folder


def _rendered(stdout: str) -> dict[str, dict]:
    return {(d["name"], d["entrypoint"]): d for d in yaml.safe_load(stdout)["deployments"]}


@pytest.fixture
def outside(tmp_path) -> Path:
    assert not tmp_path.is_relative_to(ROOT)
    return tmp_path


def test_a_folder_of_configs_renders_from_outside_the_checkout(outside):
    _configs(outside / "configs")
    rendered = _rendered(run_cli("deployments", "render", "--config", "configs", cwd=outside).stdout)
    flows = ("build_then_evaluate:build_and_evaluate", "evaluate:evaluate_training_set")
    assert sorted(rendered) == [(d, f"negforge.flows.{flow}") for d in ("alpha", "beta") for flow in flows]
    config = rendered["alpha", "negforge.flows.build_then_evaluate:build_and_evaluate"]["parameters"]["config"]
    # relative to the config file when read, then to the working directory the worker runs in
    assert config["input"]["corpus"] == "data/corpus.jsonl" and config["publish"]["registry"] == "configs/registry"


def test_without_config_the_working_directorys_deployments_datasets_are_used(outside):
    _configs(outside / "deployments" / "datasets")
    rendered = _rendered(run_cli("deployments", "render", cwd=outside).stdout)
    assert {name for name, _ in rendered} == {"alpha", "beta"}
    (outside / "deployments" / "datasets" / "scifact-demo.yaml").write_text("mine: {num_negatives: 0}\n")
    build = run_cli("build", cwd=outside, check=False)  # the demo of the working directory, refused before any run
    assert build.returncode == 2, build.stderr
    assert "\ndeployments/datasets/scifact-demo.yaml: mine.num_negatives: Input should be greater" in build.stderr


@pytest.mark.parametrize("args, option", [(["deployments", "render"], "FILE_OR_FOLDER"),
                                          (["serve"], "FILE_OR_FOLDER"), (["build"], "FILE"),
                                          (["gc", "--dry-run"], "FILE")])
def test_no_configs_anywhere_is_one_clear_line(outside, args, option):
    done = run_cli(*args, cwd=outside, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"in {outside}; pass --config {option}\n" in done.stderr


def test_a_folder_without_configs_is_refused(outside):
    (outside / "empty").mkdir()
    done = run_cli("deployments", "render", "--config", "empty", cwd=outside, check=False)
    assert done.returncode == 2 and "empty: a folder without *.yaml dataset configs" in done.stderr


def test_commands_without_config_default_to_the_registry_in_the_working_directory(outside):
    done = run_cli("versions", "list", "alpha", cwd=outside, check=False)
    assert done.returncode == 2 and "no versions of 'alpha' in ./registry" in done.stderr
