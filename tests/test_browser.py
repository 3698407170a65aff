"""The quick-profile report of the tiny model, opened from file:// in headless Chromium.

Checks: no console errors, no request to anything but the page's own files, every
circuitsvis view rendered (DOM nodes inside each view container), every page reachable
from the index by links. Saves a light and a dark screenshot of every page to
``$EMOLENS_ARTIFACTS/screenshots`` (default: the test's tmp dir).

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
without them the test is skipped, unless ``EMOLENS_REQUIRE_BROWSER=1`` makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emolens import pipeline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
VIEW_TIMEOUT = 30  # seconds for React to draw every view of a page


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        message = "headless browser test needs chromium and chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("EMOLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Path:
    """The whole quick pipeline on the tiny model, every registered experiment included."""
    out = tmp_path_factory.mktemp("browser-run")
    original = pipeline.tiny_random_model
    pipeline.tiny_random_model = lambda seed=0: tiny_model  # type: ignore[assignment]
    try:
        outcome = pipeline.run_all(pipeline.TINY, out, profile="quick")
    finally:
        pipeline.tiny_random_model = original  # type: ignore[assignment]
    assert not outcome.failures, outcome.failures
    return out / "report"


def _screenshots() -> Path:
    root = Path(os.environ.get("EMOLENS_ARTIFACTS", "")) if os.environ.get("EMOLENS_ARTIFACTS") else None
    target = (root or Path(os.environ.get("TMPDIR", "/tmp")) / "emolens-browser") / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    return target


def _requests(browser: Any) -> list[str]:
    """URLs the page asked the network layer for since the last call (from the CDP performance log)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _full_page_screenshot(browser: Any, path: Path) -> None:
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(int(height) + 200, 900), 12000))
    browser.save_screenshot(str(path))
    browser.set_window_size(1280, 900)


def test_report_in_headless_chromium(driver: Any, report: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pages = {path.name for path in report.glob("*.html")}
    assert "index.html" in pages and len(pages) >= 3
    shots = _screenshots()
    seen: set[str] = set()
    queue = ["index.html"]
    total_views = 0
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        driver.get((report / name).as_uri())
        views = driver.find_elements(By.CSS_SELECTOR, ".cv-view")
        total_views += len(views)
        WebDriverWait(driver, VIEW_TIMEOUT).until(
            lambda d: all(
                d.execute_script("return arguments[0].querySelectorAll('*').length", view) > 0
                for view in d.find_elements(By.CSS_SELECTOR, ".cv-view")
            ),
            message=f"{name}: a circuitsvis view stayed empty",
        )
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert not errors, f"{name}: console errors {errors}"
        foreign = [url for url in _requests(driver) if not url.startswith(("file://", "data:"))]
        assert not foreign, f"{name}: network requests {foreign}"
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(u => !u.startsWith('file:') && !u.startsWith('data:'))"
        )
        assert not resources, f"{name}: resources fetched {resources}"
        _full_page_screenshot(driver, shots / f"{name[:-5]}-light.png")
        driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
        )
        _full_page_screenshot(driver, shots / f"{name[:-5]}-dark.png")
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        for link in driver.find_elements(By.CSS_SELECTOR, "a[href]"):
            href = link.get_attribute("href") or ""
            if href.startswith("file://") and href.endswith(".html"):
                queue.append(Path(href.removeprefix("file://")).name)
    assert seen == pages, f"pages not reachable from the index: {sorted(pages - seen)}"
    assert total_views >= 3  # the validation page's story readings at least
