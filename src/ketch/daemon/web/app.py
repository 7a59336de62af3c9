"""The dashboard's aiohttp application: its page, its files, the API, the terminals.

The page (``static/``: plain HTML, CSS and JavaScript, no framework, nothing
fetched from elsewhere) calls the same API routes as the CLI, bound to the
same handlers (:class:`ketch.daemon.api.Api`), so an action shows the same
progress events and the same error text.  What protects it is the policy
middleware it is made with (:func:`dashboard_app`): the local one is
:class:`ketch.daemon.web.auth.LocalAuth`; the TLS listener serves the page
beside its whole API (:func:`remote_app`) behind
:class:`ketch.daemon.web.remote.RemoteAuth`.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ketch.api import models as m
from ketch.api.routes import DASHBOARD, ROUTES, Route
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


def api_routes() -> list[Route[Any, Any]]:
    """The API routes the page calls: every one but ``/v1/dashboard`` (a logged-in page
    mints no logins)."""
    return [route for route in ROUTES if route is not DASHBOARD]


PAGE_PATHS = ("/", "/static/{file}", "/ws/shell/{name}", "/ws/console/{name}")


def browser_paths() -> frozenset[str]:
    """What a browser's session may reach (route templates): the page and its API."""
    return frozenset({*PAGE_PATHS, *(route.path for route in api_routes())})


def add_page(app: web.Application, api: Api) -> None:
    """The page, its files and its terminals on ``app``, with :func:`auth.headers`."""
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

    for path, handler in zip(PAGE_PATHS, (page, static, shell, console), strict=True):
        app.router.add_get(path, handler)


def dashboard_app(api: Api, policy: Any) -> web.Application:
    """The dashboard, behind ``policy`` (an aiohttp middleware that lets a request in or not)."""
    app = web.Application(middlewares=[policy, errors], client_max_size=m.MAX_BODY)
    add_page(app, api)
    for route in api_routes():
        app.router.add_route(
            route.method, route.path, bind(route, getattr(api, route.name), api.ops)
        )
    app.on_shutdown.append(api.close_watchers)
    return app


def remote_app(api: Api, policy: Any) -> web.Application:
    """The TLS listener's: the socket's whole API (a trusted client certificate's) and the
    dashboard's page beside it, behind ``policy`` (:class:`~ketch.daemon.web.remote.RemoteAuth`)."""
    app = api.app()
    app.middlewares.insert(0, policy)
    add_page(app, api)
    return app
