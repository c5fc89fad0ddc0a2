"""How long a new user's orchestration steps take: serve, see the schedule, trigger from the CLI and from the UI.

Serves the shipped dataset configs (deployments/datasets/*.yaml) with their registry and workdir moved to --work, on
a fresh Prefect home, exactly as `negforge serve` does with PREFECT_API_URL unset; then triggers the demo from the
CLI (`negforge trigger scifact-demo --wait`, cold and again unchanged) and from the Prefect UI (headless Chromium
clicking the deployment's Run > Quick run, then Run in the form it opens). Prints one JSON line of seconds per
step.

    .venv/bin/python bench/orchestration_steps.py [--work /tmp/negforge-orchestration]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from bench_args import ROOT

sys.path.insert(0, str(ROOT))
from negforge.flows.build import build_training_set  # noqa: E402
from negforge.flows.deployments import dataset_configs  # noqa: E402
from negforge.flows.orchestration.prefect_server import free_port  # noqa: E402


def _until(what: str, check, timeout: float = 600, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)
    return result


def _configs(work: Path) -> list[Path]:
    """The shipped dataset configs, publishing into `work` instead of the repository."""
    paths = []
    for path, config in dataset_configs([ROOT / "deployments" / "datasets"]):
        raw = config.model_dump(mode="json", by_alias=True)
        raw["publish"]["registry"], raw["runtime"]["workdir"] = str(work / "registry"), str(work / ".negforge")
        paths.append(work / path.name)
        paths[-1].write_text(yaml.safe_dump(raw, sort_keys=False))
    return paths


def _ui_quick_run(ui: str, deployment_id: str) -> None:
    """Open the deployment in the Prefect UI and start a run with its Run > Quick run menu."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"{ui}/deployments/deployment/{deployment_id}")
        wait = WebDriverWait(driver, 60)
        wait.until(ready.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Run']"))).click()
        wait.until(ready.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Quick run']"))).click()
        # the deployment has a parameter, so the UI opens its form, pre-filled; submit it as it is
        wait.until(ready.visibility_of_element_located((By.XPATH, "//*[normalize-space()='Run Deployment']")))
        driver.find_elements(By.XPATH, "//button[normalize-space()='Run']")[-1].click()
        wait.until(ready.invisibility_of_element_located((By.XPATH, "//*[normalize-space()='Run Deployment']")))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/negforge-orchestration"))
    work = parser.parse_args().work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(work / "prefect")}
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    os.environ.update(env | {"PREFECT_API_URL": api})
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.exceptions import ObjectNotFound

    steps: dict[str, float] = {}
    start = time.monotonic()
    serve = subprocess.Popen([sys.executable, "-m", "negforge.flows.cli", "serve", "--port", str(port),
                              *[a for p in _configs(work) for a in ("--config", str(p))]],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        import httpx

        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _until("the UI", healthy)
        steps["serve_to_ui_s"] = round(time.monotonic() - start, 1)
        with get_client(sync_client=True) as client:
            def registered():
                try:
                    return client.read_deployment_by_name(f"{build_training_set.name}/scifact-demo")
                except ObjectNotFound:
                    return None

            deployment = _until("the deployments", registered)
            steps["serve_to_deployments_s"] = round(time.monotonic() - start, 1)
            scheduled = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"])))
            only_demo = DeploymentFilter(name=DeploymentFilterName(any_=["scifact-demo"]))
            runs = _until("the nightly runs", lambda: client.read_flow_runs(flow_run_filter=scheduled,
                                                                            deployment_filter=only_demo))
            steps["serve_to_scheduled_runs_s"] = round(time.monotonic() - start, 1)
            steps["next_nightly_run"] = str(min(r.expected_start_time for r in runs))

            for name in ("cli_trigger_cold_s", "cli_trigger_unchanged_s"):
                began = time.monotonic()
                done = subprocess.run([sys.executable, "-m", "negforge.flows.cli", "trigger", "scifact-demo", "--wait"],
                                      cwd=ROOT, env=env | {"PREFECT_API_URL": api}, capture_output=True, text=True)
                assert done.returncode == 0, done.stdout + done.stderr
                steps[name] = round(time.monotonic() - began, 1)

            before = {r.id for r in client.read_flow_runs(deployment_filter=only_demo)}
            began = time.monotonic()
            _ui_quick_run(api.removesuffix("/api"), str(deployment.id))
            new = _until("the UI's run", timeout=60, check=lambda: [
                r for r in client.read_flow_runs(deployment_filter=only_demo) if r.id not in before])[0]
            _until("the UI's run to finish", lambda: client.read_flow_run(new.id).state.is_final())
            steps["ui_quick_run_s"] = round(time.monotonic() - began, 1)
            steps["ui_quick_run_state"] = client.read_flow_run(new.id).state.name
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
