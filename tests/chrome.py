"""Headless Chromium under selenium (Debian's ``chromium`` and ``chromium-driver``), for the
dashboard's browser tests in tests/unit and tests/integration; skipped when not installed."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
        "--disable-background-networking", "--disable-sync",
        "--disable-component-update")  # fmt: skip


def headless_chromium(*, accept_insecure_certs: bool = False) -> WebDriver:
    """A new browser (quit it when done); ``accept_insecure_certs``: a self-signed server's."""
    webdriver = pytest.importorskip("selenium.webdriver")
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromium-driver are not installed (scripts/install --test)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    options.accept_insecure_certs = accept_insecure_certs
    for arg in ARGS:
        options.add_argument(arg)
    chrome: WebDriver = webdriver.Chrome(options=options, service=Service(driver))
    return chrome
