"""Who may use ketchd over TCP: enrolled client certificates, and the passphrase to enrol.

ketchd's TLS listener (:mod:`ketch.daemon.tls`) asks every client for a
certificate and lets OpenSSL accept only the enrolled ones (each is its own
trust anchor in the listener's context); a client that presents none gets
through the handshake and is answered here:

* :func:`middleware` (an aiohttp middleware any app on the TLS listener can
  put in front of itself) lets a request through when it came over the Unix
  socket (the owner's, checked by the socket's mode and SO_PEERCRED) or over
  TLS with a certificate whose fingerprint is in :class:`Trust`; else every
  route but enrolment is refused, 401 without a certificate, 403 with one
  that is not trusted.  Any other transport is refused: fail closed.
* ``POST /v1/authenticate`` (:meth:`AuthRoutes.authenticate`) takes the
  client's certificate and the passphrase (``local.passphrase``, stored
  hashed); when they match, the certificate is trusted from then on, in the
  running listener too.  Failed passphrases are counted per client address
  (:class:`Attempts`): past ``MAX_FAILURES`` within ``WINDOW`` seconds every
  attempt from there is refused (429) until the window has passed, whether
  the passphrase is right or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ketch import certs, passphrase
from ketch.api import models as m
from ketch.clock import SYSTEM, Clock
from ketch.daemon.wire import Call, error_response
from ketch.errors import InvalidArgument, RateLimited, Unauthenticated
from ketch.layout import Root

log = logging.getLogger("ketchd")

PASSPHRASE_KEY = "local.passphrase"
AUTHENTICATE_PATH = "/v1/authenticate"
OPEN_PATHS = frozenset({AUTHENTICATE_PATH})  # the one route an untrusted client may ask
MAX_FAILURES = 5
WINDOW = 60.0
NOT_AUTHENTICATED = "The client is not authenticated with ketchd."
AUTH_HINT = "Please use 'ketch authenticate' before proceeding."
NO_PASSPHRASE = "Passphrase is not set. Please `ketch set local.passphrase` with a trusted client."


class Trust:
    """The enrolled client certificates (``tls/trusted-clients.pem``), by fingerprint."""

    def __init__(self, root: Root) -> None:
        self.path = root.tls_clients
        self.contexts: list[ssl.SSLContext] = []  # listeners that learn new certificates live
        self.fingerprints: set[str] = set()
        self.pems: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for pem in certs.split_pem(self.path.read_bytes()):
                self.pems.append(pem)
                self.fingerprints.add(certs.pem_fingerprint(pem))

    def trusts(self, der: bytes | None) -> bool:
        return der is not None and certs.fingerprint(der) in self.fingerprints

    def add_to(self, context: ssl.SSLContext) -> None:
        """Make ``context`` accept the enrolled certificates, and later ones as they come."""
        if self.pems:
            context.load_verify_locations(cadata="".join(self.pems))
        self.contexts.append(context)

    def enrol(self, pem: str) -> str:
        """Trust ``pem`` (one certificate) from now on; its fingerprint."""
        found = certs.split_pem(pem)
        if len(found) != 1:
            raise InvalidArgument("send exactly one PEM certificate")
        try:
            fp = certs.pem_fingerprint(found[0])
            checked = ssl.create_default_context()
            checked.load_verify_locations(cadata=found[0])  # OpenSSL can read it
        except (ValueError, ssl.SSLError) as exc:
            raise InvalidArgument(f"not a certificate ketchd can use: {exc}") from exc
        if fp in self.fingerprints:
            return fp
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        certs.write_private(str(self.path), ("".join(self.pems) + found[0]).encode())
        self.pems.append(found[0])
        self.fingerprints.add(fp)
        for context in self.contexts:
            context.load_verify_locations(cadata=found[0])
        log.info("enrolled a client certificate: %s", fp)
        return fp


class Attempts:
    """Failed passphrases per client address, in a sliding window."""

    def __init__(
        self, limit: int = MAX_FAILURES, window: float = WINDOW, clock: Clock = SYSTEM
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.failures: dict[str, list[float]] = {}

    def _recent(self, peer: str) -> list[float]:
        now = self.clock.monotonic()
        recent = [t for t in self.failures.get(peer, []) if now - t < self.window]
        if recent:
            self.failures[peer] = recent
        else:
            self.failures.pop(peer, None)
        return recent

    def check(self, peer: str) -> None:
        """RateLimited when ``peer`` failed ``limit`` times within the window."""
        recent = self._recent(peer)
        if len(recent) >= self.limit:
            wait = max(1, int(self.window - (self.clock.monotonic() - recent[0])) + 1)
            raise RateLimited(
                f"too many failed passphrases from {peer}: refused for {wait} s",
                hint="check the passphrase with the server's owner, then try again later",
            )

    def failed(self, peer: str) -> None:
        if len(self.failures) > 10_000:  # a flood of addresses cannot grow this for ever
            self.failures.clear()
        self.failures.setdefault(peer, []).append(self.clock.monotonic())

    def succeeded(self, peer: str) -> None:
        self.failures.pop(peer, None)


def peer_certificate(request: web.Request) -> tuple[str, bytes | None]:
    """How it came: ``("unix", None)``, ``("tls", DER or None)`` or ``("other", None)``."""
    transport = request.transport
    if transport is None:
        return "other", None
    obj = transport.get_extra_info("ssl_object")
    if isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        return "tls", obj.getpeercert(binary_form=True)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return "unix", None
    return "other", None


def peer_address(request: web.Request) -> str:
    return request.remote or "unknown"


def middleware(trust: Trust) -> Callable[..., Any]:
    """The gate: Unix socket and trusted certificates pass; the rest only to enrolment."""

    @web.middleware
    async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
        how, der = peer_certificate(request)
        if (
            how == "unix"
            or (how == "tls" and trust.trusts(der))
            or (how == "tls" and request.path in OPEN_PATHS)
        ):
            response: web.StreamResponse = await handler(request)
            return response
        if how == "tls" and der is None:
            return error_response(Unauthenticated(NOT_AUTHENTICATED, hint=AUTH_HINT), 401)
        return error_response(
            Unauthenticated("The client's certificate is not trusted by ketchd.", hint=AUTH_HINT),
            403,
        )

    return gate


class AuthRoutes:
    """The enrolment route of :class:`ketch.daemon.api.Api` (a mixin)."""

    trust: Trust | None = None
    attempts: Attempts = Attempts()
    ctx: Any

    async def authenticate(self, call: Call[m.AuthenticateBody]) -> m.AuthenticateReply:
        if self.trust is None:
            raise InvalidArgument(
                "remote access is not enabled on this ketchd",
                hint="set local.address=HOST:PORT (or start ketchd --address) first",
            )
        await check_passphrase(
            self.ctx.store.get_setting(PASSPHRASE_KEY),
            call.body.passphrase,
            peer_address(call.request),
            self.attempts,
        )
        return m.AuthenticateReply(fingerprint=self.trust.enrol(call.body.certificate))


async def check_passphrase(stored: str | None, given: str, peer: str, attempts: Attempts) -> None:
    """``given`` against ``local.passphrase`` (``stored``, hashed), counted in ``attempts``
    (enrolment and the dashboard's login share one): RateLimited, Unauthenticated or None."""
    attempts.check(peer)
    if not passphrase.is_hashed(stored):
        raise Unauthenticated(NO_PASSPHRASE)
    if not await asyncio.to_thread(passphrase.verify, given, stored):
        attempts.failed(peer)
        log.warning("a wrong passphrase from %s", peer)
        raise Unauthenticated("Passphrase is not correct. Please try again.")
    attempts.succeeded(peer)


def attempts_from_env() -> Attempts:
    """``KETCH_AUTH_FAILURES`` (how many) and ``KETCH_AUTH_WINDOW`` (seconds), for tests."""
    limit = int(os.environ.get("KETCH_AUTH_FAILURES") or MAX_FAILURES)
    window = float(os.environ.get("KETCH_AUTH_WINDOW") or WINDOW)
    return Attempts(limit, window)
