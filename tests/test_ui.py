"""The Prefect UI in a real headless Chromium: a build's flow run, its report artifact with the version's charts, and
an evaluation artifact with its charts render.

Screenshots go to $NEGFORGE_SCREENSHOTS when set (docs/ holds the ones the README shows), else to the test's folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_evaluate import TINY, eval_subset

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


def _rendered_images(driver, timeout: float = 30) -> list[dict]:
    """The page's inline PNG images once the browser has decoded them: alt text and decoded width and height."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = ("return Array.from(document.images).filter(i => i.src.startsWith('data:image/png'))"
              ".map(i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight, complete: i.complete}))")
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script) and all(
        image["complete"] for image in d.execute_script(script)), message="no inline image finished loading")
    return driver.execute_script(script)


def _newest_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                         sort=ArtifactSort.CREATED_DESC, limit=1)[0]
        return artifact, client.read_flow_run(artifact.flow_run_id)


def _show(driver, heading: str) -> None:
    """Scroll the heading to the top of the window (for a screenshot of what follows it)."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.XPATH, f"//*[self::h1 or self::h2][contains(., '{heading}')]")
    driver.execute_script("arguments[0].scrollIntoView(true);", element)


def test_flow_run_and_report_render_in_the_prefect_ui(small_config, prefect_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    run_cli("build", "--config", str(small_config))
    report, run = _newest_artifact("tiny-report")  # this build's, the newest
    shots = Path(os.environ.get("NEGFORGE_SCREENSHOTS", tmp_path))
    ui = prefect_server.removesuffix("/api")

    browser.get(f"{ui}/runs/flow-run/{run.id}")
    _wait_for_text(browser, run.name, "Completed", "publish")
    browser.save_screenshot(str(shots / "ui-flow-run.png"))

    browser.get(f"{ui}/artifacts/artifact/{report.id}")
    text = _wait_for_text(browser, "Candidates and why they were dropped", "Stage timings")
    assert "kept" in text and "too_central_to_topic" in text  # the default's topic rule (too few queries to calibrate)
    assert browser.find_elements(By.TAG_NAME, "table")  # the markdown tables are rendered, not shown as text
    browser.save_screenshot(str(shots / "ui-run-report.png"))
    images = _rendered_images(browser)
    assert {image["alt"] for image in images} == {"scores", "reasons", "negative rank"}
    assert all(image["width"] >= 400 and image["height"] >= 200 for image in images), images  # decoded pictures
    _show(browser, "Charts")
    browser.save_screenshot(str(shots / "ui-run-report-charts.png"))
    assert (shots / "ui-flow-run.png").stat().st_size > 10_000


def test_evaluation_artifact_shows_its_charts(small_config, prefect_server, browser, tmp_path):
    version = Path(run_cli("build", "--config", str(small_config)).stdout.strip().splitlines()[-1])
    run_cli("evaluate", "tiny@v0001", "--eval", str(eval_subset(tmp_path / "eval")), "--registry",
            str(version.parent.parent), *TINY)
    artifact, _ = _newest_artifact("tiny-evaluation")
    browser.get(f"{prefect_server.removesuffix('/api')}/artifacts/artifact/{artifact.id}")
    _wait_for_text(browser, "does it train a better model?", "nDCG@10 gain", "fine-tuned, seed 0")
    images = _rendered_images(browser)
    assert len(images) == 2 and all(image["width"] >= 400 for image in images), images
    _show(browser, "does it train a better model?")
    browser.save_screenshot(str(Path(os.environ.get("NEGFORGE_SCREENSHOTS", tmp_path)) / "ui-evaluation.png"))
