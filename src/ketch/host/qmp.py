"""QMP through the ``qemu.qmp`` library: short connections with deadlines.

QEMU's QMP socket serves one client at a time, so ketch connects for each
exchange and disconnects at once; every call has a timeout, and library
errors become :class:`ketch.errors.QMPError` here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ketch.errors import QMPError, Timeout


class Monitor:
    """One connected QMP session."""

    def __init__(self, client: Any, socket: Path) -> None:
        self._client = client
        self.socket = socket

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 10.0
    ) -> Any:
        from qemu.qmp import ExecuteError
        from qemu.qmp import QMPError as LibError

        try:
            return await asyncio.wait_for(self._client.execute(command, arguments), timeout)
        except TimeoutError as exc:
            raise Timeout(f"QMP {command} did not answer within {timeout:g} s") from exc
        except ExecuteError as exc:
            raise QMPError(f"QMP {command} failed: {exc}") from exc
        except (LibError, OSError, EOFError) as exc:
            raise QMPError(f"QMP {command} failed: {exc or type(exc).__name__}") from exc

    async def status(self, *, timeout: float = 5.0) -> str:
        """``query-status``'s status: running, paused, prelaunch, shutdown ..."""
        reply = await self.execute("query-status", timeout=timeout)
        return str(reply["status"])

    async def run_job(
        self, command: str, arguments: dict[str, Any], *, timeout: float, poll: float = 0.02
    ) -> None:
        """Run a job command (snapshot-save, snapshot-delete) to its end."""
        job_id = str(arguments["job-id"])
        await self.execute(command, arguments)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            jobs = await self.execute("query-jobs")
            job = next((j for j in jobs if j.get("id") == job_id), None)
            if job is None:
                return
            if job.get("status") == "concluded":
                await self.execute("job-dismiss", {"id": job_id})
                if job.get("error"):
                    raise QMPError(f"{command} failed: {job['error']}")
                return
            if loop.time() > deadline:
                raise Timeout(f"{command} did not finish within {timeout:g} s")
            await asyncio.sleep(poll)


@asynccontextmanager
async def connect(socket: Path, *, timeout: float = 3.0) -> AsyncIterator[Monitor]:
    """Connect to a QMP socket, negotiate, and disconnect on exit."""
    from qemu.qmp import QMPClient
    from qemu.qmp import QMPError as LibError

    client = QMPClient("ketch")
    try:
        await asyncio.wait_for(client.connect(str(socket)), timeout)
    except TimeoutError as exc:
        await _quiet_disconnect(client)
        raise Timeout(f"QMP socket {socket} did not answer within {timeout:g} s") from exc
    except (LibError, OSError) as exc:
        await _quiet_disconnect(client)
        raise QMPError(f"cannot connect to QMP socket {socket}: {exc}") from exc
    try:
        yield Monitor(client, socket)
    finally:
        await _quiet_disconnect(client)


async def _quiet_disconnect(client: Any) -> None:
    # Best-effort cleanup: a dead QEMU makes disconnect fail in many ways.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 3.0)
