"""ketchd's side of the wire: decode requests through the API models, encode replies and events.

Every route of :mod:`ketch.api.routes` is bound here to its handler.  Before
the handler runs, the query string and the body are decoded into the route's
models: a body that is not JSON, a wrong type, an unknown field or a value out
of range is an HTTP 400 naming the field (``$.cpus: Expected int, got str``),
and nothing has happened yet.  A body over :data:`~ketch.api.models.MAX_BODY`
is a 413.  Replies, stream events and operation results are encoded through
the models too, so the daemon cannot send what the contract does not say.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
from aiohttp import web

from ketch.api import models as m
from ketch.api.routes import STREAM_TYPE, Route
from ketch.daemon.ops import Event, Follow, Operations, QueueReporter
from ketch.errors import InvalidArgument, KetchError, NotFound, TooLarge, UsageError
from ketch.model import OperationKind

B = TypeVar("B")

STATUS = {
    "not-found": 404,
    "usage": 400,
    "invalid-argument": 400,
    "already-exists": 409,
    "too-large": 413,
    "unauthenticated": 401,  # remote access (daemon/auth.py)
    "rate-limited": 429,
    "local-only": 400,
    "invalid-host": 400,  # a host's name, URI or SSH files (service/hosts.py)
}
SCHEMA_HINT = "see the request's schema in /openapi.json"


@dataclass(frozen=True)
class Call(Generic[B]):
    """A decoded request: its body and query models and the path's parameters."""

    request: web.Request
    body: B
    query: Any  # the route's query model
    params: Mapping[str, str]


@dataclass(frozen=True)
class Op:
    """What a streamed route's handler returns: the operation to run under ``locks``."""

    locks: Iterable[str]
    label: OperationKind
    run: Callable[[QueueReporter], Awaitable[m.Reply]]  # the route's result model


@dataclass(frozen=True)
class Events:
    """What a streamed route's handler returns to stream events it already has
    (an operation in flight, re-attached to): they are sent as they come."""

    events: AsyncIterator[Event | m.Event]


Handler = Callable[[Call[Any]], Awaitable[m.Reply | Op | Events | Follow]]


def error_response(exc: KetchError, status: int | None = None) -> web.Response:
    body = msgspec.json.encode(m.ErrorReply(error=msgspec.convert(exc.to_dict(), m.ErrorDetail)))
    status = status or STATUS.get(exc.code, 409)
    return web.Response(body=body, status=status, content_type="application/json")


def _http_error(exc: web.HTTPException, request: web.Request) -> KetchError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return TooLarge(
            f"the request body is larger than ketchd's limit of {m.MAX_BODY // 2**20} MiB",
            hint="make the cloud-init (or whatever is sent) smaller",
        )
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"no such API route: {request.method} {request.path}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return UsageError(f"{request.method} is not allowed on {request.path}")
    return UsageError(f"bad request: {exc.reason}")


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every refusal is a ketch error body, also aiohttp's own (404, 405, 413)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except KetchError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_http_error(exc, request), exc.status)


_AT = re.compile(r"^(?P<what>.*) - at `(?P<path>[^`]*)`$", re.DOTALL)


def invalid(exc: msgspec.ValidationError, where: str = "request body") -> InvalidArgument:
    """``Expected `int`, got `str` - at `$.cpus``` as ``invalid request body: $.cpus: ...``."""
    text = str(exc)
    match = _AT.match(text)
    if match:
        text = f"{match['path']}: {match['what']}"
    return InvalidArgument(f"invalid {where}: {text.replace('`', '')}", hint=SCHEMA_HINT)


def decode_body(data: bytes, model: type[B]) -> B:
    """A JSON request body as ``model`` (an empty body is ``{}``), or InvalidArgument."""
    try:
        return msgspec.json.decode(data or b"{}", type=model)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from exc
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"request body is not JSON: {exc}", hint=SCHEMA_HINT) from exc


def decode_query(query: Mapping[str, str], model: type[B]) -> B:
    """Query parameters as ``model`` (strings converted where the model says so)."""
    try:
        return msgspec.convert(dict(query), model, strict=False)
    except msgspec.ValidationError as exc:
        raise invalid(exc, "query parameter") from exc


def encode_event(event: Event | m.Event) -> bytes:
    """One NDJSON line, checked against the event union."""
    if not isinstance(event, m.Event):
        event = msgspec.convert(event, m.AnyEvent)
    return msgspec.json.encode(event) + b"\n"


def typed_result(
    route: Route[Any, Any], run: Callable[[QueueReporter], Awaitable[m.Reply]]
) -> Callable[[QueueReporter], Awaitable[dict[str, Any]]]:
    """``run`` whose result must be the route's result model (mypy checks it where it is
    made; this checks the route's pairing).  The operation table keeps events as builtins
    (they are replayed and described as JSON), so the result is stored as one.
    """

    async def checked(rep: QueueReporter) -> dict[str, Any]:
        answer = await run(rep)
        if not isinstance(answer, route.reply):
            raise TypeError(f"{route.name}: {type(answer).__name__} is not {route.reply.__name__}")
        result: dict[str, Any] = msgspec.to_builtins(answer)
        return result

    return checked


def _gone(request: web.Request) -> bool:
    """Has the client closed its connection?"""
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream(
    request: web.Request,
    follow: Follow | AsyncIterator[Event] | AsyncIterator[Event | m.Event],
) -> web.StreamResponse:
    """Send an operation's events until it ends or the client goes (it carries on then).

    A client that goes before its operation began (it still waits for a lock)
    leaves it unfollowed, and then it is dropped (``Operations.detach``).
    Other events (``Events``) are sent as they come.
    """
    resp = web.StreamResponse(headers={"Content-Type": STREAM_TYPE})
    try:
        await resp.prepare(request)
        if isinstance(follow, Follow):
            while (event := await follow.next(lambda: _gone(request))) is not None:
                await resp.write(encode_event(event))
        else:
            async for other in follow:
                await resp.write(encode_event(other))
    except ConnectionError:
        pass  # the client went away
    finally:
        if isinstance(follow, Follow):
            follow.close()
    return resp


def bind(route: Route[Any, Any], handler: Handler, ops: Operations) -> Any:
    """The aiohttp handler of ``route``: decode, call ``handler``, encode (or stream)."""

    async def serve(request: web.Request) -> web.StreamResponse:
        query = decode_query(request.query, route.query)
        body: Any = None
        if route.body is not None:
            data = await request.read() if request.can_read_body else b""
            body = decode_body(data, route.body)
        answer = await handler(Call(request, body, query, request.match_info))
        if isinstance(answer, Op):
            follow = ops.submit(answer.locks, answer.label, typed_result(route, answer.run))
            return await stream(request, follow)
        if isinstance(answer, Follow):  # re-attached to an operation already going
            return await stream(request, answer)
        if isinstance(answer, Events):
            return await stream(request, answer.events)
        return web.Response(body=msgspec.json.encode(answer), content_type="application/json")

    serve.__name__ = route.name
    return serve
