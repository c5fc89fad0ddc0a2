"""Deployments served by a real `negforge serve` process against the session's Prefect server: registration with
schedule and typed parameters, triggers with overrides, artifacts, unchanged reruns, one run per dataset at a time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from negforge.schemas.config import load_config
from tests.conftest import DEMO, ROOT, beir_subset, run_cli, write_config

pytestmark = pytest.mark.slow
DEPLOYMENT = "build-training-set/served"


@pytest.fixture(scope="module")
def dataset_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("orchestrated")
    data = beir_subset(DEMO, root / "data", 20, 100)
    return write_config(root / "served.yaml", data, "served",
                        'schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}')


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


@pytest.fixture(scope="module")
def served(prefect_server, dataset_config):
    """`negforge serve --config FILE` in its own process group, until the module's tests are done."""
    from prefect.exceptions import ObjectNotFound

    process = subprocess.Popen([sys.executable, "-m", "negforge.flows.cli", "serve", "--config", str(dataset_config)],
                               cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    deployment = None
    while deployment is None:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "the served deployment was not registered within 180 s"
        with _client() as client:
            try:
                deployment = client.read_deployment_by_name(DEPLOYMENT)
            except ObjectNotFound:
                time.sleep(0.5)
    yield deployment
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


def _flow_run_id(stdout: str) -> str:
    return re.search(r"/runs/flow-run/([0-9a-f-]{36})", stdout).group(1)


def test_deployment_has_the_schedule_and_a_typed_form_of_the_config(served, dataset_config):
    schedule = served.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "Europe/Berlin")
    assert served.parameters["config"] == load_config(dataset_config).model_dump(mode="json", by_alias=True,
                                                                                 exclude={"storage"})
    definitions = served.parameter_openapi_schema["definitions"]
    negatives = definitions["MineConfig"]["properties"]["num_negatives"]
    assert negatives["description"] == "Negatives per query." and negatives["minimum"] == 1
    assert served.global_concurrency_limit.limit == 1 and "served" in served.tags

    bad = json.loads(json.dumps(served.parameters))
    bad["config"]["mine"]["num_negatives"] = 0
    with _client() as client, pytest.raises(Exception, match="num_negatives|minimum"):
        client.create_flow_run_from_deployment(served.id, parameters=bad)  # refused before any run exists


def test_trigger_applies_overrides_keeps_the_rest_and_reports(served, dataset_config):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    out = run_cli("trigger", "served", "--set", "mine.num_negatives=2", "--wait").stdout
    run_id = _flow_run_id(out)
    with _client() as client:
        run = client.read_flow_run(run_id)
        assert run.state.is_completed()
        config = run.parameters["config"]
        expected = served.parameters["config"]
        expected["mine"]["num_negatives"] = 2
        assert config == expected  # the override applied, every other field as stored
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="served-")),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))}
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    version = Path(load_config(dataset_config).publish.registry) / "served" / "v0001"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["config"]["mine"]["num_negatives"] == 2

    assert set(artifacts) == {"served-embed", "served-search", "served-report", "served-sample", "served-version"}
    report = artifacts["served-report"].data
    assert "# served v0001: published" in report and "Candidates and why they were dropped" in report
    assert f"| kept | {manifest['reasons']['kept']} |" in report
    assert artifacts["served-embed"].data == artifacts["served-search"].data == 100
    sample = artifacts["served-sample"].data
    sample = json.loads(sample) if isinstance(sample, str) else sample
    assert sample and {"anchor", "positive", "negative_1", "negative_2"} <= set(sample[0])
    assert str(version.resolve()) in artifacts["served-version"].data
    names = {t.name for t in task_runs}
    assert {"plan embedding", "combine partitions", "publish"} <= names
    assert {name.rsplit(" ", 1)[0] for name in names} >= {"embed texts", "search and mine"}  # a few tasks per stage
    assert "served" in run.tags and not any(t.tags for t in task_runs)  # tagged task runs wait on Prefect's limit check

    again = run_cli("trigger", "served", "--set", "mine.num_negatives=2", "--wait").stdout
    assert "Completed" in again
    assert sorted(p.name for p in version.parent.glob("v*")) == ["v0001"]  # unchanged: nothing published
    with _client() as client:
        report = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["served-report"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[_flow_run_id(again)])))[0].data
    assert "up to date" in report


def test_runs_of_one_dataset_never_overlap(served):
    deadline = time.monotonic() + 300
    with _client() as client:
        first, second = (client.create_flow_run_from_deployment(served.id, parameters=served.parameters).id
                         for _ in range(2))  # both queued before the server can start either
        while not all(client.read_flow_run(i).state.is_final() for i in (first, second)):
            assert time.monotonic() < deadline, "the two runs did not finish within 300 s"
            time.sleep(1)
        runs = sorted((client.read_flow_run(i) for i in (first, second)), key=lambda r: r.start_time)
        waited = [s.name for r in runs for s in client.read_flow_run_states(r.id)]
    assert all(r.state.is_completed() for r in runs)
    assert runs[0].end_time <= runs[1].start_time  # the second ran only after the first finished
    assert "AwaitingConcurrencySlot" in waited, waited  # the second was held back, not merely started late


def test_trigger_refuses_bad_overrides_and_a_missing_api(served):
    bad = run_cli("trigger", "served", "--set", "mine.num_negatives=0", check=False)
    assert bad.returncode == 2 and "mine.num_negatives" in bad.stderr
    unknown = run_cli("trigger", "no-such-dataset", check=False)
    assert unknown.returncode == 2 and "no deployment build-training-set/no-such-dataset" in unknown.stderr
    env = os.environ | {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    done = subprocess.run([sys.executable, "-m", "negforge.flows.cli", "trigger", "served"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "negforge serve" in done.stderr


def test_serve_without_an_api_starts_a_local_server_and_stops_it(dataset_config, tmp_path):
    """Run outside the checkout, with a folder of configs, as an installed negforge would be."""
    import httpx

    from negforge.flows.orchestration.prefect_server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "negforge.flows.cli", "serve", "--port", str(port), "--config",
                                str(dataset_config.parent)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        assert process.stdout.readline().strip() == f"Prefect API {api}; UI http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while len(httpx.post(f"{api}/deployments/filter", json={}).json()) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "the deployments did not reach the server"
            time.sleep(0.5)
        flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()}
        names = sorted(f"{flows[d['flow_id']]}/{d['name']}"
                       for d in httpx.post(f"{api}/deployments/filter", json={}).json())
        assert names == ["build-training-set/served", "evaluate-training-set/served"]
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200  # the UI is served too
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api}/health", timeout=5)  # the local server stopped with serve
