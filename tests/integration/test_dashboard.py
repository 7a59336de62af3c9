"""The web dashboard in a real headless Chromium, on a real ketchd with real (TCG) VMs.

Debian's ``chromium`` and ``chromium-driver``, driven by selenium: open the
dashboard with the URL ``ketch dashboard`` prints, launch an instance from the
page and watch it become Running without a reload, type in its shell and read
the output, read its serial console, stop, start and suspend it from the page,
and see an inconsistency appear when the test deletes the suspend tag by hand.
The attacks (a spent or expired token, a forged POST from another local page,
markup in guest output and in a name) are performed in the same browser.
The screenshots in ``docs/`` are made here (``KETCH_SCREENSHOTS=1``).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chrome import headless_chromium
from ketchcli import Ketch, unique

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.slow]

BOOT = 600.0  # bound on a boot under TCG; never a pass criterion
SHORT = 60.0
DOCS = Path(__file__).parents[2] / "docs"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chrome = headless_chromium()
    try:
        yield chrome
    finally:
        chrome.quit()


def dashboard_url(ketch: Ketch, *args: str) -> str:
    out = ketch.run("dashboard", "--no-browser", *args).stdout.strip()
    assert out.startswith("http://127.0.0.1:") and "/login?token=" in out, out
    return out


@pytest.fixture(scope="module")
def page(ketch: Ketch, browser: WebDriver) -> WebDriver:
    """The dashboard, logged in once with its one-time URL."""
    browser.get(dashboard_url(ketch))
    wait(browser, lambda b: b.find_element(By.ID, "live").text == "live", SHORT)
    assert "/login" not in browser.current_url  # the token left the address bar
    return browser


def wait(b: WebDriver, ok: Callable[[WebDriver], Any], timeout: float) -> Any:
    def safe(driver: WebDriver) -> Any:
        try:
            return ok(driver)
        except StaleElementReferenceException:  # the row was re-rendered meanwhile
            return False

    return WebDriverWait(b, timeout, poll_frequency=0.2).until(safe)


def state(b: WebDriver, name: str) -> str:
    cells = b.find_elements(By.CSS_SELECTOR, f'tr[data-name="{name}"] td.state')
    return cells[0].get_attribute("data-state") or "" if cells else ""


def click(b: WebDriver, name: str, action: str) -> None:
    b.find_element(By.CSS_SELECTOR, f'tr[data-name="{name}"] [data-action="{action}"]').click()


def shoot(b: WebDriver, what: str) -> None:
    if os.environ.get("KETCH_SCREENSHOTS"):
        b.save_screenshot(str(DOCS / f"dashboard-{what}.png"))


def no_reload_marker(b: WebDriver) -> None:
    b.execute_script("window.__kept = 'same page';")


def same_page(b: WebDriver) -> bool:
    return bool(b.execute_script("return window.__kept === 'same page';"))


@pytest.fixture(scope="module")
def launched(ketch: Ketch, page: WebDriver) -> Iterator[str]:
    """An instance launched from the page (purged at the end)."""
    name = unique("web")
    page.get(page.current_url.split("#")[0] + "#/instances")
    no_reload_marker(page)
    page.find_element(By.ID, "nav-launch").click()
    wait(page, lambda b: b.find_elements(By.CSS_SELECTOR, "#launch-image option"), SHORT)
    page.find_element(By.ID, "launch-name").send_keys(name)
    memory = page.find_element(By.ID, "launch-memory")
    memory.clear()
    memory.send_keys("512M")
    shoot(page, "launch")
    page.find_element(By.ID, "launch-submit").click()
    try:
        wait(page, lambda b: state(b, name) not in ("", "Running"), BOOT)  # seen on its way
        wait(page, lambda b: state(b, name) == "Running", BOOT)
        yield name
    finally:
        ketch.run("delete", "--purge", name, check=False)


def test_launched_from_the_page_and_running_without_a_reload(
    ketch: Ketch, page: WebDriver, launched: str
) -> None:
    assert same_page(page)  # the row changed by itself: no reload, no navigation
    assert ketch.state(launched) == "Running"  # what the page says, list says
    row = page.find_element(By.CSS_SELECTOR, f'tr[data-name="{launched}"]')
    assert "▶ Running" in row.text and "10.0.2.15" in row.text and "512MiB" in row.text
    done = page.find_elements(By.CSS_SELECTOR, "#activity li.done")
    assert any(f"launch {launched}: done" in d.text for d in done)
    shoot(page, "instances")


def test_a_command_typed_in_the_shell_and_its_output(page: WebDriver, launched: str) -> None:
    page.find_element(By.CSS_SELECTOR, f'tr[data-name="{launched}"] [data-action="shell"]').click()
    keys = wait(page, lambda b: b.find_element(By.ID, "keys"), SHORT)
    wait(page, lambda b: "$" in b.find_element(By.ID, "screen").text
         or "#" in b.find_element(By.ID, "screen").text, SHORT)  # fmt: skip
    keys.send_keys("echo dash-$((6*7))\n")
    wait(page, lambda b: "dash-42" in b.find_element(By.ID, "screen").text.replace("$((6*7))", ""),
         SHORT)  # fmt: skip
    # guest output is text: markup printed by the guest is shown, never run
    keys.send_keys("echo '<img src=x onerror=window.__xss=1>'\n")
    wait(page, lambda b: b.find_element(By.ID, "screen").text.count("<img src=x") >= 2, SHORT)
    assert page.execute_script("return window.__xss") is None
    assert page.find_elements(By.CSS_SELECTOR, "#screen img") == []
    shoot(page, "shell")


def test_the_serial_console_shows_the_boot_and_guest_markup_as_text(
    ketch: Ketch, page: WebDriver, launched: str
) -> None:
    ketch.run("exec", launched, "--", "sh", "-c",
              "echo '<script>window.__xss=2</script>' | sudo tee /dev/ttyS0")  # fmt: skip
    page.find_element(By.ID, "nav-instances").click()
    click(page, launched, "console")
    wait(page, lambda b: "<script>window.__xss=2</script>" in b.find_element(By.ID, "screen").text,
         SHORT)  # fmt: skip
    assert page.execute_script("return window.__xss") is None
    assert page.find_elements(By.CSS_SELECTOR, "#screen script") == []
    shoot(page, "console")


def test_stop_start_suspend_and_an_inconsistency_appears(
    ketch: Ketch, page: WebDriver, launched: str
) -> None:
    page.find_element(By.ID, "nav-instances").click()
    no_reload_marker(page)
    click(page, launched, "stop")
    wait(page, lambda b: state(b, launched) == "Stopped", BOOT)
    assert ketch.state(launched) == "Stopped"
    click(page, launched, "start")
    wait(page, lambda b: state(b, launched) == "Running", BOOT)
    click(page, launched, "suspend")
    wait(page, lambda b: state(b, launched) == "Suspended", BOOT)
    assert "suspend" in ketch.tags(launched)
    subprocess.run(["qemu-img", "snapshot", "-d", "suspend", str(ketch.disk(launched))],
                   check=True)  # fmt: skip
    cell = f'tr[data-name="{launched}"] td.inconsistencies'
    wait(page, lambda b: "⚠" in b.find_element(By.CSS_SELECTOR, cell).text, SHORT)
    text = page.find_element(By.CSS_SELECTOR, cell).text
    codes = ketch.codes(launched)
    assert codes, "list/info show the inconsistency too"
    info = ketch.info(launched)["inconsistencies"]
    assert all(i["message"] in text for i in info)
    assert same_page(page)
    shoot(page, "inconsistency")


def test_a_name_with_markup_is_refused_with_the_clis_text(page: WebDriver) -> None:
    page.find_element(By.ID, "nav-launch").click()
    hostile = "<img src=x onerror=window.__xss=3>"
    field = page.find_element(By.ID, "launch-name")
    field.clear()
    field.send_keys(hostile)
    page.find_element(By.ID, "launch-submit").click()
    error = wait(page, lambda b: [e for e in b.find_elements(By.CSS_SELECTOR, "#activity li.error")
                                  if hostile in e.text], SHORT)  # fmt: skip
    assert "error:" in error[0].text
    assert page.execute_script("return window.__xss") is None
    assert page.find_elements(By.CSS_SELECTOR, "#activity img") == []


def test_settings_page(page: WebDriver) -> None:
    page.find_element(By.ID, "nav-settings").click()
    driver = '#settings input[aria-label="local.driver"]'
    wait(page, lambda b: b.find_elements(By.CSS_SELECTOR, driver), SHORT)
    field = page.find_element(By.CSS_SELECTOR, driver)
    wait(page, lambda b: field.get_attribute("value") == "qemu", SHORT)
    shoot(page, "settings")


def test_every_control_is_reached_with_the_keyboard(page: WebDriver, launched: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.find_element(By.ID, "nav-instances").click()
    wait(page, lambda b: state(b, launched) != "", SHORT)
    page.execute_script("document.querySelector('.skip').focus();")  # the page's first stop
    reached: list[str] = [page.switch_to.active_element.text]
    for _ in range(120):
        ActionChains(page).send_keys(Keys.TAB).perform()
        focused = page.switch_to.active_element
        reached.append(focused.get_attribute("aria-label") or focused.text)
        if reached[-1] == f"Serial console of {launched}":
            break
    for wanted in ("Skip to content", "Instances", "Launch", "Settings", f"Start {launched}",
                   f"Stop {launched}", f"Purge {launched}", f"Shell in {launched}"):  # fmt: skip
        assert wanted in reached, (wanted, reached)
    # Enter on a link follows it, as a click does
    page.find_element(By.ID, "nav-launch").send_keys(Keys.ENTER)
    wait(page, lambda b: b.find_element(By.ID, "page-launch").is_displayed(), SHORT)
    page.find_element(By.ID, "nav-instances").click()


def test_readable_at_200_percent_zoom(page: WebDriver, launched: str) -> None:
    """200 %: half the CSS width; the page reflows, only the table scrolls (in its own box)."""
    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 700, "height": 500, "deviceScaleFactor": 2, "mobile": False},
    )
    try:
        page.find_element(By.ID, "nav-instances").click()
        wait(page, lambda b: state(b, launched) != "", SHORT)
        overflow = page.execute_script(
            "const d = document.documentElement; return d.scrollWidth - d.clientWidth;"
        )
        assert overflow <= 0
        page.find_element(By.ID, "nav-launch").click()
        overflow = page.execute_script(
            "const d = document.documentElement; return d.scrollWidth - d.clientWidth;"
        )
        assert overflow <= 0
        page.find_element(By.ID, "nav-instances").click()
        shoot(page, "zoom200")
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_missing_csrf_token_is_refused_in_the_page(page: WebDriver, launched: str) -> None:
    status = page.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/v1/instances/{launched}/start', {{method: 'POST', body: '{{}}',"
        " headers: {'Content-Type': 'application/json'}}).then(r => done(r.status));"
    )
    assert status == 403


class Attacker(http.server.BaseHTTPRequestHandler):
    """A page on another local port (the same site: SameSite does not stop it)."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><form id=f method=post enctype=text/plain "
            f'action="{self.target}"><input name=\'{{"force": true, "x":"\' value=\'"}}\'>'
            "</form><script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_forged_post_from_another_local_page_does_nothing(
    ketch: Ketch, page: WebDriver, launched: str
) -> None:
    before = ketch.state(launched)
    base = page.current_url.split("#")[0].rstrip("/")
    Attacker.target = f"{base}/v1/instances/{launched}/stop"
    server = http.server.HTTPServer(("127.0.0.1", 0), Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait(page, lambda b: "forbidden" in b.find_element(By.TAG_NAME, "body").text, SHORT)
        doc = json.loads(page.find_element(By.TAG_NAME, "body").text)
        assert doc["error"]["code"] == "forbidden"
    finally:
        server.shutdown()
    assert ketch.state(launched) == before  # nothing was done
    page.get(base + "/#/instances")


def test_a_spent_and_an_expired_token_are_refused(ketch: Ketch, page: WebDriver) -> None:
    url = dashboard_url(ketch, "--ttl", "1")
    time.sleep(1.5)  # past its time to live (what is checked is the refusal, not a duration)
    page.delete_all_cookies()
    page.get(url)
    assert "expired or was already used" in page.find_element(By.TAG_NAME, "body").text
    fresh = dashboard_url(ketch)
    page.get(fresh)
    wait(page, lambda b: b.find_element(By.ID, "live").text == "live", SHORT)
    page.delete_all_cookies()
    page.get(fresh)  # the same URL again: spent
    assert "expired or was already used" in page.find_element(By.TAG_NAME, "body").text
    page.get(fresh.split("/login")[0] + "/")
    assert "not logged in" in page.find_element(By.TAG_NAME, "body").text
