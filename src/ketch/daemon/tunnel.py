"""``GET /v1/instances/{name}/ssh-tunnel``: a WebSocket carrying the bytes of one SSH connection.

A remote client (``KETCH_SERVER_ADDRESS``) cannot reach a guest's SSH port:
it is forwarded on the daemon host's 127.0.0.1 only.  So the client's ``ssh``
connects to a local port of the CLI (:mod:`ketch.tunnel`), whose bytes travel
in binary WebSocket messages over the same authenticated TLS connection to
this handler, which connects to the guest's port and relays both ways.  The
guest's host key is still checked by the client's ``ssh`` against the pinned
one: the daemon only carries bytes it cannot read.

Behind the same gate as every route (``daemon/auth.py``): only trusted
clients (or the owner on the Unix socket) get here.  Not in the route table:
it answers no JSON model (a refusal before the upgrade is a JSON error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import WSMsgType, web

from ketch.api.openapi import TUNNEL
from ketch.errors import GuestError
from ketch.service import remote_access

log = logging.getLogger("ketchd")

TUNNEL_PATH = TUNNEL  # documented in the OpenAPI document by hand (no model)
CHUNK = 1 << 16


class TunnelRoutes:
    """The tunnel handler of :class:`ketch.daemon.api.Api` (a mixin)."""

    ctx: Any

    async def ssh_tunnel(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        host, port = await remote_access.ssh_address(self.ctx, name)
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise GuestError(f'cannot reach the SSH port of "{name}": {exc}') from exc
        ws = web.WebSocketResponse(max_msg_size=4 * CHUNK, autoping=True)
        try:
            await ws.prepare(request)
            await _relay(ws, reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            await ws.close()
        return ws


async def _relay(
    ws: web.WebSocketResponse, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    async def up() -> None:  # client -> guest
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                break
            writer.write(msg.data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def down() -> None:  # guest -> client
        while data := await reader.read(CHUNK):
            await ws.send_bytes(data)

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await task
