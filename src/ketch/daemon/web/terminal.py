"""The dashboard's terminals, each a websocket: a shell in the guest, and its serial console.

**Shell**: ketchd runs ketch's own ``ssh`` argv (``host/ssh/argv.py``: the
instance's pinned host key, ketch's key only) on a pseudo-terminal of its own
and relays bytes: the browser's keys (text frames ``{"data": "..."}``, and
``{"resize": [COLUMNS, ROWS]}``) to the pty, the pty's output to the browser
(binary frames).  The guest's output is never interpreted by ketchd, and the
page shows it as text only.  The session ends with the websocket (ssh is
ended) or with ssh (the websocket is closed).

**Console**: QEMU writes the serial port to ``serial.log`` (a file chardev:
it takes no input), so the console is read-only: the last
:data:`CONSOLE_TAIL` bytes, then what is appended, as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pty
import signal
import struct
import termios

from aiohttp import WSMsgType, web

from ketch.errors import KetchError
from ketch.host.ssh.argv import ssh_argv
from ketch.service import guest as guest_uc
from ketch.service.context import Context
from ketch.sshtarget import SshTarget

log = logging.getLogger("ketchd")

READ = 65536
CONSOLE_TAIL = 64 * 1024
CONSOLE_POLL = 0.25  # seconds between two looks at serial.log
MAX_PENDING = 64  # pty reads queued for the browser before ssh is made to wait
MAX_FRAME = 64 * 1024  # the largest message a browser may send


def set_size(fd: int, columns: int, rows: int) -> None:
    columns, rows = max(1, min(columns, 1000)), max(1, min(rows, 1000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


async def _opened(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_FRAME)
    await ws.prepare(request)
    return ws


async def _refuse(ws: web.WebSocketResponse, exc: KetchError) -> web.WebSocketResponse:
    """The CLI's error text, as the terminal's last output, then close."""
    text = f"\r\nketch: error: {exc.message}\r\n" + (f"ketch: {exc.hint}\r\n" if exc.hint else "")
    await ws.send_bytes(text.encode())
    await ws.close()
    return ws


async def shell(ctx: Context, request: web.Request) -> web.WebSocketResponse:
    """``/ws/shell/{name}``: a login shell in the guest over ketch's ssh."""
    name = request.match_info["name"]
    ws = await _opened(request)
    try:
        t = await guest_uc.ssh_info(ctx, name)
        argv = ssh_argv(
            SshTarget(t.name, t.host, t.port, t.user, t.identity, t.known_hosts), None, tty=True
        )
    except KetchError as exc:
        return await _refuse(ws, exc)
    master, slave = pty.openpty()
    set_size(master, 80, 24)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
    except OSError as exc:
        os.close(master)
        os.close(slave)
        await ws.send_bytes(f"\r\nketch: error: cannot run ssh: {exc}\r\n".encode())
        await ws.close()
        return ws
    os.close(slave)
    try:
        await _relay(ws, master, proc)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGHUP)
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        os.close(master)
        await ws.close()
    return ws


async def _relay(ws: web.WebSocketResponse, master: int, proc: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[bytes] = asyncio.Queue()
    reading = True

    def readable() -> None:
        nonlocal reading
        try:
            data = os.read(master, READ)
        except OSError:  # EIO: ssh has gone, the pty is closed
            data = b""
        out.put_nowait(data)
        if not data or out.qsize() >= MAX_PENDING:
            loop.remove_reader(master)
            reading = False

    loop.add_reader(master, readable)

    async def to_browser() -> None:
        nonlocal reading
        while (data := await out.get()) != b"":
            await ws.send_bytes(data)
            if not reading and out.qsize() < MAX_PENDING // 2:
                reading = True
                loop.add_reader(master, readable)

    async def from_browser() -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                doc = json.loads(msg.data)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            data, size = doc.get("data"), doc.get("resize")
            if isinstance(data, str) and data:
                await loop.run_in_executor(None, _write_all, master, data.encode())
            if isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) for x in size):
                set_size(master, size[0], size[1])

    tasks = [asyncio.create_task(to_browser()), asyncio.create_task(from_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(master)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


async def console(ctx: Context, request: web.Request) -> web.WebSocketResponse:
    """``/ws/console/{name}``: the serial console's output, read-only, followed."""
    name = request.match_info["name"]
    ws = await _opened(request)
    try:
        ctx.store.get(name)
    except KetchError as exc:
        return await _refuse(ws, exc)
    path = ctx.root.instance(name).serial_log

    async def follow() -> None:
        offset = 0
        with contextlib.suppress(FileNotFoundError):
            offset = max(0, path.stat().st_size - CONSOLE_TAIL)
        while not ws.closed:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size < offset:  # a new boot truncated it
                offset = 0
            if size > offset:
                with path.open("rb") as f:
                    f.seek(offset)
                    data = f.read(min(size - offset, READ))
                offset += len(data)
                await ws.send_bytes(data)
                continue
            await asyncio.sleep(CONSOLE_POLL)

    task = asyncio.create_task(follow())
    try:
        async for _ in ws:  # the console takes no input; this waits for the close
            pass
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return ws
