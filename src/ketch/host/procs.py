"""Processes: pid files checked for liveness and for being really ours.

Signals go through a pidfd (:class:`PidFd`, Linux 5.3+): it is opened first,
then the process's cmdline is checked, so it refers to the very process that
was checked.  A signal through it can only reach that process: once it has
exited and been reaped, sending fails with ProcessLookupError, even if the
kernel has since given its pid to another process.  Waiting for the exit polls
the pidfd (readable once the process has exited).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ketch.model import PidStatus


def read_pidfile(path: Path) -> int | None:
    """The pid in a pid file, or None when absent, empty or garbage."""
    try:
        text = path.read_bytes().decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


def write_pidfile(path: Path, pid: int) -> None:
    """Write ``pid`` to ``path`` (0600, never through a symlink planted there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{pid}\n")


def cmdline(pid: int) -> list[str] | None:
    """A live process's argv, or None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None  # zombies and kernel threads have no cmdline
    return [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]


def qemu_processes() -> list[tuple[int, list[str]]]:
    """Every live ``qemu-system-*`` process with its argv (a /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = cmdline(int(entry.name))
        if argv and "qemu-system" in Path(argv[0]).name:
            found.append((int(entry.name), argv))
    return found


def classify(pid: int | None, argv: list[str] | None, ours: bool) -> PidStatus:
    """Pure: what a pid file means, given what /proc said about the pid."""
    if pid is None:
        return PidStatus.NONE
    if argv is None:
        return PidStatus.STALE
    return PidStatus.OURS if ours else PidStatus.FOREIGN


def resident(pid: int) -> int | None:
    """A process's resident memory in bytes (``VmRSS``), None when it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return parse_vmrss(text)


def parse_vmrss(status: str) -> int | None:
    """``VmRSS:   123456 kB`` of /proc/PID/status, in bytes (pure)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def alive(pid: int) -> bool:
    return cmdline(pid) is not None


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after the host's boot), or None if gone.

    With the pid, it names one run of a process: a pid the kernel gives out
    again comes with another start time.
    """
    try:
        return parse_start_time(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError):
        return None


def parse_start_time(stat: str) -> int:
    """Field 22 (``starttime``) of a ``/proc/PID/stat`` line (pure; ValueError if none).

    The command name (field 2, in parentheses) may hold spaces and ``)``: the
    fields are counted after its last ``)``.
    """
    rest = stat[stat.rindex(")") + 1 :].split()
    return int(rest[19])  # fields 3.. follow the name: field 22 is the 20th of them


class PidFd:
    """A pidfd: a handle on one process that a recycled pid cannot redirect.

    Make it with :func:`open_pidfd`; close it (or use it as a context
    manager) when done.
    """

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd

    def send_signal(self, sig: int) -> None:
        """Signal the process; ProcessLookupError once it has exited and been reaped."""
        signal.pidfd_send_signal(self.fd, sig)

    def exited(self) -> bool:
        """Has the process exited (a zombie counts)?  Never blocks."""
        return self.wait(0.0)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit; True once it has."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000 + 0.999))))  # PEP 475: EINTR retried

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PidFd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_pidfd(pid: int, expect: Sequence[str] | None = None) -> PidFd | None:
    """A pidfd on ``pid`` if it is a live process (with argv ``expect``, if given).

    The pidfd is opened before the cmdline is read, so the check is of the
    process the pidfd refers to; a process that exits in between is seen as
    exited.  None when there is no such process, it has exited, or its argv
    is not ``expect``.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    handle = PidFd(pid, fd)
    argv = cmdline(pid)
    if argv is None or (expect is not None and argv != list(expect)) or handle.exited():
        handle.close()
        return None
    return handle


def terminate(pid: int, *, grace: float = 3.0, expect: Sequence[str] | None = None) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; bounded.

    Every signal goes through one pidfd opened (and checked, against
    ``expect`` when given: the argv the caller verified) before the first:
    no signal reaches another process, should the pid be reused meanwhile.
    A pid that is gone, or no longer runs ``expect``, is left alone.
    """
    handle = open_pidfd(pid, expect)
    if handle is None:
        return
    with handle:
        terminate_pidfd(handle, grace=grace)


def kill_now(pid: int, *, expect: Sequence[str] | None = None, wait: float = 1.5) -> bool:
    """SIGKILL through a verified pidfd (as :func:`terminate`), for a process that cannot
    answer (a frozen QEMU: SIGTERM would wait for a SIGCONT); True once it has exited."""
    handle = open_pidfd(pid, expect)
    if handle is None:
        return True
    with handle:
        try:
            handle.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            return True
        return handle.wait(wait)


def terminate_pidfd(handle: PidFd, *, grace: float = 3.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL, all through ``handle``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            handle.send_signal(sig)
        except ProcessLookupError:
            return  # exited and reaped: nothing left to signal
        if handle.wait(wait):
            return


async def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit, without blocking the event
    loop; True once it has (or there is no such process).

    The pidfd becomes readable the moment the process exits, so the caller learns
    of it at once rather than at the next tick of a poll.
    """
    import asyncio

    try:
        handle = PidFd(pid, os.pidfd_open(pid))
    except ProcessLookupError:
        return True
    with handle:
        if handle.exited() or timeout <= 0:
            return handle.exited()
        loop = asyncio.get_running_loop()
        exited: asyncio.Event = asyncio.Event()
        loop.add_reader(handle.fd, exited.set)
        try:
            await asyncio.wait_for(exited.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(handle.fd)
        return True


def remove_quietly(*paths: Path) -> None:
    """Remove files that may or may not exist (idempotent cleanup)."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
