"""deployments/prefect.yaml: generated from the dataset configs, accepted by `prefect deploy --all`, and run by a
process worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from negforge.flows.deployments import prefect_yaml
from tests.conftest import DEMO, ROOT, beir_subset, run_cli, write_config
from tests.test_evaluate import eval_subset


def test_committed_prefect_yaml_matches_the_dataset_configs(monkeypatch):
    monkeypatch.chdir(ROOT)  # rendered from the project root: its deployments/datasets, paths relative to it
    assert (ROOT / "deployments" / "prefect.yaml").read_text() == prefect_yaml(None), \
        "deployments/prefect.yaml is stale: run `negforge deployments render > deployments/prefect.yaml`"


def _prefect(*args: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@pytest.mark.slow
def test_prefect_deploy_and_a_process_worker_run_a_dataset(tmp_path, prefect_server):
    data = beir_subset(DEMO, tmp_path / "data", 20, 100)
    evaluation = eval_subset(tmp_path / "eval")  # the deployment's run evaluates what it published (its hook)
    config = write_config(tmp_path / "pooled.yaml", data, "pooled", f"""schedule: {{cron: "30 3 * * 1", timezone: UTC}}
evaluate: {{eval: {evaluation}, steps: 1, batch_size: 8, eval_batch_size: 32}}
""")
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(run_cli("deployments", "render", "--config", str(config), "--pool", "pooled-pool").stdout)
    env = os.environ | {"NEGFORGE_ROOT": str(ROOT)}
    _prefect("work-pool", "create", "pooled-pool", "--type", "process", "--overwrite", env=env)
    _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), env=env)
    started = run_cli("trigger", "pooled").stdout  # queued for the pool's worker
    assert "/runs/flow-run/" in started
    _prefect("worker", "start", "--pool", "pooled-pool", "--run-once", env=env)
    manifest = json.loads((tmp_path / "registry" / "pooled" / "v0001" / "manifest.json").read_text())
    assert manifest["config"]["schedule"]["cron"] == "30 3 * * 1" and manifest["counts"]["rows"] > 0
    (record,) = (tmp_path / "registry" / "pooled" / "evaluations").glob("v0001-*.json")
    assert json.loads(record.read_text())["version"] == "v0001"
