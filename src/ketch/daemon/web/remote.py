"""Who may use the dashboard on ketchd's TLS listener: a client certificate, or the passphrase.

The remote policy (:class:`RemoteAuth`, a middleware in front of
:func:`~ketch.daemon.web.app.remote_app`), beside the local one
(:class:`~ketch.daemon.web.auth.LocalAuth`) and sharing its sessions, its CSRF
check and its refusals:

* A request over the Unix socket or with a trusted client certificate passes
  as it does without a dashboard (:func:`ketch.daemon.auth.middleware`): the
  CLI, and a browser that has an enrolled certificate (whose ``/login`` opens
  a session at once, for the page's second secret).  So does enrolment.  A
  browser presents its certificate to requests other sites' pages make too:
  one that carries an ``Origin`` (the CLI sends none) must carry the
  listener's own.
* ``GET /login`` is a plain form (no script, no style, nothing fetched);
  ``POST /login`` checks the passphrase as enrolment does
  (:func:`ketch.daemon.auth.check_passphrase`) and counts a failure in the same
  per-address :class:`~ketch.daemon.auth.Attempts` (logins and enrolments
  together).  Success opens a session: a cookie ``HttpOnly; Secure;
  SameSite=Strict; Path=/`` and a redirect to ``/#s=SECRET`` (the page keeps the
  second secret in ``sessionStorage`` and sends it as ``X-Ketch-CSRF``, a
  websocket as ``csrf``).  Without ``local.passphrase`` no login is possible,
  and the page says so.
* A session reaches only the page, its files, its terminals and the API routes
  the page calls (not ``/v1/dashboard`` nor the SSH tunnel); every request but
  the page's must carry the second secret, a state-changing one and a
  websocket also an ``Origin`` of the listener's own (always: browsers send
  one with every such request).  Sessions end after
  ``SESSION_TTL``, and at most ``MAX_SESSIONS`` are kept.
* A browser's request (a login, the page, anything with a session cookie) must
  name the listener in its ``Host`` (DNS rebinding names another): its address
  and port; on a wildcard address, an IP literal (a rebinding needs a name).
* Anything else gets the error it got before (401, ``ketch authenticate``).
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ketch.clock import SYSTEM, Clock
from ketch.daemon.auth import (
    AUTH_HINT,
    NOT_AUTHENTICATED,
    OPEN_PATHS,
    PASSPHRASE_KEY,
    Attempts,
    Trust,
    check_passphrase,
    peer_address,
    peer_certificate,
)
from ketch.daemon.web.app import browser_paths, remote_app
from ketch.daemon.web.auth import (
    COOKIE,
    Forbidden,
    Handler,
    Sessions,
    admit,
    opened,
    refusal,
)
from ketch.daemon.wire import error_response
from ketch.errors import KetchError, RateLimited, Unauthenticated
from ketch.layout import Root

if TYPE_CHECKING:
    from ketch.daemon.guard import Limits
    from ketch.daemon.tls import Listener

LOGIN = "/login"
LOGIN_HINT = f"log in again at {LOGIN} with the passphrase"
WILDCARDS = frozenset({"0.0.0.0", "::"})
LOOPBACKS = frozenset({"127.0.0.1", "::1"})

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ketch dashboard: log in</title></head><body><main><h1>ketch dashboard</h1>
{message}{form}</main></body></html>
"""
FORM = """<form method="post" action="/login"><p><label for="passphrase">Passphrase</label>
<input id="passphrase" name="passphrase" type="password" autocomplete="current-password"
required autofocus> <button id="login" type="submit">Log in</button></p></form>
<p>The passphrase is the one set on this server with <code>ketch set local.passphrase</code>.</p>
"""
NO_LOGIN = (
    "No passphrase is set on this ketchd, so no login is possible. Set one on the server "
    "with 'ketch set local.passphrase' (or use a browser with an enrolled client certificate)."
)


def said(exc: KetchError) -> str:
    """An error as the page says it: the message, then the hint."""
    return f"{exc.message} {exc.hint}" if exc.hint else exc.message


def login_page(message: str, status: int, *, form: bool = True) -> web.Response:
    """The login form, under ``message`` (escaped; empty: none)."""
    said = f'<p role="alert" id="message">{html.escape(message)}</p>' if message else ""
    body = LOGIN_PAGE.format(message=said, form=FORM if form else "")
    # Its form's POST must carry the page's Origin: under no-referrer a browser sends "null".
    headers = {"Referrer-Policy": "same-origin"}
    return web.Response(text=body, status=status, content_type="text/html", headers=headers)


def host_allowed(host: str, bound: tuple[str, int] | None) -> bool:
    """Whether a ``Host`` header names the listener ``bound`` (its address and port)."""
    if bound is None:
        return False
    address, port = bound
    name, sep, given = host.rpartition(":")
    if not sep or (host.startswith("[") and not name.endswith("]")):
        name, given = host, "443"  # no port: the default one
    name = name.removeprefix("[").removesuffix("]").lower()
    if not given.isdigit() or int(given) != port:
        return False
    if name == address.lower():
        return True
    if address in LOOPBACKS and name == "localhost":
        return True
    if address in WILDCARDS:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
    return False


class RemoteAuth:
    """The TLS listener's policy: certificates as before, or a passphrase login's session."""

    def __init__(
        self,
        trust: Trust,
        attempts: Attempts,
        stored: Callable[[], str | None],
        clock: Clock = SYSTEM,
    ) -> None:
        self.trust = trust
        self.attempts = attempts  # the enrolment route's: failures count together
        self.stored = stored  # local.passphrase as stored (hashed), read at each login
        self.sessions = Sessions(clock)
        self.bound: Callable[[], tuple[str, int] | None] = lambda: None  # set by the listener
        self.paths = browser_paths()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        how, der = peer_certificate(request)
        if how == "unix" or (how == "tls" and self.trust.trusts(der)):
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"https://{request.host}":
                # a browser presents its certificate to a request another site's page made
                return refusal(Forbidden(f"a request from another origin ({origin})"), 403)
            if request.path == LOGIN:  # a browser with the certificate: the page's secret
                return self.open_session()
            return await handler(request)  # as ketch.daemon.auth.middleware lets it
        if how == "tls" and request.path in OPEN_PATHS:
            return await handler(request)  # enrolment
        if how != "tls" or der is not None:
            return error_response(
                Unauthenticated(
                    "The client's certificate is not trusted by ketchd.", hint=AUTH_HINT
                ),
                403,
            )
        browser = request.path in (LOGIN, "/") or COOKIE in request.cookies
        if browser and not host_allowed(request.host, self.bound()):
            return refusal(
                Forbidden(
                    f"this listener does not answer to {request.host}",
                    hint="open the dashboard at the address ketchd listens on "
                    "('ketch get local.address')",
                ),
                403,
            )
        if request.path == LOGIN:
            return await self.login(request)
        session = self.sessions.get(request)
        if session is None:
            if request.path == "/":
                return web.Response(status=303, headers={"Location": LOGIN})
            return error_response(
                Unauthenticated(NOT_AUTHENTICATED, hint=f"{AUTH_HINT} (a browser: {LOGIN})"),
                401,
            )
        route = request.match_info.route.resource
        if route is None or route.canonical not in self.paths:
            return refusal(
                Forbidden(
                    f"a dashboard session cannot use {request.path}",
                    hint="use the CLI with an enrolled certificate ('ketch authenticate')",
                ),
                403,
            )
        origins = {f"https://{request.host}"}  # the Host was checked above
        return await admit(request, handler, session, origins, LOGIN_HINT, origin_required=True)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """``GET``: the form; ``POST``: the passphrase, and a session when it is right."""
        if request.method not in ("GET", "HEAD", "POST"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        stored = self.stored()
        if not stored:
            return login_page(NO_LOGIN, 403 if request.method == "POST" else 200, form=False)
        if request.method != "POST":
            return login_page("", 200)
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"https://{request.host}":
            return refusal(
                Forbidden(f"a login from another origin ({origin})", hint=LOGIN_HINT), 403
            )
        form = await request.post()
        given = form.get("passphrase")
        try:
            await check_passphrase(
                stored,
                given if isinstance(given, str) else "",
                peer_address(request),
                self.attempts,
            )
        except RateLimited as exc:
            return login_page(said(exc), 429)
        except KetchError as exc:
            return login_page(said(exc), 401)
        return self.open_session()

    def open_session(self) -> web.Response:
        """A new session's cookie (Secure) and the redirect to the page with its secret."""
        cookie, session = self.sessions.open()
        return opened(session, cookie, secure=True)


async def open_remote(
    api: Any, root: Root, limits: Limits, clock: Clock = SYSTEM
) -> tuple[Listener, web.AppRunner, RemoteAuth]:
    """The TLS listener's application behind :class:`RemoteAuth` (with ``api``'s trust and
    attempts), its runner, and the :class:`~ketch.daemon.tls.Listener` that serves it
    (listening once it is moved to an address)."""
    from ketch.daemon.guard import Guard
    from ketch.daemon.tls import Listener

    remote = RemoteAuth(
        api.trust, api.attempts, lambda: api.ctx.store.get_setting(PASSPHRASE_KEY), clock
    )
    guard = Guard(limits, asyncio.get_running_loop())
    app = remote_app(api, remote.middleware)
    app.middlewares.insert(0, guard.middleware)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = Listener(runner, root, api.trust, guard, limits.idle_timeout)
    remote.bound = listener.bound
    return listener, runner, remote
