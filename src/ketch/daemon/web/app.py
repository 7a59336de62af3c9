"""The dashboard's aiohttp application: its page, its files, the API, the terminals.

The page (``static/``: plain HTML, CSS and JavaScript, no framework, nothing
fetched from elsewhere) calls the same API routes as the CLI, bound to the
same handlers (:class:`ketch.daemon.api.Api`), so an action shows the same
progress events and the same error text.  What protects it is the policy
middleware it is made with (:func:`dashboard_app`): the local one is
:class:`ketch.daemon.web.auth.LocalAuth`; a TLS listener passes its own.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ketch.api import models as m
from ketch.api.routes import DASHBOARD, ROUTES
from ketch.daemon.web import auth, terminal
from ketch.daemon.wire import bind, errors

if TYPE_CHECKING:
    from ketch.daemon.api import Api

STATIC = {  # the page's files: name -> content type (nothing else is served)
    "index.html": "text/html",
    "app.js": "text/javascript",
    "term.js": "text/javascript",
    "style.css": "text/css",
}


def _static(name: str) -> bytes:
    return (resources.files("ketch.daemon.web") / "static" / name).read_bytes()


def dashboard_app(api: Api, policy: Any) -> web.Application:
    """The dashboard, behind ``policy`` (an aiohttp middleware that lets a request in or not)."""
    app = web.Application(middlewares=[policy, errors], client_max_size=m.MAX_BODY)
    app.on_response_prepare.append(auth.headers)

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=_static("index.html"), content_type="text/html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=STATIC[name])

    async def shell(request: web.Request) -> web.StreamResponse:
        return await terminal.shell(api.ctx, request)

    async def console(request: web.Request) -> web.StreamResponse:
        return await terminal.console(api.ctx, request)

    app.router.add_get("/", page)
    app.router.add_get("/static/{file}", static)
    app.router.add_get("/ws/shell/{name}", shell)
    app.router.add_get("/ws/console/{name}", console)
    for route in ROUTES:
        if route is DASHBOARD:  # a logged-in page mints no logins
            continue
        app.router.add_route(
            route.method, route.path, bind(route, getattr(api, route.name), api.ops)
        )
    app.on_shutdown.append(api.close_watchers)
    return app
