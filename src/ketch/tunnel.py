"""The CLI's end of the SSH tunnel to a remote ketchd (``daemon/tunnel.py`` is the other).

:func:`forward` listens on a port of 127.0.0.1 in a background thread; each
connection the local ``ssh`` makes there is carried, in binary WebSocket
messages, over a TLS connection of its own to the ketchd at
``KETCH_SERVER_ADDRESS`` (the same client certificate and fingerprint pin as
every request: :mod:`ketch.remote`), which relays it to the guest's SSH port
on its host.  ``ssh`` itself still checks the guest's pinned host key.

The WebSocket client is the minimum RFC 6455 asks of one: the upgrade, masked
binary frames out, unmasked frames in (binary, continuation, ping answered,
close).  Imported only for a remote ``exec``, ``shell`` or ``transfer``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import threading
from urllib.parse import quote

from ketch import certs
from ketch.errors import DaemonUnreachable
from ketch.netaddr import parse_address

CHUNK = 1 << 16
OP_CONT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (FIN set).  Pure but for the random mask."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + masked(payload, mask)


def masked(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (masking and unmasking are the same)."""
    if not payload:
        return b""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One frame from the server: ``(opcode, payload)``."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else b""
    payload = await reader.readexactly(n)
    return b0 & 0x0F, masked(payload, mask) if mask else payload


async def open_tunnel(where: str, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to ketchd at ``where``, upgraded to the tunnel of instance ``name``."""
    from ketch import remote

    host, port = parse_address(where)
    reader, writer = await asyncio.open_connection(host, port, ssl=remote.context())
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    remote.check_pin(where, certs.fingerprint(der))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/instances/{quote(name, safe='')}/ssh-tunnel HTTP/1.1\r\nHost: ketchd\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.1 ") else b""
    if status != b"101":
        writer.close()
        raise DaemonUnreachable(
            f"ketchd at {where} refused the SSH tunnel of {name}: "
            f"{head.splitlines()[0].decode(errors='replace')}"
        )
    return reader, writer


async def _bridge(
    where: str, name: str, local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter
) -> None:
    try:
        ws_r, ws_w = await open_tunnel(where, name)
    except (OSError, DaemonUnreachable, asyncio.IncompleteReadError):
        local_w.close()
        return

    async def up() -> None:  # ssh -> ketchd
        while data := await local_r.read(CHUNK):
            ws_w.write(frame(OP_BINARY, data))
            await ws_w.drain()
        ws_w.write(frame(OP_CLOSE, struct.pack("!H", 1000)))
        await ws_w.drain()

    async def down() -> None:  # ketchd -> ssh
        while True:
            opcode, payload = await read_frame(ws_r)
            if opcode in (OP_BINARY, OP_CONT):
                local_w.write(payload)
                await local_w.drain()
            elif opcode == OP_PING:
                ws_w.write(frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                return

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for w in (local_w, ws_w):
            w.close()


def forward(where: str, name: str) -> int:
    """Listen on 127.0.0.1 (a port the kernel picks) in a daemon thread; the port.

    Each connection there is bridged to the guest ``name`` through ketchd at ``where``.
    The thread ends with the CLI.
    """
    ready: list[int] = []
    started = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(lambda r, w: _bridge(where, name, r, w), "127.0.0.1", 0)
        ready.append(int(server.sockets[0].getsockname()[1]))
        started.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    started.wait(20.0)
    if not ready:
        raise DaemonUnreachable("could not open a local port for the SSH tunnel")
    return ready[0]
