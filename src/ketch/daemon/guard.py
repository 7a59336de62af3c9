"""Slow or too many clients cannot hold ketchd (issue 12, item 5).

aiohttp's server has no header timeout, so ketchd serves its socket with its
own protocol factory (:class:`Guard`) around aiohttp's ``RequestHandler``:

* **Head timeout**: once a connection's first byte of a request arrives, the
  whole request head must follow within ``head_timeout`` s (one byte every few
  seconds does not reset it).
* **Idle timeout**: a connection with no request in progress (just opened, or
  after a response) is closed after ``idle_timeout`` s.
* **Body timeout**: a request's body must have arrived in full within
  ``body_timeout`` s of its head.
* **Connection cap**: at most ``max_connections`` at once (by default 256, and
  never more than the fd limit leaves room for).  At the cap a new connection
  takes the place of the connection that has waited longest without a request
  in progress (a slow or idle client is dropped first); when every connection
  has a request in progress, the new one is answered ``503`` with a JSON error
  (code ``busy``, exit code 3) and closed at once.
* **Log flooding**: failures to accept (EMFILE and the like) are logged as one
  line, without traceback, and every repeated log message is rate-limited
  (:class:`RateLimit`): at most a few per minute, then a count of the rest.

A dropped connection is closed without an answer.  Requests being handled
(a launch streaming its progress for minutes) are never timed out here.
The timeouts and the cap can be set through the environment
(``KETCH_HEAD_TIMEOUT``, ``KETCH_IDLE_TIMEOUT``, ``KETCH_BODY_TIMEOUT``,
``KETCH_MAX_CONNECTIONS``), which is how tests shorten them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("ketchd")

HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
BODY_TIMEOUT = 60.0
MAX_CONNECTIONS = 256
FD_RESERVE = 64  # for the database, QEMU monitors, child processes' pipes
# Connections the kernel queues.  asyncio accepts up to this many at a time and
# a dropped connection's fd is freed one loop turn later, so at a flood up to
# three batches hold fds beside the capped connections.
BACKLOG = 16
_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class Limits:
    head_timeout: float = HEAD_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    max_connections: int = MAX_CONNECTIONS

    @classmethod
    def from_env(cls) -> Limits:
        """Defaults, overridden by ``KETCH_*`` variables; the cap fits the fd limit."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = (
            MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else soft - FD_RESERVE - 3 * BACKLOG
        )
        cap = os.environ.get("KETCH_MAX_CONNECTIONS")
        return cls(
            head_timeout=float(os.environ.get("KETCH_HEAD_TIMEOUT") or HEAD_TIMEOUT),
            idle_timeout=float(os.environ.get("KETCH_IDLE_TIMEOUT") or IDLE_TIMEOUT),
            body_timeout=float(os.environ.get("KETCH_BODY_TIMEOUT") or BODY_TIMEOUT),
            max_connections=int(cap) if cap else max(8, min(MAX_CONNECTIONS, room)),
        )


def busy_response(limit: int) -> bytes:
    """The whole HTTP answer to a connection past the cap (then closed)."""
    body = json.dumps(
        {
            "error": {
                "code": "busy",
                "message": f"ketchd is busy: {limit} connections, its limit, all have "
                "a request in progress",
                "hint": "try again when some of them are done",
                "exit_code": 3,
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refuse(asyncio.Protocol):
    """Answer 503 and close.  What the client sent is read and dropped until it
    closes (or for a second at most): closing a Unix socket with unread data
    would reset it, and the client would never see the answer."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(1.0, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _Conn(RequestHandler):
    """aiohttp's handler, with a deadline whenever no request is in progress."""

    def __init__(self, guard: Guard, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, loop=guard.loop, **kwargs)
        self.guard = guard
        self.busy = 0
        self.heading = False
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.waiting[self] = None
        self.arm(self.guard.limits.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self.heading:
            self.heading = True  # the head's deadline runs from its first byte
            self.arm(self.guard.limits.head_timeout)
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.disarm()
        self.guard.forget(self)
        super().connection_lost(exc)

    def arm(self, delay: float) -> None:
        self.disarm()
        self.deadline = self.guard.loop.call_later(delay, self.drop)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def begin(self) -> None:
        self.busy += 1
        self.disarm()
        self.guard.waiting.pop(self, None)

    def end(self) -> None:
        self.busy -= 1
        if self.busy == 0 and self.transport is not None:
            self.heading = False
            self.guard.waiting[self] = None
            self.arm(self.guard.limits.idle_timeout)

    def drop(self) -> None:
        """Close at once (no lingering, no answer): the client was too slow or idle."""
        self.deadline = None
        self.guard.forget(self)
        if self.transport is not None:
            self.transport.abort()


class Guard:
    """The protocol factory, connection table and middleware of one daemon."""

    def __init__(self, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.loop = loop
        self.conns: set[_Conn] = set()
        self.waiting: dict[_Conn, None] = {}  # no request in progress, longest first
        self.refused = 0
        self._answer = busy_response(limits.max_connections)

    def factory(self, server: web.Server, **kwargs: Any) -> Any:
        def make() -> asyncio.Protocol:
            if len(self.conns) >= self.limits.max_connections:
                victim = next(iter(self.waiting), None)
                if victim is None:
                    self.refused += 1
                    return _Refuse(self._answer)
                victim.drop()
            conn = _Conn(self, server, **kwargs)
            self.conns.add(conn)
            return conn

        return make

    def forget(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        self.waiting.pop(conn, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        conn = request.protocol
        if not isinstance(conn, _Conn):
            response: web.StreamResponse = await handler(request)
            return response
        conn.begin()
        body_deadline = None
        if not request.content.is_eof():

            def too_slow() -> None:
                if not request.content.is_eof() and conn.transport is not None:
                    conn.transport.abort()

            body_deadline = self.loop.call_later(self.limits.body_timeout, too_slow)
        try:
            response = await handler(request)
            return response
        finally:
            if body_deadline is not None:
                body_deadline.cancel()
            conn.end()


class GuardedUnixSite(web.UnixSite):
    """aiohttp's Unix site, serving through a :class:`Guard`."""

    __slots__ = ("_guard", "_handler_args")

    def __init__(self, runner: web.AppRunner, path: str, guard: Guard, **handler_args: Any):
        super().__init__(runner, path, backlog=BACKLOG)
        self._guard = guard
        self._handler_args = handler_args

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        # What the runner was given for its handlers, then ours.
        handler_args = {**getattr(server, "_kwargs", {}), **self._handler_args}
        self._server = await self._guard.loop.create_unix_server(
            self._guard.factory(server, **handler_args), self._path, backlog=self._backlog
        )


def accept_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: out-of-fds on accept is one line, not a traceback."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        log.error("cannot accept a connection: %s (asyncio retries in 1 s)", exc.strerror)
        return
    loop.default_exception_handler(context)


class RateLimit(logging.Filter):
    """At most ``burst`` records of one kind (logger, level, format) per ``period`` s.

    The first record after a quiet period says how many were left out.
    """

    def __init__(self, burst: int = 5, period: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.period:
            if len(self._seen) > 1000:
                self._seen.clear()
            left_out = int(state[1]) - self.burst if state is not None else 0
            self._seen[key] = [now, 1.0]
            if left_out > 0:
                record.msg = f"{record.msg} [{left_out} more like this left out]"
            return True
        state[1] += 1
        return state[1] <= self.burst
