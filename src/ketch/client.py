"""The CLI's side of the API: HTTP/1.1 over the daemon's Unix socket.

Stdlib only (``http.client``), so ``ketch list`` pays for nothing heavy.  If
no daemon answers, one is started in the background and the call retried.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

from ketch.errors import DaemonUnreachable, RemoteError
from ketch.layout import Root

START_TIMEOUT = 20.0
Event = dict[str, Any]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _raise_error(err: dict[str, Any]) -> None:
    raise RemoteError(
        str(err.get("code", "failed")),
        str(err.get("message", "the daemon reported an error")),
        err.get("hint"),
        int(err.get("exit_code", 2)),
    )


class Client:
    """A connection factory for one storage root's daemon."""

    def __init__(self, root: Root, *, autostart: bool = True) -> None:
        self.root = root
        self.autostart = autostart

    # -- transport -----------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None
    ) -> http.client.HTTPResponse:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in range(2):
            conn = _UnixConnection(str(self.root.socket), timeout)
            try:
                conn.request(method, path, body=payload, headers=headers)
                return conn.getresponse()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                conn.close()
                if attempt == 0 and self.autostart:
                    self.start_daemon()
                    continue
                raise DaemonUnreachable(
                    f"cannot reach ketchd at {self.root.socket}: {exc.strerror or exc}",
                    hint=f"start it with 'ketch daemon'; its log is {self.root.daemon_log}",
                ) from exc
            except OSError as exc:
                conn.close()
                raise DaemonUnreachable(
                    f"lost the connection to ketchd: {exc}",
                    hint=f"see {self.root.daemon_log}",
                ) from exc
        raise AssertionError("unreachable")

    def get(self, path: str, **query: str) -> Any:
        if query:
            path += "?" + urlencode(query)
        resp = self._request("GET", path, None, timeout=120.0)
        return self._json(resp)

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self._json(self._request("PUT", path, body, timeout=120.0))

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._json(self._request("POST", path, body or {}, timeout=120.0))

    @staticmethod
    def _json(resp: http.client.HTTPResponse) -> Any:
        data = resp.read()
        try:
            doc = json.loads(data) if data else {}
        except ValueError as exc:
            raise DaemonUnreachable(
                f"ketchd answered with something that is not JSON: {exc}"
            ) from exc
        if resp.status >= 400 or (isinstance(doc, dict) and "error" in doc and resp.status != 200):
            _raise_error(doc.get("error", {}))
        return doc

    def stream(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> dict[str, Any]:
        """POST an operation; feed its events to ``on_event``; return its result."""
        resp = self._request("POST", path, body or {}, timeout=None)
        if resp.status != 200 or "ndjson" not in (resp.getheader("Content-Type") or ""):
            return dict(self._json(resp))
        for event in _lines(resp):
            kind = event.get("type")
            if kind == "result":
                return dict(event.get("result") or {})
            if kind == "error":
                _raise_error(event.get("error", {}))
            if on_event is not None:
                on_event(event)
        raise DaemonUnreachable(
            "ketchd closed the stream before the operation ended",
            hint=f"the operation may still be running; see 'ketch list' and {self.root.daemon_log}",
        )

    # -- daemon ------------------------------------------------------------------

    def start_daemon(self) -> None:
        """Start ketchd in the background and wait until its socket answers."""
        self.root.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = self.root.daemon_log.open("ab")
        env = dict(os.environ, KETCH_STORAGE=str(self.root.path))
        subprocess.Popen(
            [sys.executable, "-m", "ketch.daemon.main"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        raise DaemonUnreachable(
            f"started ketchd but it did not answer within {START_TIMEOUT:g} s",
            hint=f"see {self.root.daemon_log}",
        )

    def ping(self) -> bool:
        conn = _UnixConnection(str(self.root.socket), 2.0)
        try:
            conn.request("GET", "/v1/version")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


def _lines(resp: http.client.HTTPResponse) -> Iterator[Event]:
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.strip()
        if line:
            yield json.loads(line)


def q(name: str) -> str:
    """Quote a path segment."""
    return quote(name, safe="")
