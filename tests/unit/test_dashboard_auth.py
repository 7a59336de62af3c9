"""The dashboard's local policy over real HTTP on 127.0.0.1: tokens, cookies, CSRF, Host, Origin.

A real daemon (fake hypervisor) opens the dashboard with ``POST /v1/dashboard``;
the tests speak HTTP to it as a browser would, and as an attacker's page could
make a browser speak (a request without the CSRF token, from another Origin,
a rebinding Host, a spent or expired token).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fakes import FakeClock
from test_daemon_api import WAIT, Env, serving

from ketch.api import models as m
from ketch.api.routes import DASHBOARD
from ketch.daemon.web import DashboardRoutes
from ketch.daemon.web.auth import COOKIE, CSRF_HEADER, LocalAuth


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with serving(tmp_path) as running:
        yield running


def _api(env: Env) -> DashboardRoutes:
    for hook in env.daemon.app.on_shutdown:
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, DashboardRoutes):
            return owner
    raise AssertionError("no dashboard routes on the app")


def _auth(env: Env) -> LocalAuth:
    opened = _api(env)._dashboard
    assert opened is not None
    return opened[1]


class Browser:
    """HTTP to the dashboard, keeping its cookie, as a browser on the same machine."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie: str | None = None

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.connect()
        sent = dict(headers or {})
        if self.cookie and "Cookie" not in sent:
            sent["Cookie"] = f"{COOKIE}={self.cookie}"
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def login(self, url: str) -> tuple[int, dict[str, str]]:
        parts = urlsplit(url)
        status, headers, _ = self.send("GET", f"{parts.path}?{parts.query}")
        cookie = headers.get("set-cookie", "")
        if status == 303:
            self.cookie = cookie.split(";", 1)[0].split("=", 1)[1]
        return status, headers


def _open(env: Env, ttl: float = 120.0) -> m.DashboardReply:
    return env.client.call(DASHBOARD, m.DashboardBody(ttl=ttl))


def _logged_in(env: Env) -> tuple[Browser, str]:
    reply = _open(env)
    browser = Browser(reply.port)
    status, headers = browser.login(reply.url)
    assert status == 303
    return browser, headers["location"].split("#s=", 1)[1]


def test_the_url_logs_in_once_with_a_strict_httponly_cookie(env: Env) -> None:
    reply = _open(env)
    assert reply.url.startswith(f"http://127.0.0.1:{reply.port}/login?token=")
    browser = Browser(reply.port)
    status, headers = browser.login(reply.url)
    assert status == 303 and headers["location"].startswith("/#s=")  # the secret: a fragment
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert headers["referrer-policy"] == "no-referrer"  # the token never leaks onwards
    status, headers, page = browser.send("GET", "/")
    assert status == 200 and b"ketch dashboard" in page
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    # the token is spent: a second browser (or someone who read it) is refused
    again = Browser(reply.port)
    status, _ = again.login(reply.url)
    assert status == 403 and again.cookie is None
    assert again.send("GET", "/v1/instances")[0] == 401


def test_an_expired_token_is_refused(env: Env) -> None:
    reply = _open(env, ttl=5)
    clock = FakeClock(_auth(env).clock.time())
    _auth(env).clock = clock
    clock.advance(6)
    status, _ = Browser(reply.port).login(reply.url)
    assert status == 403


def test_a_made_up_token_and_no_cookie_are_refused(env: Env) -> None:
    reply = _open(env)
    browser = Browser(reply.port)
    assert browser.login(f"http://127.0.0.1:{reply.port}/login?token=guess")[0] == 403
    status, _, data = browser.send("GET", "/v1/instances")
    assert status == 401 and json.loads(data)["error"]["code"] == "unauthorized"
    browser.cookie = "forged"
    assert browser.send("GET", "/v1/events")[0] == 401
    assert browser.send("GET", "/")[0] == 401


def test_a_logged_in_read_sees_what_list_sees(env: Env) -> None:
    env.add("alpha")
    browser, csrf = _logged_in(env)
    status, _, data = browser.send("GET", "/v1/instances", headers={CSRF_HEADER: csrf})
    assert status == 200
    assert [i["name"] for i in json.loads(data)["list"]] == ["alpha"]


def test_a_stolen_cookie_alone_reads_nothing(env: Env) -> None:
    """Cookies are not scoped by port: any server on 127.0.0.1 the browser visits gets it."""
    env.add("alpha")
    browser, _ = _logged_in(env)  # the thief has the cookie, not the fragment's secret
    for path in ("/v1/instances", "/v1/events", "/v1/info", "/v1/settings/local.driver"):
        status, _, data = browser.send("GET", path)
        assert status == 403 and json.loads(data)["error"]["code"] == "forbidden", path
    assert browser.send("GET", "/")[0] == 200  # the page itself holds no secret


def test_csrf_a_state_change_without_the_token_does_nothing(env: Env) -> None:
    """The attack: a page elsewhere makes the browser POST with its cookie (no token)."""
    env.add("alpha")
    browser, csrf = _logged_in(env)
    stop = "/v1/instances/alpha/stop"
    plain = {"Content-Type": "application/json"}
    status, _, data = browser.send("POST", stop, b'{"force": true}', plain)
    assert status == 403 and json.loads(data)["error"]["code"] == "forbidden"
    wrong = {**plain, CSRF_HEADER: "x" * len(csrf)}
    assert browser.send("POST", stop, b'{"force": true}', wrong)[0] == 403
    foreign = {**plain, CSRF_HEADER: csrf, "Origin": "http://evil.example"}
    assert browser.send("POST", stop, b'{"force": true}', foreign)[0] == 403
    assert env.states() == {"alpha": "Running"}  # nothing happened
    assert [c for c in env.driver.calls if c.name == "alpha"] == []
    good = {**plain, CSRF_HEADER: csrf, "Origin": f"http://127.0.0.1:{browser.port}"}
    status, _, data = browser.send("POST", stop, b'{"force": true}', good)
    assert status == 200 and b'"type":"result"' in data
    assert env.states() == {"alpha": "Stopped"}


def test_dns_rebinding_another_host_name_is_refused(env: Env) -> None:
    browser, csrf = _logged_in(env)
    rebound = {"Host": f"evil.example:{browser.port}", CSRF_HEADER: csrf}
    status, _, data = browser.send("GET", "/v1/instances", headers=rebound)
    assert status == 403 and "answers to 127.0.0.1" in json.loads(data)["error"]["message"]
    assert browser.send("GET", "/", headers={"Host": f"evil.example:{browser.port}"})[0] == 403


def test_a_websocket_needs_its_origin_and_the_csrf_token(env: Env) -> None:
    """Cross-site websocket hijacking: browsers send the cookie, not the same-origin policy."""
    env.add("alpha")
    browser, csrf = _logged_in(env)
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    own = f"http://127.0.0.1:{browser.port}"
    assert browser.send("GET", "/ws/console/alpha", headers=upgrade)[0] == 403  # no Origin
    evil = {**upgrade, "Origin": "http://evil.example"}
    assert browser.send("GET", f"/ws/console/alpha?csrf={csrf}", headers=evil)[0] == 403
    assert browser.send("GET", "/ws/console/alpha", headers={**upgrade, "Origin": own})[0] == 403
    conn = http.client.HTTPConnection("127.0.0.1", browser.port, timeout=WAIT)
    conn.request(
        "GET",
        f"/ws/console/alpha?csrf={csrf}",
        headers={**upgrade, "Origin": own, "Cookie": f"{COOKIE}={browser.cookie}"},
    )
    resp = conn.getresponse()
    assert resp.status == 101  # switching protocols: let in
    conn.close()


def test_the_dashboard_mints_no_logins_for_itself(env: Env) -> None:
    browser, csrf = _logged_in(env)
    headers = {CSRF_HEADER: csrf, "Content-Type": "application/json"}
    assert browser.send("POST", "/v1/dashboard", b"{}", headers)[0] == 404


def test_a_second_call_reuses_the_listener_and_a_busy_port_is_refused(env: Env) -> None:
    first = _open(env)
    second = _open(env)
    assert second.port == first.port and second.url != first.url
    with pytest.raises(Exception) as refused:
        env.client.call(
            DASHBOARD, m.DashboardBody(port=first.port + 1 if first.port < 65535 else 1)
        )
    assert "already listens" in str(refused.value)


def test_a_silent_connection_is_dropped_like_the_sockets(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any local user can connect to the port: a client that sends nothing is cut off."""
    import socket

    monkeypatch.setenv("KETCH_HEAD_TIMEOUT", "0.5")
    reply = _open(env)
    with socket.create_connection(("127.0.0.1", reply.port), timeout=WAIT) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest of the head
        assert s.recv(1024) == b""  # closed by the dashboard, not by this test's timeout
    browser, csrf = _logged_in(env)  # others are still served
    assert browser.send("GET", "/v1/instances", headers={CSRF_HEADER: csrf})[0] == 200
