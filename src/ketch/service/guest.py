"""Use case: hand a client what it needs to reach a running instance over SSH."""

from __future__ import annotations

from ketch.api.models import SshTargetReply
from ketch.model import Verb
from ketch.service import guestlink
from ketch.service.context import Context
from ketch.service.inspect import get, require


async def ssh_info(ctx: Context, name: str) -> SshTargetReply:
    v = await get(ctx, name)
    require(v, Verb.CONNECT, hint=f"'ketch start {name}' first")
    t = guestlink.target(ctx.root, v.record.spec)
    return SshTargetReply(
        name=t.name,
        host=t.host,
        port=t.port,
        user=t.user,
        identity=t.identity,
        known_hosts=t.known_hosts,
    )
