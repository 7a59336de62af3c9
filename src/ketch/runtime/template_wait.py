"""Warm launch, QEMU's side: waiting on the guest agent's port and on QMP's migration.

The waits :mod:`ketch.runtime.template` makes while it saves a template and
loads a clone: a line from the agent (``template-ready``, ``done``; its
``warn`` lines collected), its socket to appear, a migration to end either way.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ketch.errors import KetchError, Timeout
from ketch.host import qmp
from ketch.runtime import warm_guest


class TemplateError(KetchError):
    """A template could not be made or could not be loaded (a clone falls back to cold)."""


async def agent_line(reader: asyncio.StreamReader, want: str, *, timeout: float) -> list[str]:
    """Read the agent's lines until ``want``; returns the warnings said on the way."""
    warnings: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise Timeout(f"the guest agent did not say '{want}' within {timeout:g} s")
        try:
            line = await asyncio.wait_for(reader.readline(), left)
        except TimeoutError as exc:
            raise Timeout(f"the guest agent did not say '{want}' within {timeout:g} s") from exc
        if not line:
            raise TemplateError("the guest agent's port closed (QEMU ended?)")
        word, rest = warm_guest.parse_reply(line)
        if word == want:
            return warnings
        if word == "warn":
            warnings.append(rest)


async def connect_agent(
    socket: Path, *, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await asyncio.open_unix_connection(str(socket))
        except OSError as exc:
            if loop.time() > deadline:
                raise TemplateError(f"cannot reach the guest agent's socket: {exc}") from exc
            await asyncio.sleep(0.02)


async def migration_done(mon: qmp.Monitor, *, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await mon.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise TemplateError(f"migration {status}: {info.get('error-desc', 'no reason given')}")
        if loop.time() > deadline:
            raise Timeout(f"migration not done within {timeout:g} s")
        await asyncio.sleep(0.01)


async def incoming_done(mon: qmp.Monitor, *, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await mon.status()
        if status not in ("inmigrate",):
            if status in ("paused", "prelaunch", "running"):
                info = await mon.execute("query-migrate")
                if info.get("status") in (None, "completed"):
                    return
                if info.get("status") == "failed":
                    raise TemplateError(
                        f"loading the state failed: {info.get('error-desc', 'no reason given')}"
                    )
            elif status in ("shutdown", "internal-error", "guest-panicked"):
                raise TemplateError(f"the clone's QEMU is '{status}' after loading")
        if loop.time() > deadline:
            raise Timeout(f"loading the template's state took over {timeout:g} s")
        await asyncio.sleep(0.005)
