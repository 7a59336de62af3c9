"""Who may use the dashboard: one-time login tokens, a session cookie and its second secret.

The local policy (``ketch dashboard``), as Jupyter's: ketchd mints a random
token good for one login within its time to live; ``GET /login?token=T``
spends it and answers with an HttpOnly, SameSite=Strict session cookie and a
redirect to ``/#s=SECRET`` (the token leaves the address bar at once, no
referrer).  The session's second secret travels in the fragment, which no
server is sent: the page keeps it in ``sessionStorage`` (scoped to this
origin, port included) and sends it with every API request in the
``X-Ketch-CSRF`` header (a websocket: the ``csrf`` query parameter).

Why two: a cookie is not scoped to a port, so every other server on
127.0.0.1 the browser visits is sent it; the cookie alone opens only the
page and its files.  A page elsewhere can make the browser send the cookie
(SameSite does not stop another local port: the same site) but cannot read
the secret, so it can neither read nor change anything.  A state-changing
request or a websocket must also carry an ``Origin`` (when the browser sends
one; a websocket always) that is the dashboard's own, and every request a
``Host`` that is the loopback address the dashboard listens on (a DNS
rebinding page names another).  What is refused is a ketch error (401 or 403).

The policy is a middleware of its own (:meth:`LocalAuth.middleware`): the
TLS listener mounts the same application with its own (client certificates).
:func:`headers` (the Content-Security-Policy and the rest) is for any policy.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web

from ketch.api import models as m
from ketch.clock import SYSTEM, Clock
from ketch.errors import KetchError

COOKIE = "ketch_session"
CSRF_HEADER = "X-Ketch-CSRF"
MAX_TOKENS = 16  # unspent login tokens kept (the oldest go first)
MAX_SESSIONS = 64
SESSION_TTL = 12 * 3600.0  # a session cookie's life (seconds)
SAFE = frozenset({"GET", "HEAD"})

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unauthorized(KetchError):
    """No session (or a login token that is unknown, spent or expired)."""

    code = "unauthorized"


class Forbidden(KetchError):
    """A session, but a request that could be forged (CSRF token, Origin or Host wrong)."""

    code = "forbidden"


def refusal(exc: KetchError, status: int) -> web.Response:
    body = msgspec.json.encode(m.ErrorReply(error=msgspec.convert(exc.to_dict(), m.ErrorDetail)))
    return web.Response(body=body, status=status, content_type="application/json")


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>ketch dashboard</title></head><body><main><h1>ketch dashboard</h1>
<p>{text}</p><p>Run <code>ketch dashboard</code> for a new login address.</p></main></body></html>
"""


def refusal_page(text: str, status: int) -> web.Response:
    return web.Response(text=PAGE.format(text=text), status=status, content_type="text/html")


@dataclass
class Session:
    csrf: str
    expires: float


class Sessions:
    """Session cookies and their second secrets: each good for ``SESSION_TTL``, at most
    ``MAX_SESSIONS`` of them (the oldest go first).  Any policy's (local or remote)."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # cookie value -> session

    def open(self) -> tuple[str, Session]:
        """A new session: its cookie value and the session."""
        self.prune()
        cookie = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), self.clock.time() + SESSION_TTL)
        self._sessions[cookie] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return cookie, session

    def get(self, request: web.Request) -> Session | None:
        """The session ``request``'s cookie names (None: none, unknown or expired)."""
        cookie = request.cookies.get(COOKIE, "")
        session = self._sessions.get(cookie) if cookie else None
        if session is None or self.clock.time() > session.expires:
            return None
        return session

    def prune(self) -> None:
        now = self.clock.time()
        for cookie in [c for c, s in self._sessions.items() if now > s.expires]:
            del self._sessions[cookie]

    def __len__(self) -> int:
        return len(self._sessions)


def opened(session: Session, cookie: str, *, secure: bool) -> web.Response:
    """The answer to a login: the session cookie (HttpOnly, SameSite=Strict, ``Secure``
    over TLS) and a redirect to the page with the second secret in the fragment."""
    resp = web.Response(status=303, headers={"Location": f"/#s={session.csrf}"})
    resp.set_cookie(
        COOKIE,
        cookie,
        httponly=True,
        secure=secure or None,
        samesite="Strict",
        path="/",
        max_age=int(SESSION_TTL),
    )
    return resp


class LocalAuth:
    """One-time tokens and the sessions they open, for the dashboard on 127.0.0.1."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self.port = 0  # set once the dashboard listens (the Host it answers to)
        self._tokens: OrderedDict[str, float] = OrderedDict()  # token -> expiry
        self.sessions = Sessions(clock)

    def mint(self, ttl: float) -> tuple[str, float]:
        """A new login token and its expiry (epoch seconds)."""
        self._prune()
        token = secrets.token_urlsafe(32)
        expires = self.clock.time() + ttl
        self._tokens[token] = expires
        while len(self._tokens) > MAX_TOKENS:
            self._tokens.popitem(last=False)
        return token, expires

    def redeem(self, token: str) -> tuple[str, Session] | None:
        """Spend ``token``: a new session (cookie value, session), or None (unknown, used,
        expired).  A token is spent by its first use, good or not in time."""
        expires = self._tokens.pop(token, None)
        if expires is None or self.clock.time() > expires:
            return None
        return self.sessions.open()

    def session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request)

    def _prune(self) -> None:
        now = self.clock.time()
        for token in [t for t, e in self._tokens.items() if now > e]:
            del self._tokens[token]
        self.sessions.prune()

    # -- the policy ------------------------------------------------------------------

    def hosts(self) -> set[str]:
        return {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.host not in self.hosts():
            return refusal(
                Forbidden(f"this dashboard answers to 127.0.0.1:{self.port}, not {request.host}"),
                403,
            )
        if request.path == "/login":
            return self.login(request)
        session = self.session(request)
        if session is None:
            if request.path == "/":
                return refusal_page("You are not logged in (or your session has ended).", 401)
            return refusal(
                Unauthorized("not logged in", hint="open the URL 'ketch dashboard' prints"), 401
            )
        origins = {f"http://{h}" for h in self.hosts()}
        return await admit(
            request, handler, session, origins, "open a new URL from 'ketch dashboard'"
        )

    def login(self, request: web.Request) -> web.StreamResponse:
        redeemed = self.redeem(request.query.get("token", ""))
        if redeemed is None:
            return refusal_page("This login address is expired or was already used.", 403)
        cookie, session = redeemed
        return opened(session, cookie, secure=False)


async def admit(
    request: web.Request,
    handler: Handler,
    session: Session,
    origins: set[str],
    hint: str,
    *,
    origin_required: bool = False,
) -> web.StreamResponse:
    """A request with a session: the page and its files pass (nothing secret in them); the
    rest only when it is no forgery (:func:`forged`), else 403."""
    if request.path == "/" or request.path.startswith("/static/"):
        return await handler(request)
    problem = forged(request, session.csrf, origins, origin_required=origin_required)
    if problem is not None:
        return refusal(Forbidden(problem, hint=hint), 403)
    return await handler(request)


def forged(
    request: web.Request, csrf: str, origins: set[str], *, origin_required: bool = False
) -> str | None:
    """Why ``request`` could be a forgery, or made with a stolen cookie (None: it is not).

    Every API request carries the session's second secret; a state-changing one
    and a websocket (browsers do not apply the same-origin policy to those) also
    an Origin of the dashboard's own (a websocket always; a state-changing request
    when the browser sends one, or always with ``origin_required``).
    """
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    origin = request.headers.get("Origin")
    if upgrade and origin is None:
        return "a websocket without an Origin"
    if origin_required and request.method not in SAFE and origin is None:
        return "a state-changing request without an Origin"
    if (upgrade or request.method not in SAFE) and origin is not None and origin not in origins:
        return f"a request from another origin ({origin})"
    given = request.query.get("csrf", "") if upgrade else request.headers.get(CSRF_HEADER, "")
    if not given:
        return f"a request without the session's secret ({CSRF_HEADER})"
    if not hmac.compare_digest(given.encode(), csrf.encode()):
        return "a request with a wrong session secret"
    return None


async def headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the page's protections on every answer (streams, refusals too)."""
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)
