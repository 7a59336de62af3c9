"""Use case: hand a client what it needs to reach a running instance over SSH.

The reply carries the instance's mounts (host and guest path) too: ``exec``
maps the host's working directory through them without a second request.
"""

from __future__ import annotations

from ketch.api.models import MountPath, SshTargetReply
from ketch.model import Verb
from ketch.runtime.driver import Reaches
from ketch.service import guestlink
from ketch.service.context import Context
from ketch.service.inspect import get, require


async def ssh_info(ctx: Context, name: str) -> SshTargetReply:
    v = await get(ctx, name)
    require(v, Verb.CONNECT, hint=f"'ketch start {name}' first")
    spec = v.record.spec
    driver = ctx.driver_for(spec)
    if isinstance(driver, Reaches):  # a remote host's guest: its relay made again if gone
        await driver.reach(spec, ctx.root.instance(name))
    t = await guestlink.endpoint(ctx.root, spec)  # the managed address when reachable
    return SshTargetReply(
        name=t.name,
        host=t.host,
        port=t.port,
        user=t.user,
        identity=t.identity,
        known_hosts=t.known_hosts,
        control_path=t.control_path,
        mounts=[MountPath(source=m.source, target=m.target) for m in spec.mounts],
    )
