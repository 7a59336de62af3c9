"""The CLI's side of the API: HTTP/1.1 over the daemon's Unix socket.

Hand-rolled on a plain socket on purpose: ``http.client`` would import
``email`` and ``ssl`` (about 20 ms) on the path of ``ketch list`` and
``ketch exec`` for nothing.  It speaks only what ketchd answers: one request
per connection, ``Content-Length`` or ``chunked`` bodies.  If no daemon
answers, one is started in the background and the call retried.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from ketch.errors import DaemonUnreachable, RemoteError
from ketch.layout import Root

START_TIMEOUT = 20.0
Event = dict[str, Any]


class Response:
    """A response read from a socket file: status, headers, body (whole or by lines)."""

    def __init__(self, f: BinaryIO, sock: socket.socket) -> None:
        self._f = f
        self._sock = sock
        status_line = f.readline().decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise OSError(f"bad status line from ketchd: {status_line.strip()!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        while (line := f.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            self.headers[key.strip().lower()] = value.strip()

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def _chunks(self) -> Iterator[bytes]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._f.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    self._f.readline()
                    return
                data = self._f.read(size)
                self._f.readline()
                yield data
        elif "content-length" in self.headers:
            yield self._f.read(int(self.headers["content-length"]))
        else:
            yield self._f.read()

    def read(self) -> bytes:
        try:
            return b"".join(self._chunks())
        finally:
            self.close()

    def lines(self) -> Iterator[bytes]:
        """The body split into lines as it arrives (for NDJSON streams)."""
        pending = b""
        try:
            for chunk in self._chunks():
                pending += chunk
                *complete, pending = pending.split(b"\n")
                yield from complete
            if pending:
                yield pending
        finally:
            self.close()

    def close(self) -> None:
        self._f.close()
        self._sock.close()


def request(
    path: str, method: str, target: str, body: bytes | None, timeout: float | None
) -> Response:
    """Send one request on a new connection to the Unix socket ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        head = f"{method} {target} HTTP/1.1\r\nHost: ketchd\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
        return Response(sock.makefile("rb"), sock)
    except BaseException:
        sock.close()
        raise


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
        self.operation: str | None = None  # the id of the last streamed operation

    # -- transport -----------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None
    ) -> Response:
        payload = None if body is None else json.dumps(body).encode()
        for attempt in range(2):
            try:
                return request(str(self.root.socket), method, path, payload, timeout)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if attempt == 0 and self.autostart:
                    self.start_daemon()
                    continue
                raise DaemonUnreachable(
                    f"cannot reach ketchd at {self.root.socket}: {exc.strerror or exc}",
                    hint=f"start it with 'ketch daemon'; its log is {self.root.daemon_log}",
                ) from exc
            except OSError as exc:
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
    def _json(resp: Response) -> Any:
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
        self.operation = None
        resp = self._request("POST", path, body or {}, timeout=None)
        if resp.status != 200 or "ndjson" not in (resp.getheader("Content-Type") or ""):
            return dict(self._json(resp))
        for event in _events(resp):
            kind = event.get("type")
            if kind == "operation":
                self.operation = str(event.get("id"))
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

    def cancel(self, operation: str) -> dict[str, Any]:
        """Ask the daemon to cancel an operation (``DELETE /v1/operations/ID``).

        Returns its answer (``cancelled``, ``message``); raises RemoteError
        ``not-cancellable`` when the operation is past the point of no return.
        """
        return dict(
            self._json(self._request("DELETE", f"/v1/operations/{q(operation)}", None, 60.0))
        )

    # -- daemon ------------------------------------------------------------------

    def start_daemon(self) -> None:
        """Start ketchd in the background and wait until its socket answers."""
        import subprocess

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
        try:
            resp = request(str(self.root.socket), "GET", "/v1/version", None, 2.0)
        except OSError:
            return False
        resp.close()
        return resp.status == 200


def _events(resp: Response) -> Iterator[Event]:
    for line in resp.lines():
        line = line.strip()
        if line:
            yield json.loads(line)


def q(name: str) -> str:
    """Quote a path segment."""
    return quote(name, safe="")
