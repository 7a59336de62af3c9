"""The CLI's side of the API: typed calls to ketchd, and starting it when none answers.

:class:`Client` sends a request along a route of :mod:`ketch.api.routes` (or
by path, for tools and tests) and decodes the reply into the route's model;
if no daemon answers, one is started in the background and the call retried.
The bytes go over :mod:`ketch.transport` (HTTP/1.1 on the Unix socket, hand
rolled to stay light); its names are re-exported here (``request``,
``Response``, ``connect``, ``check_peer``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Mapping

from ketch.errors import DaemonUnreachable, RemoteError
from ketch.hints import TYPE_CHECKING
from ketch.layout import DAEMON_LOG, SOCKET, Root
from ketch.transport import Response, check_peer, connect, request

if TYPE_CHECKING:
    from typing import Any, NoReturn, TypeVar

    from ketch.api import models as m
    from ketch.api.routes import Route

    T = TypeVar("T")
    B = TypeVar("B", bound=m.Body)
    R = TypeVar("R", bound=m.Reply)

__all__ = ["Client", "Response", "check_peer", "connect", "q", "request"]

WARNING_HEADER = "Ketch-Warning"  # ketchd's one-time warning (daemon/main.py), JSON lines
OnEvent = Callable[["m.AnyEvent"], None]


def _warn(header: str) -> None:
    """ketchd's one-time warning (a repaired database): printed to stderr, a line each."""
    import json

    try:
        lines = json.loads(header)
    except ValueError:
        lines = [header]
    for line in lines if isinstance(lines, list) else [lines]:
        print(f"ketch: warning: {line}", file=sys.stderr)


def _raise_error(err: m.ErrorDetail) -> NoReturn:
    raise RemoteError(err.code, err.message, err.hint, err.exit_code)


class Client:
    """A connection factory for one storage root's daemon.

    :meth:`call` (reads and short writes) and :meth:`run` (operations, whose
    answer is an event stream) send a request along a route of
    :mod:`ketch.api.routes` and return its reply decoded into the route's
    model.  A reply that is not what the model says (not JSON, wrong shape,
    a missing field, a broken stream) is a :class:`DaemonUnreachable` error
    (exit 3) naming what was wrong, never a traceback.  :meth:`get`,
    :meth:`put`, :meth:`post` and :meth:`stream` do the same by path, for
    tools and tests, with replies as JSON objects.
    """

    def __init__(self, root: Root | str, *, autostart: bool = True) -> None:
        # Plain strings: ``pathlib`` (3 ms with what it imports) stays off 'ketch list'.
        self.storage = root if isinstance(root, str) else str(root.path)
        self.socket = os.path.join(self.storage, SOCKET)
        self.daemon_log = os.path.join(self.storage, DAEMON_LOG)
        self.autostart = autostart
        self.operation: str | None = None  # the id of the last streamed operation
        # A remote ketchd over TLS (ketch/remote.py, imported only then: ssl stays off the
        # local hot path); never started from here.
        self.remote = os.environ.get("KETCH_SERVER_ADDRESS") or None
        self.present_certificate = True  # False: enrolment, before the certificate is trusted
        if self.remote is not None:
            self.socket = self.remote
            self.daemon_log = f"the log of ketchd at {self.remote}"

    # -- transport -----------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        timeout: float | None,
        meanwhile: Callable[[], object] | None = None,
    ) -> Response:
        if self.remote is not None:
            from ketch import remote

            return remote.client_request(self, method, path, body, timeout, meanwhile)
        for attempt in range(2):
            try:
                resp = request(self.socket, method, path, body, timeout, meanwhile=meanwhile)
                warning = resp.getheader(WARNING_HEADER)
                if warning:
                    _warn(warning)
                return resp
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if attempt == 0 and self.autostart:
                    self.start_daemon()
                    continue
                raise DaemonUnreachable(
                    f"cannot reach ketchd at {self.socket}: {exc.strerror or exc}",
                    hint=f"start it with 'ketch daemon'; its log is {self.daemon_log}",
                ) from exc
            except OSError as exc:
                raise self._lost(exc) from exc
        raise AssertionError("unreachable")

    def _lost(self, exc: BaseException) -> DaemonUnreachable:
        return DaemonUnreachable(
            f"lost the connection to ketchd: {exc}", hint=f"see {self.daemon_log}"
        )

    def _malformed(self, what: str, exc: Exception) -> DaemonUnreachable:
        return DaemonUnreachable(
            f"ketchd's answer to {what} is malformed: {str(exc).replace('`', '')}",
            hint=f"is the daemon on {self.socket} ketch's own, of this version? "
            f"see {self.daemon_log}",
        )

    def _read(self, resp: Response) -> bytes:
        try:
            return resp.read()
        except (OSError, ValueError) as exc:
            raise self._lost(exc) from exc

    def _decode(self, resp: Response, what: str, reply: type[T]) -> T:
        """The whole body as ``reply``; an error answer (4xx, 5xx) raised as RemoteError."""
        from ketch.api import models as m  # first: it imports msgspec lightly

        # isort: split
        import msgspec

        data = self._read(resp)
        try:
            if resp.status >= 400:
                _raise_error(msgspec.json.decode(data, type=m.ErrorReply).error)
            return msgspec.json.decode(data, type=reply)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self._malformed(f"{what} (HTTP {resp.status})", exc) from exc

    def _events(self, resp: Response, what: str, on_event: OnEvent | None) -> dict[str, Any]:
        """Feed a stream's events to ``on_event``; the result event's ``result``."""
        from ketch.api import models as m  # first: it imports msgspec lightly

        # isort: split
        import msgspec

        try:
            for line in resp.lines():
                if not line.strip():
                    continue
                event = m.decode_event(line)
                if isinstance(event, m.OperationEvent):
                    self.operation = event.id  # what Ctrl-C asks the daemon to cancel
                if isinstance(event, m.ResultEvent):
                    return event.result
                if isinstance(event, m.ErrorEvent):
                    _raise_error(event.error)
                if on_event is not None:
                    on_event(event)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self._malformed(what, exc) from exc
        except (OSError, ValueError) as exc:
            raise self._lost(exc) from exc
        finally:
            resp.close()
        raise DaemonUnreachable(
            "ketchd closed the stream before the operation ended",
            hint=f"the operation may still be running; see 'ketch list' and {self.daemon_log}",
        )

    def _exchange(
        self,
        method: str,
        path: str,
        body: bytes | None,
        reply: Callable[[], type[T]],
        timeout: float | None,
    ) -> T:
        """Send, then ``reply()`` (the model: imported while ketchd answers), then decode."""
        models: list[type[T]] = []
        resp = self._request(method, path, body, timeout, lambda: models.append(reply()))
        return self._decode(resp, f"{method} {path}", models[0])

    def _operate(
        self,
        method: str,
        path: str,
        body: bytes | None,
        result: Callable[[], type[T]],
        on_event: OnEvent | None,
    ) -> T:
        what = f"{method} {path}"
        self.operation = None
        models: list[type[T]] = []
        resp = self._request(method, path, body, None, lambda: models.append(result()))
        if resp.status != 200 or "ndjson" not in (resp.getheader("Content-Type") or ""):
            return self._decode(resp, what, models[0])
        doc = self._events(resp, what, on_event)
        result_model = models[0]
        import msgspec  # imported lightly by then: the result model is loaded

        try:
            return msgspec.convert(doc, result_model)
        except msgspec.ValidationError as exc:
            raise self._malformed(f"{what} (its result)", exc) from exc

    # -- typed, by route -------------------------------------------------------------

    def call(
        self,
        route: Route[B, R],
        body: B | None = None,
        *,
        query: Mapping[str, str] | None = None,
        **params: str,
    ) -> R:
        """A read (or a short write) along ``route``; its reply model."""
        path = route.url(**params)
        if query:
            path += "?" + _urlencode(query)
        return self._exchange(route.method, path, _payload(route, body), lambda: route.reply, 120.0)

    def call_plain(self, route: Route[Any, Any], decode: Callable[[bytes], T], **params: str) -> T:
        """A read along ``route`` (no body, no query) decoded by ``decode``, without msgspec.

        For ``exec``'s path (:mod:`ketch.api.plain`): ``decode`` checks the reply
        against the route's model as msgspec would; error answers are decoded the
        same way and raised as RemoteError.
        """
        from ketch.api import plain

        path = route.url(**params)
        resp = self._request(route.method, path, None, 120.0)
        data = self._read(resp)
        try:
            if resp.status >= 400:
                raise plain.error_reply(data)
            return decode(data)
        except plain.Malformed as exc:
            raise self._malformed(f"{route.method} {path} (HTTP {resp.status})", exc) from exc

    def run(
        self,
        route: Route[B, R],
        body: B | None = None,
        on_event: OnEvent | None = None,
        **params: str,
    ) -> R:
        """An operation along ``route``: its events go to ``on_event``; its result model.

        (A route without a body, e.g. re-attaching to an operation's stream, sends none.)
        """
        return self._operate(
            route.method, route.url(**params), _payload(route, body), lambda: route.reply, on_event
        )

    # -- by path, JSON objects (tools and tests) ------------------------------------------

    def get(self, path: str, **query: str) -> dict[str, Any]:
        if query:
            path += "?" + _urlencode(query)
        return self._exchange("GET", path, None, _as_dict, 120.0)

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._exchange("PUT", path, _encode(body), _as_dict, 120.0)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._exchange("POST", path, _encode(body or {}), _as_dict, 120.0)

    def stream(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """POST an operation; feed its events (as dicts) to ``on_event``; return its result."""

        import msgspec

        def feed(event: m.AnyEvent) -> None:
            if on_event is not None:
                on_event(msgspec.to_builtins(event))

        return self._operate("POST", path, _encode(body or {}), _as_dict, feed)

    def watch(self, route: Route[Any, Any]) -> Generator[bytes, None, None]:
        """A stream that never ends (``/v1/events``): its lines as they come (errors raised)."""
        resp = self._request(route.method, route.path, None, None)
        if resp.status != 200:
            self._decode(resp, f"{route.method} {route.path}", dict)
        try:
            yield from (line for line in resp.lines() if line.strip())
        except (OSError, ValueError) as exc:
            raise self._lost(exc) from exc
        finally:
            resp.close()

    def cancel(self, operation: str) -> dict[str, Any]:
        """Ask the daemon to cancel an operation (``DELETE /v1/operations/ID``).

        Returns its answer (``cancelled``, ``message``); raises RemoteError
        ``not-cancellable`` when the operation is past the point of no return.
        """
        return self._exchange("DELETE", f"/v1/operations/{q(operation)}", None, _as_dict, 60.0)

    # -- daemon ------------------------------------------------------------------

    def start_daemon(self) -> None:
        """Start ketchd in the background and wait until its socket answers."""
        from ketch.client_autostart import start

        start(self.storage, self.daemon_log, self.ping)

    def ping(self) -> bool:
        if self.remote is not None:  # never started from here: ping is for start_daemon
            return False
        try:
            resp = request(self.socket, "GET", "/v1/version", None, 2.0)
        except OSError:
            return False
        resp.close()
        return resp.status == 200


def _as_dict() -> type[dict[str, Any]]:
    return dict


def _encode(doc: object) -> bytes:
    from ketch.api import models  # noqa: F401  # first: it imports msgspec lightly

    # isort: split
    import msgspec

    return msgspec.json.encode(doc)


def _payload(route: Route[B, R], body: B | None) -> bytes | None:
    """The request body of ``route``; None: the route has none.

    Not given, it is its model's defaults: ``{}``, which the daemon decodes as
    them, sent without importing the model or msgspec (``ketch suspend`` and a
    plain ``start`` or ``stop`` ask first and load those while ketchd works).
    """
    if not route.has_body:
        return None
    return b"{}" if body is None else _encode(body)


def _urlencode(query: Mapping[str, str]) -> str:
    from urllib.parse import urlencode  # only when there is a query: 2 ms off 'ketch list'

    return urlencode(query)


def q(name: str) -> str:
    """Quote a path segment."""
    from ketch.api.routes import segment

    return segment(name)
