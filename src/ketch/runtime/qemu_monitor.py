"""The QEMU driver's side of the monitor: one client at a time, probes with a deadline, HMP.

QEMU's QMP socket takes one client at a time, so every use here holds the
instance's lock.  A probe that misses its deadline marks the monitor
unresponsive and a background probe keeps trying, so nothing waits on a
frozen monitor twice (``list`` answers ``Unknown`` at once meanwhile).  Port
forwards of user-mode networking are made and read with HMP commands
(``hostfwd_add``, ``info usernet``) through ``human-monitor-command``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from ketch.errors import HostCommandError, KetchError, QMPError, Timeout
from ketch.host import hostfwd, qmp
from ketch.layout import InstanceDir
from ketch.model import InstanceSpec, PidStatus

QMP_PROBE_TIMEOUT = 2.0
HMP_LOCK_TIMEOUT = 3.0  # a forward waits this long for a monitor another operation holds
QMP_RETRY_TIMEOUT = 5.0  # the background probe of a monitor that missed its deadline
QMP_RETRY_PERIOD = 1.0
QUIT_BUDGET = 0.5  # stop --force: how long the monitor gets to take 'quit' before SIGKILL


class Monitors:
    """The monitor half of :class:`~ketch.runtime.qemu_driver.QemuDriver` (a mixin)."""

    def __init__(self) -> None:
        # QEMU's monitor takes one client at a time: serialize our own use.
        self._qmp_locks: dict[Path, asyncio.Lock] = {}
        # Monitors that missed a probe's deadline (why), and the background probes
        # that keep trying them: nothing waits on a frozen monitor twice.
        self._unresponsive: dict[Path, str] = {}
        self._probers: dict[Path, asyncio.Task[None]] = {}

    def _lock(self, idir: InstanceDir) -> asyncio.Lock:
        return self._qmp_locks.setdefault(idir.path, asyncio.Lock())

    def _pid(self, idir: InstanceDir) -> tuple[int | None, PidStatus, list[str] | None, int | None]:
        raise NotImplementedError  # the driver's: whether the pid file names our live QEMU

    async def _probe_once(self, idir: InstanceDir) -> tuple[str | None, str | None]:
        """Ask the monitor, unless it already missed a deadline: then say so at once.

        A probe that times out marks the monitor unresponsive and starts a
        background probe (:meth:`_keep_probing`); until that one gets an
        answer (or the process is gone), every look answers without waiting.
        """
        missed = self._unresponsive.get(idir.path)
        if missed is not None:
            self._start_prober(idir)
            return None, f"{missed}; still probed in the background"
        answer, error, timed_out = await self._probe(idir, QMP_PROBE_TIMEOUT)
        if timed_out:
            self._unresponsive[idir.path] = error or "no reply"
            self._start_prober(idir)
        return answer, error

    def _start_prober(self, idir: InstanceDir) -> None:
        task = self._probers.get(idir.path)
        if task is None or task.done():
            self._probers[idir.path] = asyncio.create_task(self._keep_probing(idir))

    def _forget_unresponsive(self, idir: InstanceDir) -> None:
        self._unresponsive.pop(idir.path, None)
        task = self._probers.pop(idir.path, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _keep_probing(self, idir: InstanceDir) -> None:
        """Probe a monitor that missed its deadline until it answers or its QEMU is gone."""
        while idir.path in self._unresponsive:
            _, status, _, _ = self._pid(idir)
            if status is not PidStatus.OURS:
                break
            answer, _, _ = await self._probe(idir, QMP_RETRY_TIMEOUT)
            if answer is not None:
                break
            await asyncio.sleep(QMP_RETRY_PERIOD)
        self._unresponsive.pop(idir.path, None)
        self._probers.pop(idir.path, None)

    async def _probe(
        self, idir: InstanceDir, timeout: float
    ) -> tuple[str | None, str | None, bool]:
        """(status, why there is none, whether the monitor missed the deadline)."""
        lock = self._lock(idir)
        try:
            await asyncio.wait_for(lock.acquire(), timeout)
        except TimeoutError:
            return None, "the monitor is busy with another operation", False
        try:
            async with qmp.connect(idir.qmp_socket, timeout=timeout) as mon:
                return await mon.status(timeout=timeout), None, False
        except Timeout as exc:
            return None, exc.message, True
        except KetchError as exc:
            return None, exc.message, False
        finally:
            lock.release()

    async def _try_quit(self, idir: InstanceDir) -> str:
        """Send 'quit' within QUIT_BUDGET: "sent", "busy" (another holds the monitor),
        "frozen" (it did not greet in time) or "failed" (no socket, refused)."""
        lock = self._lock(idir)
        try:
            await asyncio.wait_for(lock.acquire(), QUIT_BUDGET)
        except TimeoutError:
            return "busy"
        try:
            async with qmp.connect(idir.qmp_socket, timeout=QUIT_BUDGET) as mon:
                with contextlib.suppress(QMPError):  # quit may close the socket before replying
                    await mon.execute("quit", timeout=2.0)
            return "sent"
        except Timeout:
            return "frozen"
        except KetchError:
            return "failed"
        finally:
            lock.release()

    # -- host forwards (user networking), through HMP --------------------------------

    async def _hmp(self, idir: InstanceDir, command: str) -> str:
        lock = self._lock(idir)
        try:
            await asyncio.wait_for(lock.acquire(), HMP_LOCK_TIMEOUT)
        except TimeoutError as exc:
            raise QMPError("the monitor is busy with another operation") from exc
        try:
            async with qmp.connect(idir.qmp_socket, timeout=QMP_PROBE_TIMEOUT) as mon:
                reply = await mon.execute(
                    "human-monitor-command", {"command-line": command}, timeout=5.0
                )
                return str(reply)
        finally:
            lock.release()

    async def forwards(self, spec: InstanceSpec, idir: InstanceDir) -> list[hostfwd.HostFwd]:
        return hostfwd.parse_usernet(await self._hmp(idir, "info usernet"))

    async def add_forward(
        self, spec: InstanceSpec, idir: InstanceDir, fwd: hostfwd.HostFwd
    ) -> None:
        command = hostfwd.add_command(fwd)
        error = hostfwd.add_error(await self._hmp(idir, command))
        if error is not None:
            raise HostCommandError(["hmp", *command.split()], None, error)

    async def remove_forward(
        self, spec: InstanceSpec, idir: InstanceDir, fwd: hostfwd.HostFwd
    ) -> bool:
        return hostfwd.removed(await self._hmp(idir, hostfwd.remove_command(fwd)))
