"""The dashboard's share of the batch features, in a real headless Chromium: results while a batch
runs, metadata (shown, and filtering the list), the hard cancel, the retry of failed lines.
Skips without Chromium, as tests/acceptance/test_dashboard.py does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from dashboard_browser import ARTIFACTS, browser, create, needs_chromium, open_signed_in, page_errors, wait
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions

from conftest import ServeProcess

pytestmark = needs_chromium
__all__ = ["browser"]  # the fixture, used by name

KEY = "dash-features"


def request(custom_id: str, text: str = "Hello there") -> dict[str, Any]:
    params = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 24, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "params": params}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(
        tmp_path_factory.mktemp("dashboard-features"), "--concurrency", "4", env={"MSGBATCH_API_KEYS": f"{KEY}=team"}
    ) as proc:
        yield proc


@pytest.fixture
def api(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"x-api-key": KEY}, timeout=30) as client:
        yield client


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
    open_signed_in(browser, server, KEY)
    browser.find_element(By.ID, "metadata-query").send_keys("team=dash")
    browser.find_element(By.CSS_SELECTOR, "#metadata-filter button").click()
    wait(browser, lambda b: [r.get_attribute("data-id") for r in b.find_elements(By.CSS_SELECTOR, "#batches tbody tr")]
         == [batch_id], what="only the batch with that metadata")  # fmt: skip
    tags = wait(
        browser, lambda b: [t.text for t in b.find_elements(By.CSS_SELECTOR, f'#batches tr[data-id="{batch_id}"] .tag')]
    )
    assert tags == ["team=dash", "run=3"] and other not in browser.page_source

    open_signed_in(browser, server, KEY, f"#/batch/{batch_id}")
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
    open_signed_in(browser, server, KEY, f"#/batch/{parent}")
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
