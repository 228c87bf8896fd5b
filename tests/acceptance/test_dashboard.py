"""The web dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`, via Selenium).

Skips when either is missing. Screenshots land in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from dashboard_browser import ARTIFACTS, browser, create, needs_chromium, open_signed_in, page_errors, wait
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select

from conftest import ServeProcess

pytestmark = needs_chromium
__all__ = ["browser"]  # the fixture, used by name

KEY = "dash-key"
MODEL = "claude-sonnet-4-5-20250929"


def request(custom_id: str, text: str = "Hello there") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {"model": MODEL, "max_tokens": 24, "messages": [{"role": "user", "content": text}]},
    }


CONFIG = f"""
[limits.default]
max_queued_requests = 100000
max_batches_in_progress = 50
max_in_flight_per_backend = 4
[limits.team]
weight = 3

[prices."{MODEL[:13]}*"]
input = 3.0
output = 15.0
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    # 4 requests at a time, 50 ms each: a few hundred requests take seconds, so progress shows.
    folder = tmp_path_factory.mktemp("dashboard")
    (folder / "msgbatch.toml").write_text(CONFIG)
    args = ["--concurrency", "4", "--simulate-latency", "0.05", "--config", str(folder / "msgbatch.toml")]
    with ServeProcess(folder, *args, env={"MSGBATCH_API_KEYS": f"{KEY}=team"}) as proc:
        yield proc


@pytest.fixture
def api(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"x-api-key": KEY}, timeout=30) as client:
        yield client


def shot(browser: WebDriver, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))


_ROW_INFO = """
const tr = document.querySelector(`#batches tbody tr[data-id="${arguments[0]}"]`);
if (!tr) return null;
return {
  status: tr.dataset.status,
  statusText: tr.querySelector(".status").textContent,
  done: Number(tr.querySelector("[role=progressbar]").getAttribute("aria-valuenow")),
  label: tr.querySelector(".bar-label").textContent,
  succeededSegments: tr.querySelectorAll(".bar .seg.succeeded").length,
  succeeded: tr.querySelector("td.succeeded").textContent,
  action: (tr.querySelector("td.actions button") || {}).textContent,
};
"""


def row(browser: WebDriver, batch_id: str) -> dict[str, Any] | None:
    """What the list shows for a batch, read in one go (the page redraws rows as it polls)."""
    info: dict[str, Any] | None = browser.execute_script(_ROW_INFO, batch_id)
    return info


def status_of(browser: WebDriver, batch_id: str) -> str | None:
    r = row(browser, batch_id)
    return r["status"] if r is not None else None


def test_nothing_is_visible_without_a_valid_key(browser: WebDriver, server: ServeProcess, api: httpx.Client) -> None:
    create(api, [request("hidden")])
    browser.get(f"{server.base_url}/")
    browser.execute_script("sessionStorage.clear(); localStorage.clear();")
    browser.get(f"{server.base_url}/")
    assert browser.find_element(By.ID, "login").is_displayed()
    assert not browser.find_element(By.ID, "list").is_displayed()
    browser.find_element(By.ID, "key").send_keys("wrong-key")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    error = wait(browser, lambda b: b.find_element(By.ID, "login-error").text, what="the refusal")
    assert "invalid x-api-key" in error
    assert browser.find_elements(By.CSS_SELECTOR, "#batches tbody tr") == []
    assert "msgbatch_" not in browser.page_source
    shot(browser, "login-refused")
    open_signed_in(browser, server, KEY)
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#batches tbody tr"), what="the batches")
    assert page_errors(browser) == []


def test_list_shows_a_batch_progressing_to_ended(browser: WebDriver, server: ServeProcess, api: httpx.Client) -> None:
    total = 240  # ~3 s at 4 x 50 ms
    batch_id = create(api, [request(f"p-{i}", f"Progress {i}") for i in range(total)])
    open_signed_in(browser, server, KEY)

    def partly_done(b: WebDriver) -> dict[str, Any] | None:
        r = row(b, batch_id)
        return r if r is not None and r["status"] == "in_progress" and 0 < r["done"] < total else None

    r = wait(browser, partly_done, what="a partly done progress bar")
    shot(browser, "list-in-progress")
    assert r["statusText"] == "in progress"
    assert r["succeededSegments"] == 1

    wait(browser, lambda b: status_of(b, batch_id) == "ended", timeout=30, what="ended")
    r = row(browser, batch_id)
    assert r is not None
    assert (r["succeeded"], r["done"], r["label"], r["action"]) == (
        f"{total:,}",
        total,
        f"{total} / {total} · 100%",
        "Delete",
    )
    shot(browser, "list-ended")
    assert page_errors(browser) == []


def test_cancel_from_the_batch_page(browser: WebDriver, server: ServeProcess, api: httpx.Client) -> None:
    # 100 s of work at 4 at a time: still running however slowly the browser gets to the button.
    batch_id = create(api, [request(f"c-{i}", f"Cancel me {i} [[simulate latency=1]]") for i in range(400)])
    open_signed_in(browser, server, KEY, f"#/batch/{batch_id}")
    wait(browser, lambda b: b.find_element(By.ID, "batch-status").text == "in progress", what="in progress")
    browser.find_element(By.ID, "cancel").click()
    wait(browser, expected_conditions.alert_is_present(), what="the confirmation")
    browser.switch_to.alert.accept()
    wait(browser, lambda b: b.find_element(By.ID, "batch-status").text == "ended", what="ended after cancel")
    canceled = int(browser.find_element(By.CSS_SELECTOR, 'dd[data-count="canceled"]').text.replace(",", ""))
    assert canceled > 0
    events = [li.get_attribute("data-event") for li in browser.find_elements(By.CSS_SELECTOR, "#timeline li")]
    assert events[:3] == ["created", "cancel", "ended"]
    assert browser.find_element(By.ID, "delete").is_displayed()
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    shot(browser, "detail-canceled")
    batch = api.get(f"/v1/messages/batches/{batch_id}").json()
    assert batch["processing_status"] == "ended" and batch["cancel_initiated_at"] is not None
    assert batch["request_counts"]["canceled"] == canceled
    assert page_errors(browser) == []


def test_results_filter_and_delete(browser: WebDriver, server: ServeProcess, api: httpx.Client) -> None:
    failing = {3, 9, 14, 20, 27}
    batch_id = create(
        api,
        [
            request(f"r-{i}", f"Row {i}" + (" [[simulate error=overloaded_error]]" if i in failing else ""))
            for i in range(30)
        ],
    )
    open_signed_in(browser, server, KEY, f"#/batch/{batch_id}")
    result_rows = lambda b: b.find_elements(By.CSS_SELECTOR, "#results tbody tr")  # noqa: E731
    wait(browser, lambda b: len(result_rows(b)) == 30, what="all 30 results")
    timing = browser.find_element(By.CSS_SELECTOR, '#timing tbody tr[data-backend="simulate"]')
    assert timing.find_elements(By.TAG_NAME, "td")[1].text == "30"
    assert "since it started" in browser.find_element(By.ID, "timing-note").text

    # Filters apply as they change: no button to press.
    Select(browser.find_element(By.ID, "filter-type")).select_by_value("errored")
    wait(browser, lambda b: len(result_rows(b)) == 5, what="the errored results")
    assert {r.get_attribute("data-type") for r in result_rows(browser)} == {"errored"}
    assert {r.get_attribute("data-custom-id") for r in result_rows(browser)} == {f"r-{i}" for i in failing}
    assert "overloaded_error" in result_rows(browser)[0].text
    shot(browser, "results-errored")

    Select(browser.find_element(By.ID, "filter-type")).select_by_value("")
    browser.find_element(By.ID, "filter-custom-id").send_keys("r-7")
    wait(browser, lambda b: [r.get_attribute("data-custom-id") for r in result_rows(b)] == ["r-7"], what="r-7")
    result_rows(browser)[0].find_element(By.TAG_NAME, "summary").click()
    assert '"custom_id": "r-7"' in result_rows(browser)[0].find_element(By.TAG_NAME, "pre").text
    shot(browser, "results-custom-id")

    browser.find_element(By.ID, "delete").click()
    wait(browser, expected_conditions.alert_is_present(), what="the confirmation")
    browser.switch_to.alert.accept()
    wait(browser, lambda b: b.find_element(By.ID, "list").is_displayed(), what="back to the list")
    wait(browser, lambda b: row(b, batch_id) is None and "Deleted" in b.find_element(By.ID, "notice").text)
    assert api.get(f"/v1/messages/batches/{batch_id}").status_code == 404
    assert page_errors(browser) == []


def test_openai_batches_are_shown_labelled(browser: WebDriver, server: ServeProcess, api: httpx.Client) -> None:
    lines = [
        {
            "custom_id": f"o-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-test", "max_tokens": 12, "messages": [{"role": "user", "content": f"Hi {i}"}]},
        }
        for i in range(12)
    ]
    lines[5]["body"]["messages"][0]["content"] = "[[simulate error=api_error]]"
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = api.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", content)}).json()
    created = api.post(
        "/v1/batches",
        json={"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ).json()
    messages_id = create(api, [request("m-1")])
    open_signed_in(browser, server, KEY)
    kinds = "return [...document.querySelectorAll('#batches tbody tr')].map(tr => [tr.dataset.id, tr.querySelector('.kind').textContent])"  # noqa: E501
    wait(browser, lambda b: created["id"] in dict(b.execute_script(kinds)), what="the OpenAI batch in the list")
    shown = dict(browser.execute_script(kinds))
    assert shown[created["id"]] == "OpenAI /v1/chat/completions" and shown[messages_id] == "Messages"
    wait(browser, lambda b: status_of(b, created["id"]) == "ended", timeout=30, what="ended")
    shot(browser, "list-both-kinds")

    open_signed_in(browser, server, KEY, f"#/batch/{created['id']}")
    result_rows = lambda b: b.find_elements(By.CSS_SELECTOR, "#results tbody tr")  # noqa: E731
    wait(browser, lambda b: len(result_rows(b)) == 12, what="the lines of the output and error files")
    assert browser.find_element(By.ID, "batch-kind").text == "OpenAI /v1/chat/completions"
    types = {r.get_attribute("data-custom-id"): r.get_attribute("data-type") for r in result_rows(browser)}
    assert types == {f"o-{i}": "errored" if i == 5 else "succeeded" for i in range(12)}
    assert not browser.find_element(By.ID, "delete").is_displayed()
    assert browser.find_element(By.ID, "download").is_displayed()
    shot(browser, "detail-openai")
    assert page_errors(browser) == []


def number(text: str) -> int:
    return int(text.replace(",", ""))


def ended_batch(api: httpx.Client, requests: list[dict[str, Any]]) -> dict[str, Any]:
    batch_id = create(api, requests)
    for _ in range(600):
        batch = api.get(f"/v1/messages/batches/{batch_id}").json()
        if batch["processing_status"] == "ended":
            return dict(batch)
        time.sleep(0.05)
    raise AssertionError(f"{batch_id} did not end")


def test_batch_page_shows_tokens_models_errors_and_throughput(
    browser: WebDriver, server: ServeProcess, api: httpx.Client
) -> None:
    requests = [
        request(f"t-{i}", f"Tokens {i}" + (" [[simulate error=overloaded_error]]" if i % 6 == 0 else ""))
        for i in range(30)
    ]
    requests.append({"custom_id": "invalid", "params": {"model": MODEL, "messages": []}})  # no max_tokens
    batch = ended_batch(api, requests)
    open_signed_in(browser, server, KEY, f"#/batch/{batch['id']}")
    wait(browser, lambda b: b.find_element(By.ID, "batch-status").text == "ended", what="ended")
    wait(browser, lambda b: b.find_element(By.ID, "throughput").get_attribute("data-total") == "31", what="the chart")
    usage = batch["usage"]
    shown = {
        dd.get_attribute("data-tokens"): number(dd.text) for dd in browser.find_elements(By.CSS_SELECTOR, "#tokens dd")
    }
    assert shown == usage and usage["input_tokens"] > 0
    cost = float(browser.find_element(By.ID, "cost").get_attribute("data-cost") or "nan")
    assert abs(cost - (usage["input_tokens"] * 3 + usage["output_tokens"] * 15) / 1e6) < 1e-6
    assert browser.find_element(By.ID, "cost").text.startswith("Cost: $")
    # The rows by model and backend add up to the batch's own counts.
    for kind, count in batch["request_counts"].items():
        cell = browser.find_element(By.CSS_SELECTOR, f'#by-model tfoot th[data-total="{kind}"]')
        assert number(cell.text) == count, kind
    none = browser.find_element(By.CSS_SELECTOR, '#by-model tbody tr[data-backend=""] td[data-count="errored"]')
    assert none.text == "1"  # the invalid request never reached a backend
    errors = {
        tr.get_attribute("data-error-type"): number(tr.find_elements(By.TAG_NAME, "td")[1].text)
        for tr in browser.find_elements(By.CSS_SELECTOR, "#errors tbody tr")
    }
    assert errors == {"overloaded_error": 5, "invalid_request_error": 1}
    # The chart is drawn by the page itself: some pixels are painted.
    painted = browser.execute_script(
        "const c = document.getElementById('throughput');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;"
    )
    assert painted > 100
    shot(browser, "detail-tokens-models-throughput")
    assert page_errors(browser) == []


def test_results_page_through_all_of_them(browser: WebDriver, server: ServeProcess, api: httpx.Client) -> None:
    batch = ended_batch(api, [request(f"p{i:03d}", f"Page {i}") for i in range(250)])
    open_signed_in(browser, server, KEY, f"#/batch/{batch['id']}")

    def ids(b: WebDriver) -> list[str]:
        return [str(tr.get_attribute("data-custom-id")) for tr in b.find_elements(By.CSS_SELECTOR, "#results tbody tr")]

    wait(browser, lambda b: ids(b) == [f"p{i:03d}" for i in range(100)], what="the first page")
    assert browser.find_element(By.ID, "results-prev").get_attribute("disabled") is not None
    browser.find_element(By.ID, "results-next").click()
    wait(browser, lambda b: ids(b) == [f"p{i:03d}" for i in range(100, 200)], what="the second page")
    browser.find_element(By.ID, "results-next").click()
    wait(browser, lambda b: ids(b) == [f"p{i:03d}" for i in range(200, 250)], what="the last page")
    assert browser.find_element(By.ID, "results-page").text == "201–250 of 250"  # noqa: RUF001
    assert browser.find_element(By.ID, "results-next").get_attribute("disabled") is not None
    shot(browser, "results-last-page")
    browser.find_element(By.ID, "results-prev").click()
    wait(browser, lambda b: ids(b)[0] == "p100", what="back a page")
    assert page_errors(browser) == []


def test_list_filters_by_status_and_metadata_and_sorts(
    browser: WebDriver, server: ServeProcess, api: httpx.Client
) -> None:
    small = ended_batch(api, [request(f"s{i}") for i in range(3)])
    bigger = ended_batch(api, [request(f"b{i}") for i in range(9)])
    slow = create(api, [request(f"w{i}", "Wait [[simulate latency=60]]") for i in range(4)])
    try:
        open_signed_in(browser, server, KEY)
        wait(browser, lambda b: status_of(b, slow) == "in_progress", what="the running batch")

        def listed(b: WebDriver) -> list[str]:
            return [row["id"] for row in table(b)]

        def table(b: WebDriver) -> list[dict[str, Any]]:
            """The list's rows read in one go (the page redraws them as it polls)."""
            rows: list[dict[str, Any]] = b.execute_script(
                "return [...document.querySelectorAll('#batches tbody tr')].map((tr) => ({"
                "id: tr.dataset.id, status: tr.dataset.status,"
                "succeeded: Number(tr.querySelector('td.succeeded').textContent.replace(/,/g, ''))}))"
            )
            return rows

        Select(browser.find_element(By.ID, "filter-status")).select_by_value("ended")
        wait(browser, lambda b: slow not in listed(b) and small["id"] in listed(b), what="only ended batches")
        assert {row["status"] for row in table(browser)} == {"ended"}
        browser.find_element(By.CSS_SELECTOR, '#batches th[data-sort="succeeded"]').click()
        order = listed(browser)
        assert order.index(bigger["id"]) < order.index(small["id"])  # most succeeded first
        succeeded = [row["succeeded"] for row in table(browser)]
        assert succeeded == sorted(succeeded, reverse=True)
        browser.find_element(By.CSS_SELECTOR, '#batches th[data-sort="succeeded"]').click()
        succeeded = [row["succeeded"] for row in table(browser)]
        assert succeeded == sorted(succeeded)
        shot(browser, "list-ended-sorted")
        Select(browser.find_element(By.ID, "filter-status")).select_by_value("in_progress")
        wait(browser, lambda b: listed(b) == [slow], what="only the running batch")
        browser.find_element(By.ID, "metadata-query").send_keys("team=nobody")
        wait(browser, lambda b: b.find_element(By.ID, "empty").is_displayed(), what="no batch with that metadata")
        assert browser.find_element(By.ID, "empty").text == "No batches match these filters."
        browser.find_element(By.ID, "metadata-query").clear()
        Select(browser.find_element(By.ID, "filter-status")).select_by_value("")
        wait(browser, lambda b: slow in listed(b) and small["id"] in listed(b), what="everything again")
        assert page_errors(browser) == []
    finally:
        # A hard cancel: its running requests would hold the backend's slots for a minute.
        api.post(f"/v1/messages/batches/{slow}/cancel", params={"abort_running": "true"})


def test_workspace_page_shows_quotas_usage_and_work_in_flight(
    browser: WebDriver, server: ServeProcess, api: httpx.Client
) -> None:
    ended_batch(api, [request(f"u{i}") for i in range(4)])
    slow = create(api, [request(f"f{i}", "Wait [[simulate latency=60]]") for i in range(6)])
    try:
        open_signed_in(browser, server, KEY)
        browser.find_element(By.ID, "nav-workspace").click()
        wait(browser, lambda b: b.find_element(By.ID, "workspace").is_displayed(), what="the workspace page")
        wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#ws-work tbody tr"), what="work in flight")
        assert browser.find_element(By.ID, "ws-name").text == "team"
        # Read in one go: the page redraws itself every second.
        quotas: dict[str, str] = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#quotas dd')]"
            ".map((dd) => [dd.dataset.quota, dd.innerText]))"
        )
        assert quotas["weight"] == "3"
        assert quotas["max_queued_requests"].endswith("of 100,000")
        assert quotas["max_batches_in_progress"].endswith("of 50")
        assert quotas["max_in_flight_per_backend"] == "4"
        running, waiting = browser.execute_script(
            "const tr = document.querySelector(`#ws-work tbody tr[data-model='${arguments[0]}']`);"
            "return ['running', 'waiting'].map((k) => tr.querySelector(`td[data-${k}]`).textContent)"
            ".map((t) => Number(t.replace(/,/g, '')));",
            MODEL,
        )
        assert running + waiting == 6 and 0 < running <= 4
        usage = api.get("/v1/usage", params={"group_by": "model", "since": int(time.time()) - 86400}).json()
        expected = next(row for row in usage["data"] if row["model"] == MODEL)
        cells: list[str] = browser.execute_script(
            "const tr = document.querySelector(`#usage tbody tr[data-model='${arguments[0]}']`);"
            "return [...tr.querySelectorAll('td')].map((td) => td.textContent);",
            MODEL,
        )
        assert number(cells[1]) == expected["succeeded"] and number(cells[3]) == expected["input_tokens"]
        assert cells[-1].startswith("$")
        shot(browser, "workspace")
        assert page_errors(browser) == []
    finally:
        # A hard cancel: its running requests would hold the backend's slots for a minute.
        api.post(f"/v1/messages/batches/{slow}/cancel", params={"abort_running": "true"})


def test_usable_at_400_pixels(browser: WebDriver, server: ServeProcess, api: httpx.Client) -> None:
    batch = ended_batch(
        api, [request(f"n{i}", "Narrow" + (" [[simulate error=api_error]]" if i == 2 else "")) for i in range(5)]
    )
    browser.set_window_size(400, 900)
    try:
        for fragment, name in (("#/", "list"), (f"#/batch/{batch['id']}", "detail"), ("#/workspace", "workspace")):
            open_signed_in(browser, server, KEY, fragment)
            if name == "detail":
                wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#results tbody tr"), what="results")
            width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"{name}: the page scrolls sideways ({width[0]} > {width[1]} px)"
            shot(browser, f"narrow-{name}")
        assert page_errors(browser) == []
    finally:
        browser.set_window_size(1400, 1000)
