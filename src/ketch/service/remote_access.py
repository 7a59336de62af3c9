"""Use case: what a remote client needs to reach a guest over SSH (``GET .../ssh-keys``).

A client on another host has none of the daemon's files: it is sent the
client private key ketchd uses for its guests and the instance's pinned
known_hosts, and reaches the guest's SSH port on the daemon's host.  Only a
trusted client (an enrolled certificate, or the owner on the Unix socket)
ever gets here (``daemon/auth.py``): such a client may run anything in the
guest anyway.
"""

from __future__ import annotations

from pathlib import Path

from ketch.api.models import SshKeysReply
from ketch.errors import NotFound
from ketch.model import Verb
from ketch.service import guestlink
from ketch.service.context import Context
from ketch.service.inspect import get, require


async def ssh_keys(ctx: Context, name: str) -> SshKeysReply:
    v = await get(ctx, name)
    require(v, Verb.CONNECT, hint=f"'ketch start {name}' first")
    t = guestlink.target(ctx.root, v.record.spec)
    try:
        identity = Path(t.identity).read_text()  # small files, read once
        known = Path(t.known_hosts).read_text()
    except FileNotFoundError as exc:
        raise NotFound(f'the SSH keys of "{name}" are missing: {exc.filename}') from exc
    return SshKeysReply(name=t.name, port=t.port, user=t.user, identity=identity, known_hosts=known)


async def ssh_address(ctx: Context, name: str) -> tuple[str, int]:
    """Where the guest's SSH port is on the daemon's host (the tunnel connects there)."""
    v = await get(ctx, name)
    require(v, Verb.CONNECT, hint=f"'ketch start {name}' first")
    t = guestlink.target(ctx.root, v.record.spec)
    return t.host, t.port
