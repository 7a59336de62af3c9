"""ketchd's TCP listener: TLS 1.3 only, its own certificate, the same limits as the socket.

Asked for with ``ketch set local.address=HOST:PORT`` (the listener moves at
once: :class:`Listener`) or ``ketchd --address HOST:PORT``.  On first start
ketchd makes a self-signed certificate (:mod:`ketch.certs`) in ``tls/`` of the
storage root (0600) and logs its fingerprint, which the client pins on first
contact.

The listener serves the Unix socket's API and the web dashboard beside it
(:func:`ketch.daemon.web.app.remote_app`), through
a :class:`~ketch.daemon.guard.Guard` of its own (the same head, idle and body
timeouts and connection cap; remote clients never displace local ones).  A
TLS handshake must finish within the head timeout, and at most as many
handshakes as the cap may be in progress at once (more are closed at once):
a client that opens connections and never completes a handshake holds no
slot for longer than that.  Which requests pass is
:class:`ketch.daemon.web.remote.RemoteAuth`'s to say: a trusted client
certificate as :mod:`ketch.daemon.auth`'s middleware lets it, or a browser's
session opened with the passphrase.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from aiohttp import web

from ketch import certs
from ketch.daemon.auth import Trust
from ketch.daemon.guard import BACKLOG, Guard, _Conn
from ketch.errors import KetchError
from ketch.layout import Root
from ketch.netaddr import parse_address

log = logging.getLogger("ketchd")

ADDRESS_KEY = "local.address"


def server_context(root: Root, trust: Trust) -> ssl.SSLContext:
    """The listener's context: TLS 1.3 only, ketchd's certificate (made if missing), the
    enrolled client certificates as the only anchors (a client may present none)."""
    made = certs.ensure_pair(str(root.tls_cert), str(root.tls_key), "ketchd")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(root.tls_cert), str(root.tls_key))
    context.verify_mode = ssl.CERT_OPTIONAL
    trust.add_to(context)
    fp = certs.pem_fingerprint(root.tls_cert.read_bytes())
    log.info("%s TLS certificate %s", "made the" if made else "serving the", fp)
    return context


class _TlsConn(_Conn):
    """A TLS connection counts against the cap once its handshake is done."""

    def __init__(self, site: GuardedTlsSite, guard: Guard, manager: web.Server, **kw: Any):
        super().__init__(guard, manager, **kw)
        self.site = site

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.site.handshaking.pop(self, None)
        self.guard.conns.add(self)
        super().connection_made(transport)


class GuardedTlsSite(web.TCPSite):
    """aiohttp's TCP site, TLS only, serving through a :class:`Guard`."""

    __slots__ = ("_guard", "_handler_args", "_tls", "handshaking")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        context: ssl.SSLContext,
        guard: Guard,
        **handler_args: Any,
    ) -> None:
        super().__init__(runner, host, port, backlog=BACKLOG, ssl_context=context)
        self._guard = guard
        self._tls = context
        self._handler_args = handler_args
        self.handshaking: dict[_TlsConn, float] = {}  # handshakes in progress, since when

    def _factory(self, server: web.Server, **kwargs: Any) -> Any:
        """asyncio's TLS server, by hand: each accepted socket gets an SSLProtocol around a
        :class:`_TlsConn`, unless too many handshakes are in progress (then it is closed)."""
        from asyncio.sslproto import SSLProtocol

        guard, loop = self._guard, self._guard.loop
        timeout = guard.limits.head_timeout

        def make() -> asyncio.BaseProtocol:
            if len(self.handshaking) >= guard.limits.max_connections:
                guard.refused += 1
                return _Closed()
            if len(guard.conns) >= guard.limits.max_connections:
                victim = next(iter(guard.waiting), None)
                if victim is not None:
                    victim.drop()
            conn = _TlsConn(self, guard, server, **kwargs)
            self.handshaking[conn] = time.monotonic()
            waiter = loop.create_future()

            def settled(done: asyncio.Future[Any], conn: _TlsConn = conn) -> None:
                self.handshaking.pop(conn, None)  # done, failed or timed out
                if not done.cancelled():
                    done.exception()  # retrieved: a failed handshake is no loop error

            waiter.add_done_callback(settled)
            return SSLProtocol(
                loop,
                conn,
                self._tls,
                waiter,
                server_side=True,
                ssl_handshake_timeout=timeout,  # type: ignore[arg-type]  # a float works
            )

        return make

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        handler_args = {**getattr(server, "_kwargs", {}), **self._handler_args}
        self._server = await self._guard.loop.create_server(
            self._factory(server, **handler_args),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )

    @property
    def port(self) -> int:
        """The port listened on (the one the kernel chose for port 0)."""
        assert self._server is not None
        sockets = getattr(self._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self._port


async def start_listener(
    runner: web.AppRunner, root: Root, address: str, trust: Trust, guard: Guard, idle: float
) -> GuardedTlsSite:
    """Listen on ``address`` (HOST:PORT) over TLS; the site (its port: the one bound)."""
    host, port = parse_address(address)
    site = GuardedTlsSite(
        runner,
        host,
        port,
        server_context(root, trust),
        guard,
        access_log=None,
        keepalive_timeout=idle,
    )
    try:
        await site.start()
    except OSError as exc:
        raise KetchError(
            f"cannot listen on {address}: {exc.strerror or exc}",
            hint="pick another address with 'ketch set local.address=HOST:PORT' "
            "(or ketchd --address), or stop what holds it",
        ) from exc
    log.info("ketchd listening on %s:%d (TLS 1.3, client certificates)", host, site.port)
    return site


class Listener:
    """The TLS listener of one daemon, moved when ``local.address`` changes."""

    def __init__(
        self, runner: web.AppRunner, root: Root, trust: Trust, guard: Guard, idle: float
    ) -> None:
        self.runner, self.root, self.trust, self.guard, self.idle = runner, root, trust, guard, idle
        self.address: str | None = None
        self.site: GuardedTlsSite | None = None

    def bound(self) -> tuple[str, int] | None:
        """The address and port listened on (None: not listening)."""
        if self.address is None or self.site is None:
            return None
        return parse_address(self.address)[0], self.site.port

    async def move(self, address: str | None) -> None:
        """Listen on ``address`` instead (None: stop listening).  The new one is opened
        first: when it cannot be, the old one stays and the error is raised."""
        if address is not None:
            host, port = parse_address(address)
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if address == self.address:
            return
        old = self.site
        if old is not None and address is not None and parse_address(address)[1] == old.port:
            await old.stop()  # the same port on another host address: free it first
            old = self.site = None
            self.address = None
        new = None
        if address is not None:
            new = await start_listener(
                self.runner, self.root, address, self.trust, self.guard, self.idle
            )
        if old is not None:
            await old.stop()
            log.info("ketchd no longer listens on %s", self.address)
        self.site, self.address = new, address


class _Closed(asyncio.Protocol):
    """Past the cap of handshakes in progress: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:
            transport.close()
