"""The Prefect UI in a real headless Chromium: a build's flow run and its report artifact render.

Screenshots go to $NEGFORGE_SCREENSHOTS when set (docs/ holds the ones the README shows), else to the test's folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make test` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait_for_text(driver, *texts: str, timeout: float = 90) -> str:
    """Wait until the page shows every text (the UI renders client-side), and return the page's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts),
        message=f"the page never showed {texts}")
    return driver.find_element(By.TAG_NAME, "body").text


def test_flow_run_and_report_render_in_the_prefect_ui(small_config, prefect_server, browser, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from selenium.webdriver.common.by import By

    run_cli("build", "--config", str(small_config))
    with get_client(sync_client=True) as client:
        report = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tiny-report"])),
                                       sort=ArtifactSort.CREATED_DESC, limit=1)[0]  # this build's, the newest
        run = client.read_flow_run(report.flow_run_id)
    shots = Path(os.environ.get("NEGFORGE_SCREENSHOTS", tmp_path))
    ui = prefect_server.removesuffix("/api")

    browser.get(f"{ui}/runs/flow-run/{run.id}")
    _wait_for_text(browser, run.name, "Completed", "embed corpus shard")
    browser.save_screenshot(str(shots / "ui-flow-run.png"))

    browser.get(f"{ui}/artifacts/artifact/{report.id}")
    text = _wait_for_text(browser, "Candidates and why they were dropped", "Stage timings")
    assert "kept" in text and "relative_margin" in text
    assert browser.find_elements(By.TAG_NAME, "table")  # the markdown tables are rendered, not shown as text
    browser.save_screenshot(str(shots / "ui-run-report.png"))
    assert (shots / "ui-flow-run.png").stat().st_size > 10_000
