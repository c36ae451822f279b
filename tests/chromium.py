"""Headless Chromium for the browser tests (status page, /client.js, /demo): one place that
finds the Debian chromium and chromium-driver, starts a driver with the options every such
test needs, and runs the driver's blocking calls off the event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

T = TypeVar("T")


def start_chromium(profile: Path, wait: float) -> WebDriver:
    """A headless Chromium with its own profile directory, 1280x900, the page's console log
    kept; page loads and scripts time out after ``wait`` seconds."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(
                f"the browser tests need {path} (Debian packages chromium and "
                "chromium-driver; scripts/test installs them)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        "--hide-scrollbars",  # screenshots show the page, not the scrollbars
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Given the driver's path, Selenium does not look for (or download) one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(wait)
    driver.set_script_timeout(wait)
    return driver


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """Call one of the driver's blocking methods without blocking the loop (the gateway
    under test may be in this very loop)."""
    return await asyncio.to_thread(function, *args)


def module_browser(wait: float) -> Any:
    """A module-scoped ``browser`` fixture: one headless Chromium for the module (each test
    loads its own page), scripts timing out after ``wait`` seconds. In the test module:
    ``browser = module_browser(WAIT)``."""

    @pytest.fixture(scope="module")
    def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
        driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"), wait)
        try:
            yield driver
        finally:
            driver.quit()

    return browser
