"""The dashboard's share of the batch features, in a real headless Chromium: results while a batch
runs, metadata (shown, and filtering the list), the hard cancel, the retry of failed lines.
Skips without Chromium, as tests/acceptance/test_dashboard.py does."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServeProcess

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium is not installed (apt-get install chromium chromium-driver) - browser tests skipped",
)

KEY = "dash-features"
ARTIFACTS = Path(__file__).parent.parent / "artifacts"


def request(custom_id: str, text: str = "Hello there") -> dict[str, Any]:
    params = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 24, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "params": params}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(
        tmp_path_factory.mktemp("dashboard-features"), "--concurrency", "4", env={"MSGBATCH_API_KEYS": f"{KEY}=team"}
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,1000",
                 "--disable-dev-shm-usage", "--disable-background-networking"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def api(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"x-api-key": KEY}, timeout=30) as client:
        yield client


def create(api: httpx.Client, requests: list[dict[str, Any]], **options: Any) -> str:
    response = api.post("/v1/messages/batches", content=json.dumps({"requests": requests, **options}))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait(browser: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 20, what: str = "") -> Any:
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(browser, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(condition, what)


def open_signed_in(browser: WebDriver, server: ServeProcess, fragment: str = "#/") -> None:
    browser.get(f"{server.base_url}/{fragment}")
    if browser.find_element(By.ID, "login").is_displayed():
        browser.find_element(By.ID, "key").send_keys(KEY)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    section = "detail" if fragment.startswith("#/batch/") else "list"
    wait(browser, lambda b: b.find_element(By.ID, section).is_displayed(), what=f"the {section} view")


def page_errors(browser: WebDriver) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def result_ids(browser: WebDriver) -> list[str]:
    return [
        r.get_attribute("data-custom-id") or "" for r in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    ]


def test_results_while_running_metadata_and_the_hard_cancel(
    browser: WebDriver, server: ServeProcess, api: httpx.Client
) -> None:
    requests = [request(f"fast-{i}") for i in range(6)] + [
        request(f"slow-{i}", "[[simulate latency=60]]") for i in range(4)
    ]
    batch_id = create(api, requests, metadata={"team": "dash", "run": "3"})
    other = create(api, [request("x")], metadata={"team": "other"})
    open_signed_in(browser, server)
    browser.find_element(By.ID, "metadata-query").send_keys("team=dash")
    browser.find_element(By.CSS_SELECTOR, "#metadata-filter button").click()
    wait(browser, lambda b: [r.get_attribute("data-id") for r in b.find_elements(By.CSS_SELECTOR, "#batches tbody tr")]
         == [batch_id], what="only the batch with that metadata")  # fmt: skip
    tags = wait(
        browser, lambda b: [t.text for t in b.find_elements(By.CSS_SELECTOR, f'#batches tr[data-id="{batch_id}"] .tag')]
    )
    assert tags == ["team=dash", "run=3"] and other not in browser.page_source

    open_signed_in(browser, server, f"#/batch/{batch_id}")
    wait(browser, lambda b: sorted(result_ids(b)) == [f"fast-{i}" for i in range(6)], what="the six results so far")
    # The page redraws itself every second: read what it shows through `wait`, which tries again
    # when an element was replaced under it.
    wait(browser, lambda b: b.find_element(By.ID, "batch-status").text == "in progress", what="in progress")
    wait(browser, lambda b: "still running" in b.find_element(By.ID, "results-note").text, what="the note")
    metadata = wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, '#options dd[data-option="Metadata"]').text)
    assert "team=dash" in metadata
    browser.save_screenshot(str(ARTIFACTS / "dashboard-partial-results.png"))

    browser.find_element(By.ID, "abort").click()
    wait(browser, expected_conditions.alert_is_present(), what="the confirmation")
    browser.switch_to.alert.accept()
    wait(browser, lambda b: b.find_element(By.ID, "batch-status").text == "ended", what="ended at once, not in 60 s")
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, 'dd[data-count="canceled"]').text == "4", what="4 canceled")
    wait(browser, lambda b: len(result_ids(b)) == 10, what="all ten results")
    assert page_errors(browser) == []


def test_retry_of_failed_lines_from_the_batch_page(browser: WebDriver, server: ServeProcess, api: httpx.Client) -> None:
    requests = [request(f"ok-{i}") for i in range(3)]
    requests += [request(f"bad-{i}", "[[simulate error=not_found_error]]") for i in range(2)]
    parent = create(api, requests, fail_fast={"min_results": 100, "max_error_rate": 0.9})
    deadline = time.monotonic() + 30
    while api.get(f"/v1/messages/batches/{parent}").json()["processing_status"] != "ended":
        assert time.monotonic() < deadline, "the batch did not end"
        time.sleep(0.05)
    open_signed_in(browser, server, f"#/batch/{parent}")
    wait(browser, lambda b: b.find_element(By.ID, "retry").is_displayed(), what="the retry button of an ended batch")
    fail_fast = wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, '#options dd[data-option="Fail fast"]').text)
    assert "after 100 results" in fail_fast
    browser.find_element(By.ID, "retry").click()
    wait(browser, expected_conditions.alert_is_present(), what="the confirmation")
    browser.switch_to.alert.accept()
    wait(browser, lambda b: b.find_element(By.ID, "batch-id").text not in ("", parent), what="the new batch's page")
    child = wait(browser, lambda b: b.find_element(By.ID, "batch-id").text)
    link = wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, '#options dd[data-option="Retry of"] a').text)
    assert link == parent
    wait(browser, lambda b: sorted(result_ids(b)) == ["bad-0", "bad-1"], what="the retried lines' results")
    assert api.get(f"/v1/messages/batches/{parent}").json()["retried_by"] == child
    browser.save_screenshot(str(ARTIFACTS / "dashboard-retry.png"))
    assert page_errors(browser) == []
