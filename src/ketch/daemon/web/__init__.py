"""The web dashboard ketchd serves: ``POST /v1/dashboard`` opens it on 127.0.0.1.

The first ``ketch dashboard`` starts a TCP listener on the loopback address
(the port asked for, or any free one) serving :func:`~ketch.daemon.web.app.dashboard_app`
behind the local policy (:class:`~ketch.daemon.web.auth.LocalAuth`); every call
mints a new one-time login token and answers with the URL that carries it.
The listener lives as long as ketchd, and is guarded as the socket is
(``daemon/guard.py``: a cap on connections, head, idle and body timeouts),
since any local user can connect to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ketch.api import models as m
from ketch.errors import InvalidArgument

if TYPE_CHECKING:
    from ketch.daemon.web.auth import LocalAuth
    from ketch.daemon.wire import Call

HOST = "127.0.0.1"
MAX_CONNECTIONS = 64  # a dashboard needs a few; idle ones go first when full


class DashboardRoutes:
    """``/v1/dashboard``, mixed into :class:`ketch.daemon.api.Api`."""

    _dashboard: tuple[web.AppRunner, LocalAuth] | None = None
    _listener: asyncio.Server | None = None

    async def _open_dashboard(self, port: int) -> tuple[web.AppRunner, LocalAuth]:
        """The listener, guarded as the socket is (any local user can connect to it)."""
        from ketch.daemon.guard import Guard, Limits
        from ketch.daemon.web.app import dashboard_app
        from ketch.daemon.web.auth import LocalAuth

        api: Any = self
        local = LocalAuth(api.ctx.clock)
        loop = asyncio.get_running_loop()
        limits = Limits.from_env()
        limits = dataclasses.replace(
            limits, max_connections=min(MAX_CONNECTIONS, limits.max_connections)
        )
        guard = Guard(limits, loop)
        app = dashboard_app(api, local.middleware)
        app.middlewares.insert(0, guard.middleware)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=limits.idle_timeout
        )
        await runner.setup()
        server = runner.server
        assert server is not None
        try:
            listener = await loop.create_server(
                guard.factory(server, **getattr(server, "_kwargs", {})), HOST, port, backlog=16
            )
        except OSError as exc:
            await runner.cleanup()
            raise InvalidArgument(
                f"the dashboard cannot listen on {HOST}:{port}: {exc.strerror or exc}",
                hint="choose another --port, or leave it out for any free one",
            ) from exc
        self._listener = listener
        local.port = listener.sockets[0].getsockname()[1]
        return runner, local

    async def dashboard(self, call: Call[m.DashboardBody]) -> m.DashboardReply:
        body = call.body
        if self._dashboard is None:
            self._dashboard = await self._open_dashboard(body.port)
        _, local = self._dashboard
        if body.port and body.port != local.port:
            raise InvalidArgument(
                f"the dashboard already listens on {HOST}:{local.port}",
                hint=f"leave --port out, or use {local.port}",
            )
        token, expires = local.mint(body.ttl)
        return m.DashboardReply(
            url=f"http://{HOST}:{local.port}/login?token={token}",
            port=local.port,
            expires=expires,
        )

    async def close_dashboard(self, app: web.Application) -> None:
        """``on_shutdown``: the dashboard's listener goes with ketchd's."""
        if self._dashboard is not None:
            runner, _ = self._dashboard
            self._dashboard = None
            if self._listener is not None:
                self._listener.close()
            await runner.cleanup()
