"""Routes of operations as a resource, and the NDJSON stream every operation answers with.

* ``GET /v1/operations``: those in flight (id, kind, instances, started,
  state ``waiting``/``running``, what each waits for).
* ``GET /v1/operations/{id}``: re-attach to its stream.  By default the
  events it kept so far are replayed first (at most ``ops.REPLAY``; its first
  event says how many were replayed and how many fell out), then it follows;
  ``?replay=false``: events from now on.  A finished operation answers with
  what it kept and its final event, for ``ops.KEEP_DONE`` seconds.
* ``DELETE /v1/operations/{id}``: cancel one that waits (for a lock, or for
  its guest's readiness); 409 ``not-cancellable`` when it is past that.
"""

from __future__ import annotations

from aiohttp import web

from ketch.daemon.ops import Follow, Operations, ndjson
from ketch.errors import InvalidArgument

STREAM_TYPE = "application/x-ndjson"


def add_routes(router: web.UrlDispatcher, ops: Operations) -> None:
    routes = Routes(ops)
    router.add_get("/v1/operations", routes.list)
    router.add_get("/v1/operations/{id}", routes.follow)
    router.add_delete("/v1/operations/{id}", routes.cancel)


def _gone(request: web.Request) -> bool:
    """Has the client closed its connection?"""
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream(request: web.Request, follow: Follow) -> web.StreamResponse:
    """Send an operation's events as NDJSON until it ends or the client goes.

    A client that goes before its operation began (it still waits for a
    lock) leaves it unfollowed, and then it is dropped (``Operations.detach``).
    """
    resp = web.StreamResponse(headers={"Content-Type": STREAM_TYPE})
    try:
        await resp.prepare(request)
        while (event := await follow.next(lambda: _gone(request))) is not None:
            await resp.write(ndjson(event))
    except ConnectionError:
        pass  # the client went away
    finally:
        follow.close()
    return resp


class Routes:
    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"operations": [o.describe() for o in self.ops.in_flight()]})

    async def follow(self, request: web.Request) -> web.StreamResponse:
        replay = request.query.get("replay", "true")
        if replay not in ("true", "false"):
            raise InvalidArgument(f"replay must be true or false, not {replay!r}")
        return await stream(
            request, self.ops.follow(request.match_info["id"], replay=replay == "true")
        )

    async def cancel(self, request: web.Request) -> web.Response:
        return web.json_response(await self.ops.cancel(request.match_info["id"]))
