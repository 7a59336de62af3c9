"""HTTP/1.1 over the daemon's Unix socket: one request per connection, and its response.

Hand-rolled on a plain socket on purpose: ``http.client`` would import
``email`` and ``ssl`` (about 20 ms) on the path of ``ketch list`` and
``ketch exec`` for nothing.  It speaks only what ketchd answers: one request
per connection, ``Content-Length`` or ``chunked`` bodies.  The peer is
checked (SO_PEERCRED) before anything is sent.  :class:`ketch.client.Client`
builds on it (typed calls, starting the daemon).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

from ketch.errors import DaemonUnreachable
from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import BinaryIO

CONNECT_TIMEOUT = 20.0  # seconds connect() waits on a full backlog when no timeout is given


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
    path: str,
    method: str,
    target: str,
    body: bytes | None,
    timeout: float | None,
    *,
    meanwhile: Callable[[], object] | None = None,
) -> Response:
    """Send one request on a new connection to the Unix socket ``path``.

    ``meanwhile`` runs once the request is sent, before the answer is read:
    the client imports the reply's model (and msgspec) there, while ketchd
    works on the answer, instead of before sending.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        connect(sock, path, timeout)
        check_peer(sock, path)
        head = f"{method} {target} HTTP/1.1\r\nHost: ketchd\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
        if meanwhile is not None:
            meanwhile()
        return Response(sock.makefile("rb"), sock)
    except BaseException:
        sock.close()
        raise


def connect(sock: socket.socket, path: str, timeout: float | None) -> None:
    """Connect, waiting while the socket's backlog is full (ketchd accepts as it can).

    A Unix socket with a timeout reports a full backlog at once (EAGAIN)
    instead of waiting; under a flood of connections that is retried.
    """
    deadline = time.monotonic() + (timeout if timeout is not None else CONNECT_TIMEOUT)
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def check_peer(sock: socket.socket, path: str) -> None:
    """Refuse a daemon run by another user (SO_PEERCRED), before anything is sent.

    Only our own uid, or root, may serve us: a request can carry cloud-init
    with secrets, and another user's reply is not to be believed.
    """
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    me = os.geteuid()
    if uid not in (me, 0):
        raise DaemonUnreachable(
            f"refusing to talk to {path}: it is served by uid {uid} (pid {pid}), not by you "
            f"(uid {me}); nothing was sent",
            hint="another user's ketchd serves this storage root: use a storage root of your "
            "own (--storage or $KETCH_STORAGE), or stop that daemon",
        )
