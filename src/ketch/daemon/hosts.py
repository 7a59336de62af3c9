"""The hosts' routes of ketchd's API (``/v1/hosts``): a mixin of :class:`ketch.daemon.api.Api`.

Each handler calls one function of :mod:`ketch.service.hosts`.  They take no instance
lock: a host is no instance, and ``host list`` waits for no operation (a probe that hangs
is bounded by its timeout, and never holds anything of the daemon's).
"""

from __future__ import annotations

from ketch.api import models as m
from ketch.daemon.wire import Call
from ketch.service import hosts as hosts_uc
from ketch.service.context import Context


class HostRoutes:
    """``host add``, ``host list``, ``host remove``."""

    ctx: Context

    async def host_add(self, call: Call[m.HostAddBody]) -> m.HostAddReply:
        body = call.body
        return await hosts_uc.add(
            self.ctx,
            body.name,
            body.uri,
            ssh_key=body.ssh_key,
            known_hosts=body.known_hosts,
            timeout=body.timeout,
        )

    async def host_list(self, call: Call[None]) -> m.HostListReply:
        return await hosts_uc.listing(self.ctx, call.query.timeout)

    async def host_remove(self, call: Call[None]) -> m.HostRemoveReply:
        return hosts_uc.remove(self.ctx, call.params["name"])
