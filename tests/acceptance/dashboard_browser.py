"""A real headless Chromium for the dashboard's tests (Debian's `chromium` + `chromium-driver`,
driven by Selenium), and what those tests do with it. A test module imports the `browser` fixture
from here and marks itself `pytestmark = needs_chromium`: without both programs its tests skip."""

from __future__ import annotations

import json
import shutil
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
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium is not installed (apt-get install chromium chromium-driver) - browser tests skipped",
)

# Screenshots land here (git-ignored).
ARTIFACTS = Path(__file__).parent.parent / "artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
        "--disable-dev-shm-usage",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def create(api: httpx.Client, requests: list[dict[str, Any]], **options: Any) -> str:
    response = api.post("/v1/messages/batches", content=json.dumps({"requests": requests, **options}))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait(browser: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 20, what: str = "") -> Any:
    # The page redraws parts of itself as it polls: an element found a moment ago may be gone.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(browser, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(condition, what)


def open_signed_in(browser: WebDriver, server: ServeProcess, key: str, fragment: str = "#/") -> None:
    browser.get(f"{server.base_url}/{fragment}")
    section = {"#/": "list", "#/workspace": "workspace"}.get(fragment, "detail")
    # The script runs after the page loads: wait until it shows either the key form or the view.
    wait(
        browser,
        lambda b: b.find_element(By.ID, "login").is_displayed() or b.find_element(By.ID, section).is_displayed(),
    )
    if browser.find_element(By.ID, "login").is_displayed():
        field = browser.find_element(By.ID, "key")
        field.clear()
        field.send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait(browser, lambda b: b.find_element(By.ID, section).is_displayed(), what=f"the {section} view")


def page_errors(browser: WebDriver) -> list[str]:
    """Console errors other than the failed fetches a test provoked on purpose (401)."""
    return [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "status of 401" not in e["message"]
    ]
