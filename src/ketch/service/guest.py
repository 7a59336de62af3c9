"""Use case: hand a client what it needs to reach a running instance over SSH."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ketch.model import Verb
from ketch.service import guestlink
from ketch.service.context import Context
from ketch.service.inspect import get, require


async def ssh_info(ctx: Context, name: str) -> dict[str, Any]:
    v = await get(ctx, name)
    require(v, Verb.CONNECT, hint=f"'ketch start {name}' first")
    return asdict(guestlink.target(ctx.root, v.record.spec))
