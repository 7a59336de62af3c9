"""A real HTTP server on 127.0.0.1 serving a directory, with faults on demand.

Tests use it as a simplestreams remote.  It can be told, per URL path, to
close the connection after some bytes (``truncate``), to serve wrong bytes of
the right length (``corrupt``), or to hold a response until released
(``gate``), or to send more than the file (``oversend``: the file then that
many extra bytes, with a Content-Length saying so when ``announce`` holds
the path, else ending the body by closing); it counts GET requests per path
and, for ``oversend`` paths, the body bytes it managed to send (``sent``);
``stop()`` takes it offline (connections are then refused).
"""

from __future__ import annotations

import collections
import functools
import http.server
import socket
import threading
from pathlib import Path
from typing import Any


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        owner._arrived(path)
        gate = owner.gates.get(path)
        if gate is not None:
            gate.wait(120)
        if path in owner.truncate:
            self._send_partial(path, owner.truncate[path])
        elif path in owner.corrupt:
            self._send_corrupt(path)
        elif path in owner.oversend:
            self._send_more(path, owner.oversend[path], path in owner.announce)
        else:
            super().do_GET()

    def _body(self, path: str) -> bytes:
        return (Path(self.directory) / path.lstrip("/")).read_bytes()

    def _send_partial(self, path: str, upto: int) -> None:
        body = self._body(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:upto])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _send_more(self, path: str, extra: int, announce: bool) -> None:
        body = self._body(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if announce:
            self.send_header("Content-Length", str(len(body) + extra))
        self.end_headers()
        self.close_connection = True
        sent = 0
        block = b"\0" * (1 << 16)
        try:
            self.wfile.write(body)
            sent += len(body)
            while sent < len(body) + extra:
                piece = block[: len(body) + extra - sent]
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:
            pass  # the client hung up: what it was spared is the point
        finally:
            self.server.owner._sent(path, sent)

    def _send_corrupt(self, path: str) -> None:
        body = bytes(b ^ 0x5A for b in self._body(path))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    owner: StreamsServer
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early (cancelled downloads) are expected


class StreamsServer:
    """Serves ``root`` at :attr:`url` until :meth:`stop`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.truncate: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.gates: dict[str, threading.Event] = {}
        self.oversend: dict[str, int] = {}
        self.announce: set[str] = set()
        self.sent: dict[str, int] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self._cond = threading.Condition()
        handler = functools.partial(_Handler, directory=str(root))
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._running = True

    def path_of(self, file: Path) -> str:
        """The URL path under which ``file`` (inside root) is served."""
        return "/" + file.relative_to(self.root).as_posix()

    def _arrived(self, path: str) -> None:
        with self._cond:
            self.counts[path] += 1
            self._cond.notify_all()

    def _sent(self, path: str, count: int) -> None:
        with self._cond:
            self.sent[path] = count
            self._cond.notify_all()

    def wait_for_sent(self, path: str, timeout: float = 60) -> int:
        """The body bytes sent for ``path`` once its response ended (an ``oversend`` path)."""
        with self._cond:
            if not self._cond.wait_for(lambda: path in self.sent, timeout):
                raise AssertionError(f"the response for {path} did not end")
            return self.sent.pop(path)

    def wait_for_request(self, path: str, count: int = 1, timeout: float = 60) -> None:
        """Block until ``path`` was requested ``count`` times (a safety net, not a check)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.counts[path] >= count, timeout):
                raise AssertionError(f"{path} was not requested {count} times")

    def stop(self) -> None:
        """Go offline: release held responses, stop serving, close the port."""
        if not self._running:
            return
        self._running = False
        for gate in self.gates.values():
            gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> StreamsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
