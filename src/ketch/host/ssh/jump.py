"""The guest's SSH port of an instance on a remote libvirt host, brought to this machine.

An instance on a ``qemu+ssh://`` host runs there: QEMU's user networking forwards the
guest's port 22 from the *host's* loopback (``127.0.0.1:host_ssh_port``), which nothing
on ketchd's machine can reach.  ketchd holds one ``ssh -N -L`` per such instance (the
*jump*): through the host's own SSH (the wrapper of :mod:`ketch.host.libvirt_ssh`, with
the key and pinned known_hosts ``ketch host add`` was given), a listener on this
machine's ``127.0.0.1:ssh_port`` whose every connection is a ``direct-tcpip`` channel to
the guest's port on the host: what ``ProxyJump`` does, held once per instance instead of
per session.  So every client of the instance (``exec``, ``shell``, ``transfer``, the
readiness wait, the master, a remote client's TLS tunnel, the web terminal) reaches it
at ``127.0.0.1:ssh_port`` as it reaches a local one, with the guest's host key pinned
end to end: the host's sshd relays bytes it cannot read.

The jump is detached (its own session) with its pid in the instance directory
(``JUMP_PID``), so it outlives ketchd and a new one finds it again: :func:`running`
checks the pid file's process through ``/proc/PID/cmdline`` against the argv it would
start (:func:`jump_argv`, pure) before it counts, and :func:`end` signals it through a
verified pidfd only.  ``ExitOnForwardFailure`` makes an ssh that cannot listen exit
instead of idling; :func:`start` waits until the listener accepts, or says why not (the
end of the jump's stderr, ``JUMP_LOG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import HostUnreachable
from ketch.host import procs, tcp
from ketch.host.ssh.argv import ssh_option

#: Seconds the jump may take to connect, authenticate and listen.
START_TIMEOUT = 30.0
#: Seconds between two looks at the listener while the jump starts.
POLL = 0.05
#: Seconds one look at the listener may take (loopback: it answers at once or refuses).
LISTEN_PROBE = 1.0
#: How much of the jump's log a failure report reads (its end).
LOG_KEEP = 2048


@dataclass(frozen=True)
class Via:
    """The remote host's SSH, as the jump reaches it: its wrapper and destination."""

    wrapper: Path  # the host's ``ssh`` wrapper (``exec ssh -F <its ssh_config> "$@"``)
    host: str
    user: str | None = None
    port: int | None = None


def jump_argv(via: Via, local_port: int, remote_port: int) -> list[str]:
    """The jump's argv (pure): listen on 127.0.0.1:``local_port``, every connection a
    channel to 127.0.0.1:``remote_port`` on the host."""
    if via.host.startswith("-") or not via.host:
        raise ValueError(f"not a host: {via.host!r}")
    for port in (local_port, remote_port):
        if not 0 < port < 65536:
            raise ValueError(f"not a port number: {port}")
    argv = [str(via.wrapper), "-N", "-T"]
    for key, value in (
        ("ExitOnForwardFailure", "yes"),
        ("ControlMaster", "no"),
        ("ControlPath", "none"),
        ("LogLevel", "ERROR"),
    ):
        argv += ["-o", ssh_option(key, value)]
    argv += ["-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}"]
    if via.port is not None:
        argv += ["-p", str(via.port)]
    if via.user:
        argv += ["-l", via.user]
    return [*argv, "--", via.host]


def is_jump(cmdline: list[str] | None, argv: list[str]) -> bool:
    """Is ``cmdline`` (a process's, from /proc) the jump ``argv`` starts?  The wrapper
    ``exec``s ssh with its ssh_config first, so the options after the wrapper must end
    the process's argv and the program must be ssh."""
    tail = argv[1:]
    return (
        cmdline is not None
        and len(cmdline) > len(tail)
        and os.path.basename(cmdline[0]) == "ssh"
        and cmdline[-len(tail) :] == tail
    )


def running(pidfile: Path, argv: list[str]) -> int | None:
    """The pid of the jump ``argv`` named by ``pidfile`` while it runs, else None."""
    pid = procs.read_pidfile(pidfile)
    if pid is None or not is_jump(procs.cmdline(pid), argv):
        return None
    return pid


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_KEEP))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


async def start(
    argv: list[str], pidfile: Path, log: Path, port: int, *, timeout: float = START_TIMEOUT
) -> int:
    """Start the jump ``argv`` (listening on ``port``), detached; its pid once it listens.

    Raises :class:`~ketch.errors.HostUnreachable` with the end of its stderr when it
    exits first, or is not listening within ``timeout`` (it is ended then).
    """
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fd,
            start_new_session=True,  # outlives ketchd; Ctrl-C of a foreground one misses it
        )  # fmt: skip
    except OSError as exc:
        raise HostUnreachable(f"cannot run ssh for the guest's port: {exc}") from exc
    finally:
        os.close(fd)
    procs.write_pidfile(pidfile, proc.pid)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.returncode is None and loop.time() < deadline:
        if await tcp.reachable("127.0.0.1", port, LISTEN_PROBE):
            return proc.pid
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), POLL)
    why = "it exited" if proc.returncode is not None else f"not listening within {timeout:g} s"
    await end(pidfile, argv)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
    said = _tail(log)
    raise HostUnreachable(
        f"the SSH relay to the guest's port on the host failed ({why})"
        + (f": {said}" if said else ""),
        hint="check the host answers: 'ketch host list'",
    )


async def end(pidfile: Path, argv: list[str] | None = None) -> None:
    """End the jump named by ``pidfile`` (only a jump: ``argv``'s when given, else any
    ssh holding a ``-L`` forward), remove the pid file; never raises."""
    pid = procs.read_pidfile(pidfile)
    if pid is not None:
        argv_now = procs.cmdline(pid)
        ours = is_jump(argv_now, argv) if argv is not None else _any_jump(argv_now)
        if ours:
            await asyncio.to_thread(procs.terminate, pid, grace=2.0, expect=argv_now)
    procs.remove_quietly(pidfile)


def _any_jump(cmdline: list[str] | None) -> bool:
    return (
        cmdline is not None
        and os.path.basename(cmdline[0]) == "ssh"
        and "-N" in cmdline
        and "-L" in cmdline
    )
