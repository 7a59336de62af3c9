"""The web dashboard ketchd serves: ``POST /v1/dashboard`` opens it on 127.0.0.1.

The first ``ketch dashboard`` starts a TCP listener on the loopback address
(the port asked for, or any free one) serving :func:`~ketch.daemon.web.app.dashboard_app`
behind the local policy (:class:`~ketch.daemon.web.auth.LocalAuth`); every call
mints a new one-time login token and answers with the URL that carries it.
The listener lives as long as ketchd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ketch.api import models as m
from ketch.errors import InvalidArgument

if TYPE_CHECKING:
    from ketch.daemon.web.auth import LocalAuth
    from ketch.daemon.wire import Call

HOST = "127.0.0.1"


class DashboardRoutes:
    """``/v1/dashboard``, mixed into :class:`ketch.daemon.api.Api`."""

    _dashboard: tuple[web.AppRunner, LocalAuth] | None = None

    async def _open_dashboard(self, port: int) -> tuple[web.AppRunner, LocalAuth]:
        from ketch.daemon.web.app import dashboard_app
        from ketch.daemon.web.auth import LocalAuth

        api: Any = self
        local = LocalAuth(api.ctx.clock)
        runner = web.AppRunner(
            dashboard_app(api, local.middleware), access_log=None, shutdown_timeout=2.0
        )
        await runner.setup()
        site = web.TCPSite(runner, HOST, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise InvalidArgument(
                f"the dashboard cannot listen on {HOST}:{port}: {exc.strerror or exc}",
                hint="choose another --port, or leave it out for any free one",
            ) from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        local.port = sockets[0].getsockname()[1] if sockets else port
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
            await runner.cleanup()
