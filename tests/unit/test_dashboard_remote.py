"""The dashboard on ketchd's TLS listener: the remote policy over real TLS 1.3 on 127.0.0.1.

A real daemon (fake hypervisor) with a real TLS listener (``open_remote``, as
ketchd starts it); the tests speak HTTPS to it as a browser would, and as an
attacker could: no certificate and no cookie, wrong passphrases (at the login
and at enrolment, counted together), a cookie without the CSRF secret, a
foreign Origin, a rebinding Host, an expired session, a session that tries the
routes a page never calls.  A trusted client certificate still needs no login.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chrome import headless_chromium
from fakes import FakeClock
from ports import free_port
from test_daemon_api import WAIT, Env, serving
from test_dashboard_auth import Browser as LocalBrowser

from ketch import certs, passphrase
from ketch.daemon.auth import PASSPHRASE_KEY, Attempts, Trust
from ketch.daemon.guard import Limits
from ketch.daemon.web import DashboardRoutes
from ketch.daemon.web.auth import COOKIE, CSRF_HEADER, MAX_SESSIONS, SESSION_TTL, Sessions
from ketch.daemon.web.remote import RemoteAuth, host_allowed, open_remote

PASSPHRASE = "correct horse battery staple"
LIMIT = 3  # failed passphrases per address before the rate limit


@dataclass
class Remote:
    env: Env
    port: int
    clock: FakeClock
    auth: RemoteAuth
    tmp: Path
    api: Any

    def browser(self, source: str = "127.0.0.1") -> Browser:
        return Browser(self.port, source)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    with serving(tmp_path) as env:
        api: Any = next(
            getattr(h, "__self__", None)
            for h in env.daemon.app.on_shutdown
            if isinstance(getattr(h, "__self__", None), DashboardRoutes)
        )
        clock = FakeClock()
        api.trust, api.attempts = Trust(env.root), Attempts(LIMIT, 60.0, clock)
        env.store.set_setting(PASSPHRASE_KEY, passphrase.hash_passphrase(PASSPHRASE))
        listener, runner, auth = env.daemon.call(
            open_remote(api, env.root, Limits.from_env(), clock)
        )
        port = free_port()
        env.daemon.call(listener.move(f"127.0.0.1:{port}"))
        try:
            yield Remote(env, port, clock, auth, tmp_path, api)
        finally:
            env.daemon.call(listener.move(None))
            env.daemon.call(runner.cleanup())


class Browser(LocalBrowser):
    """HTTPS to the listener, keeping the session cookie, as a browser without a certificate
    (or with one: ``cert``)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        super().__init__(port)
        self.source = source
        self.cert: tuple[str, str] | None = None

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def connect(self) -> http.client.HTTPConnection:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the self-signed certificate, accepted
        if self.cert is not None:
            ctx.load_cert_chain(*self.cert)
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=WAIT, context=ctx, source_address=(self.source, 0)
        )

    def login(  # type: ignore[override]  # a passphrase, not a login URL
        self, secret: str, origin: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        form = urllib.parse.urlencode({"passphrase": secret}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        headers["Origin"] = origin or self.origin
        status, got, data = self.send("POST", "/login", form, headers)
        if status == 303:
            self.cookie = got["set-cookie"].split(";", 1)[0].split("=", 1)[1]
        return status, got, data

    def logged_in(self) -> str:
        """Log in with the right passphrase: the CSRF secret (the redirect's fragment)."""
        status, headers, data = self.login(PASSPHRASE)
        assert status == 303, data
        assert headers["location"].startswith("/#s=")
        return headers["location"].split("#s=", 1)[1]


def error(data: bytes) -> dict[str, str]:
    detail: dict[str, str] = json.loads(data)["error"]
    return detail


def enrol(remote: Remote, secret: str, source: str = "127.0.0.1") -> tuple[int, bytes, Path]:
    """``POST /v1/authenticate`` with a fresh certificate: status, body, the cert's files."""
    cert, key = certs.make_pair("browser")
    crt, pem = remote.tmp / f"c{id(cert)}.crt", remote.tmp / f"c{id(cert)}.key"
    crt.write_bytes(cert)
    pem.write_bytes(key)
    body = json.dumps({"passphrase": secret, "certificate": cert.decode()}).encode()
    status, _, data = Browser(remote.port, source).send(
        "POST", "/v1/authenticate", body, {"Content-Type": "application/json"}
    )
    return status, data, crt


# -- without a certificate or a session -----------------------------------------------------


def test_no_certificate_and_no_cookie_the_api_is_refused_and_the_login_page_served(
    remote: Remote,
) -> None:
    remote.env.add("alpha")
    b = remote.browser()
    for method, path in (("GET", "/v1/instances"), ("POST", "/v1/instances/alpha/stop")):
        status, _, data = b.send(method, path, b"{}")
        assert status == 401 and error(data)["code"] == "unauthenticated", path
        assert "/login" in error(data)["hint"]
    status, headers, _ = b.send("GET", "/")
    assert status == 303 and headers["location"] == "/login"
    status, headers, page = b.send("GET", "/login")
    assert status == 200 and b'type="password"' in page and b'action="/login"' in page
    assert "form-action 'self'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "same-origin"  # its POST carries its Origin
    for external in (b"<script", b"<style", b"<link", b"src=", b"style="):
        assert external not in page  # nothing the page's CSP would block, nothing fetched
    assert remote.env.states() == {"alpha": "Running"}


def test_wrong_passphrases_are_refused_then_rate_limited_with_enrolment_counted_too(
    remote: Remote,
) -> None:
    b = remote.browser("127.0.0.2")
    status, _, page = b.login("guess 1")
    assert status == 401 and b"Passphrase is not correct" in page and b.cookie is None
    status, data, _ = enrol(remote, "guess 2", "127.0.0.2")  # the same address, enrolling
    assert status == 401, data
    assert b.login("guess 3")[0] == 401
    status, _, page = b.login(PASSPHRASE)  # even the right one, now
    assert status == 429 and b"too many failed passphrases from 127.0.0.2" in page
    assert b"try again later" in page  # the hint too
    assert b.cookie is None
    status, data, _ = enrol(remote, PASSPHRASE, "127.0.0.2")  # and enrolment from there
    assert status == 429 and error(data)["code"] == "rate-limited"
    assert remote.browser("127.0.0.1").login(PASSPHRASE)[0] == 303  # another address is not
    remote.clock.advance(61)  # the window passed
    assert b.login(PASSPHRASE)[0] == 303


def test_the_right_passphrase_sets_a_secure_httponly_strict_cookie(remote: Remote) -> None:
    b = remote.browser()
    status, headers, _ = b.login(PASSPHRASE)
    assert status == 303 and headers["location"].startswith("/#s=")
    name_value, *flags = [part.strip() for part in headers["set-cookie"].split(";")]
    assert name_value.startswith(f"{COOKIE}=")
    named = {f.split("=", 1)[0].lower(): f for f in flags}
    assert named.pop("httponly") == "HttpOnly"
    assert named.pop("secure") == "Secure"
    assert named.pop("samesite") == "SameSite=Strict"
    assert named.pop("path") == "Path=/"
    assert set(named) == {"max-age"}  # nothing else (no Domain)
    status, _, page = b.send("GET", "/")
    assert status == 200 and b"ketch dashboard" in page


def test_a_cookie_without_the_csrf_secret_reads_nothing(remote: Remote) -> None:
    remote.env.add("alpha")
    b = remote.browser()
    csrf = b.logged_in()
    for path in ("/v1/instances", "/v1/events", "/v1/settings/local.driver"):
        status, _, data = b.send("GET", path)
        assert status == 403 and error(data)["code"] == "forbidden", path
    wrong = {CSRF_HEADER: "x" * len(csrf)}
    assert b.send("GET", "/v1/instances", headers=wrong)[0] == 403
    status, _, data = b.send("GET", "/v1/instances", headers={CSRF_HEADER: csrf})
    assert status == 200 and [i["name"] for i in json.loads(data)["list"]] == ["alpha"]


def test_a_state_change_needs_the_secret_and_the_listeners_origin(remote: Remote) -> None:
    remote.env.add("alpha")
    b = remote.browser()
    csrf = b.logged_in()
    stop, body = "/v1/instances/alpha/stop", b'{"force": true}'
    plain = {"Content-Type": "application/json"}
    assert b.send("POST", stop, body, plain)[0] == 403  # the cookie alone
    foreign = {**plain, CSRF_HEADER: csrf, "Origin": "https://evil.example"}
    status, _, data = b.send("POST", stop, body, foreign)
    assert status == 403 and "another origin" in error(data)["message"]
    status, _, data = b.send("POST", stop, body, {**plain, CSRF_HEADER: csrf})  # no Origin
    assert status == 403 and "without an Origin" in error(data)["message"]
    http_origin = {**plain, CSRF_HEADER: csrf, "Origin": f"http://127.0.0.1:{remote.port}"}
    assert b.send("POST", stop, body, http_origin)[0] == 403  # not this listener's scheme
    assert remote.env.states() == {"alpha": "Running"}  # nothing happened
    good = {**plain, CSRF_HEADER: csrf, "Origin": b.origin}
    status, _, data = b.send("POST", stop, body, good)
    assert status == 200 and b'"type":"result"' in data
    assert remote.env.states() == {"alpha": "Stopped"}


def test_a_websocket_needs_its_origin_and_the_csrf_secret(remote: Remote) -> None:
    remote.env.add("alpha")
    b = remote.browser()
    csrf = b.logged_in()
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    assert b.send("GET", f"/ws/console/alpha?csrf={csrf}", headers=upgrade)[0] == 403
    evil = {**upgrade, "Origin": "https://evil.example"}
    assert b.send("GET", f"/ws/console/alpha?csrf={csrf}", headers=evil)[0] == 403
    own = {**upgrade, "Origin": b.origin}
    assert b.send("GET", "/ws/console/alpha", headers=own)[0] == 403  # no secret
    assert b.send("GET", f"/ws/console/alpha?csrf={csrf}", headers=own)[0] == 101


def test_an_expired_session_is_refused(remote: Remote) -> None:
    b = remote.browser()
    csrf = b.logged_in()
    assert b.send("GET", "/v1/instances", headers={CSRF_HEADER: csrf})[0] == 200
    remote.clock.advance(SESSION_TTL + 1)
    status, _, data = b.send("GET", "/v1/instances", headers={CSRF_HEADER: csrf})
    assert status == 401 and error(data)["code"] == "unauthenticated"
    assert b.send("GET", "/")[0] == 303  # back to the login


def test_sessions_are_bounded_the_oldest_goes_first() -> None:
    sessions = Sessions(FakeClock())
    first, _ = sessions.open()
    for _ in range(MAX_SESSIONS):
        sessions.open()
    assert len(sessions) == MAX_SESSIONS
    assert first not in sessions._sessions


def test_a_made_up_cookie_is_no_session(remote: Remote) -> None:
    b = remote.browser()
    b.cookie = "forged"
    assert b.send("GET", "/v1/instances", headers={CSRF_HEADER: "forged"})[0] == 401
    assert b.send("GET", "/")[0] == 303


def test_dns_rebinding_another_host_name_is_refused(remote: Remote) -> None:
    b = remote.browser()
    csrf = b.logged_in()
    rebound = f"evil.example:{remote.port}"
    status, _, data = b.send("GET", "/v1/instances", headers={"Host": rebound, CSRF_HEADER: csrf})
    assert status == 403 and "does not answer to evil.example" in error(data)["message"]
    assert b.send("GET", "/", headers={"Host": rebound})[0] == 403
    assert b.send("GET", "/login", headers={"Host": rebound})[0] == 403
    form = urllib.parse.urlencode({"passphrase": PASSPHRASE}).encode()
    headers = {"Host": rebound, "Content-Type": "application/x-www-form-urlencoded"}
    assert b.send("POST", "/login", form, headers)[0] == 403
    other_port = {"Host": f"127.0.0.1:{remote.port + 1}", CSRF_HEADER: csrf}
    assert b.send("GET", "/v1/instances", headers=other_port)[0] == 403
    localhost = {"Host": f"localhost:{remote.port}", CSRF_HEADER: csrf}
    assert b.send("GET", "/v1/instances", headers=localhost)[0] == 200


@pytest.mark.parametrize(
    ("host", "bound", "allowed"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443), True),
        ("localhost:8443", ("127.0.0.1", 8443), True),
        ("LOCALHOST:8443", ("::1", 8443), True),
        ("[::1]:8443", ("::1", 8443), True),
        ("10.1.2.3:8443", ("0.0.0.0", 8443), True),  # a wildcard: any IP literal
        ("[fe80::1]:8443", ("::", 8443), True),
        ("10.1.2.3", ("10.1.2.3", 443), True),  # no port: 443
        ("evil.example:8443", ("0.0.0.0", 8443), False),  # a name: could be a rebinding
        ("evil.example:8443", ("127.0.0.1", 8443), False),
        ("10.1.2.3:8443", ("127.0.0.1", 8443), False),
        ("127.0.0.1:8444", ("127.0.0.1", 8443), False),
        ("127.0.0.1", ("127.0.0.1", 8443), False),
        ("127.0.0.1:x", ("127.0.0.1", 8443), False),
        ("[::1]", ("::1", 8443), False),
        ("", ("127.0.0.1", 8443), False),
        ("127.0.0.1:8443", None, False),  # not listening
    ],
)
def test_the_host_must_name_the_listener(
    host: str, bound: tuple[str, int] | None, allowed: bool
) -> None:
    assert host_allowed(host, bound) is allowed


def test_a_login_posted_from_another_origin_is_refused(remote: Remote) -> None:
    b = remote.browser()
    status, _, data = b.login(PASSPHRASE, origin="https://evil.example")
    assert status == 403 and b.cookie is None and error(data)["code"] == "forbidden"


def test_a_session_reaches_only_what_the_page_calls(remote: Remote) -> None:
    """Not ``/v1/dashboard`` (a logged-in page mints no logins), nor the SSH tunnel."""
    b = remote.browser()
    csrf = b.logged_in()
    headers = {CSRF_HEADER: csrf, "Origin": b.origin, "Content-Type": "application/json"}
    status, _, data = b.send("POST", "/v1/dashboard", b"{}", headers)
    assert status == 403 and "cannot use /v1/dashboard" in error(data)["message"]
    assert b.send("GET", "/openapi.json", headers=headers)[0] == 403
    assert remote.api._dashboard is None  # no local listener was opened


def test_without_a_passphrase_no_login_is_possible(remote: Remote) -> None:
    remote.env.store.set_setting(PASSPHRASE_KEY, None)
    b = remote.browser()
    status, _, page = b.send("GET", "/login")
    assert status == 200 and b"no login is possible" in page and b"<form" not in page
    status, _, page = b.login("")
    assert status == 403 and b"no login is possible" in page and b.cookie is None


def test_a_trusted_client_certificate_needs_no_login(remote: Remote) -> None:
    remote.env.add("alpha")
    status, data, crt = enrol(remote, PASSPHRASE)
    assert status == 200, data
    b = remote.browser()
    b.cert = (str(crt), str(crt.with_suffix(".key")))
    status, _, data = b.send("GET", "/v1/instances")  # no cookie, no CSRF secret, any Host
    assert status == 200 and [i["name"] for i in json.loads(data)["list"]] == ["alpha"]
    assert b.send("GET", "/openapi.json", headers={"Host": "x"})[0] == 200
    assert b.send("GET", "/")[0] == 200  # the page too
    stop, body = "/v1/instances/alpha/stop", b'{"force": true}'
    forged = {"Content-Type": "text/plain", "Origin": "https://evil.example"}
    status, _, data = b.send("POST", stop, body, forged)  # another site's form, with the cert
    assert status == 403 and "another origin" in error(data)["message"]
    assert b.send("POST", stop, body, {**forged, "Origin": "null"})[0] == 403
    assert remote.env.states() == {"alpha": "Running"}
    assert b.send("POST", stop, body, {"Content-Type": "application/json"})[0] == 200  # the CLI
    assert remote.env.states() == {"alpha": "Stopped"}
    status, headers, _ = b.send("GET", "/login")  # no passphrase: the page's secret at once
    assert status == 303 and headers["location"].startswith("/#s=")
    assert "Secure" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]


# -- in a real browser ------------------------------------------------------------------------


def test_chromium_logs_in_with_the_passphrase_and_sees_the_instances(remote: Remote) -> None:
    """Headless Chromium: the self-signed certificate accepted, the login form, the list."""
    remote.env.add("alpha")
    remote.env.add("bravo", running=False)
    chrome = headless_chromium(accept_insecure_certs=True)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        chrome.get(f"https://127.0.0.1:{remote.port}/")  # no session: the login page
        WebDriverWait(chrome, WAIT).until(lambda b: b.find_elements(By.ID, "passphrase"))
        assert chrome.current_url.endswith("/login")
        chrome.find_element(By.ID, "passphrase").send_keys("not it")
        chrome.find_element(By.ID, "login").click()
        WebDriverWait(chrome, WAIT).until(lambda b: b.find_elements(By.ID, "message"))
        assert "Passphrase is not correct" in chrome.find_element(By.ID, "message").text
        chrome.find_element(By.ID, "passphrase").send_keys(PASSPHRASE)
        chrome.find_element(By.ID, "login").click()
        rows = 'tr[data-name="alpha"], tr[data-name="bravo"]'
        WebDriverWait(chrome, WAIT).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, rows)))
        WebDriverWait(chrome, WAIT).until(lambda b: b.find_element(By.ID, "live").text == "live")
        names = {r.get_attribute("data-name") for r in chrome.find_elements(By.CSS_SELECTOR, rows)}
        assert names == {"alpha", "bravo"}
        assert "#s=" not in chrome.current_url  # the secret left the address bar
        cookie = chrome.get_cookie(COOKIE)
        assert cookie is not None and cookie["httpOnly"] and cookie["secure"]
        assert cookie["sameSite"] == "Strict"
        assert chrome.execute_script("return document.cookie") == ""  # HttpOnly: not for scripts
        # an action from the page: its secret and its Origin go with it
        chrome.find_element(By.CSS_SELECTOR, 'tr[data-name="alpha"] [data-action="stop"]').click()
        stopped = 'tr[data-name="alpha"] td.state[data-state="Stopped"]'
        WebDriverWait(chrome, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR, stopped))
        assert remote.env.states()["alpha"] == "Stopped"
        # the session ends: the next action leads back to the login, and does nothing
        remote.clock.advance(SESSION_TTL + 1)
        chrome.find_element(By.CSS_SELECTOR, 'tr[data-name="alpha"] [data-action="start"]').click()
        WebDriverWait(chrome, WAIT).until(lambda b: b.find_elements(By.ID, "passphrase"))
        assert chrome.current_url.endswith("/login")
        assert remote.env.states()["alpha"] == "Stopped"
    finally:
        chrome.quit()
