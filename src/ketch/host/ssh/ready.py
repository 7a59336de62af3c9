"""Talking to a guest over ``ssh``: running a command and capturing its output,
and waiting until the guest is ready (SSH banner, then cloud-init finished).

``asyncio`` and :mod:`ketch.host.run` are imported inside the functions: this
package sits on the CLI hot path."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from ketch.errors import GuestError, HostKeyMismatch, Timeout
from ketch.host.ssh.argv import remote_command, ssh_argv
from ketch.host.ssh.stderr import connection_failure, is_host_key_failure, ssh_failure_error
from ketch.sshtarget import SshTarget

if TYPE_CHECKING:
    from ketch.host.run import Completed
    from ketch.progress import Reporter

#: The file cloud-init writes when the boot (all its stages) has finished.
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"


async def run_in_guest(
    target: SshTarget,
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = 60.0,
    check: bool = False,
) -> Completed:
    """Run ``argv`` in the guest (no tty, batch mode) and capture its output.

    The returned :class:`~ketch.host.run.Completed` carries the remote exit
    code (255 also when ssh itself failed).  A host-key failure raises
    :class:`HostKeyMismatch`; with ``check`` any other failure raises
    :class:`GuestError`.  On timeout ssh is killed and ``Timeout`` raised.
    """
    from ketch.host.run import run

    done = await run(
        ssh_argv(target, remote_command(argv), tty=False, batch=True),
        timeout=timeout,
        check=False,
        input=input,
    )
    if is_host_key_failure(done.returncode, done.stderr):
        raise HostKeyMismatch(target.name)
    if check and done.returncode != 0:
        failure = connection_failure(done.returncode, done.stderr)
        if failure is not None:
            raise ssh_failure_error(target, failure)
        detail = done.stderr.decode("utf-8", "replace").strip()
        raise GuestError(
            f"{shlex.join(argv)} exited {done.returncode} in {target.name}"
            + (f": {detail}" if detail else "")
        )
    return done


BANNER_TRY = 0.5  # seconds the first banner probe may wait (a hung try costs this much)
#: ... doubled after each try that got a connection but no banner, up to this: a guest
#: too slow (a loaded host, TCG) to send its banner in 0.5 s is still found.
BANNER_TRY_MAX = 4.0


async def read_banner(host: str, port: int, *, timeout: float) -> str:
    """Connect to ``host:port`` and return the SSH identification line sent.

    Raises OSError (refused, reset, closed without banner) or TimeoutError.
    Lines before the ``SSH-`` line are allowed by RFC 4253 and skipped.
    """
    import asyncio

    async def banner() -> str:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(20):
                line = await reader.readline()
                if not line:
                    raise ConnectionResetError("connection closed before an SSH banner")
                if line.startswith(b"SSH-"):
                    return line.decode("ascii", "replace").strip()
            raise ConnectionError("no SSH banner in the first lines")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(banner(), timeout)


async def wait_ready(
    target: SshTarget,
    *,
    timeout: float,
    reporter: Reporter,
    abort: Callable[[], Awaitable[str | None]] | None = None,
    connect: Callable[[float], Awaitable[SshTarget | Completed]] | None = None,
    finished: bool = False,
) -> None:
    """Wait until the guest answers SSH with the pinned key and cloud-init is done.

    1. The forwarded port must send an ``SSH-`` banner (QEMU user networking
       accepts TCP on the host port before anything listens in the guest).
    2. ``test -f /var/lib/cloud/instance/boot-finished`` must succeed over ssh.

    ``finished``: the guest already said its boot finished (a warm clone's
    agent says ``done`` after writing ``boot-finished``) or a saved state that
    had; then, given ``connect``, the multiplexed connection made with the
    pinned key is the only step: neither step 1's banner probe nor step 2's
    probe is sent.

    ``connect`` (given the seconds left) makes the instance's multiplexed
    connection before each probe (:mod:`.master`): it returns the target to
    probe through (its ``control_path`` set, or not when there can be no
    master), or how making the master failed, which counts as that probe's
    answer.  The probes then cost a channel each, not a handshake.

    Raises :class:`Timeout` (saying what was last seen) when ``timeout``
    seconds pass, and :class:`HostKeyMismatch` at once on a host-key failure.
    ``abort``, called about once a second, returns a reason to stop waiting
    (QEMU exited, the guest is paused): then :class:`GuestError` is raised.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "nothing yet"
    checked = loop.time()

    def remaining() -> float:
        return deadline - loop.time()

    async def check() -> None:
        nonlocal checked
        if abort is None or loop.time() - checked < 1.0:
            return
        checked = loop.time()
        reason = await abort()
        if reason:
            raise GuestError(
                f'"{target.name}" will not become ready: {reason}',
                hint=f"see 'ketch info {target.name}' and the instance's serial.log",
            )

    reporter.step(f"Waiting for SSH on {target.host}:{target.port}")
    banner_try = BANNER_TRY
    # A guest that said it is ready (a resumed one, a warm clone) already listens: the
    # banner probe would only cost it one more connection before the master's.
    while not (finished and connect is not None):
        left = remaining()
        if left <= 0:
            raise _not_ready(target, timeout, last)
        await check()
        try:
            # Short tries: a connection made before the guest's network is up
            # is accepted by QEMU's user networking but never answered.
            banner = await read_banner(target.host, target.port, timeout=min(banner_try, left))
            break
        except TimeoutError:
            last = "the SSH port accepted a connection but sent no banner"
            banner_try = min(banner_try * 2, BANNER_TRY_MAX)
        except ConnectionRefusedError:
            last = f"connection to {target.host}:{target.port} refused"
        except OSError as exc:
            last = f"{target.host}:{target.port}: {exc.strerror or exc}"
        await asyncio.sleep(min(0.1, max(remaining(), 0)))

    if not finished:
        reporter.step(f"Waiting for cloud-init to finish ({banner})")
    from ketch.host.run import run

    probe = remote_command(["test", "-f", BOOT_FINISHED])
    while True:
        left = remaining()
        if left <= 0:
            raise _not_ready(target, timeout, last)
        await check()
        try:
            via: SshTarget | Completed = target
            if connect is not None:
                via = await connect(max(min(30.0, left), 1.0))
            if isinstance(via, SshTarget) and finished and via.control_path:
                return  # the master is up with the pinned key: nothing left to ask
            if isinstance(via, SshTarget):
                argv = ssh_argv(via, probe, tty=False, batch=True)
                done = await run(argv, timeout=max(min(30.0, left), 1.0), check=False)
            else:
                done = via
        except Timeout:
            last = "ssh did not answer in time"
        else:
            if done.returncode == 0:
                return
            if is_host_key_failure(done.returncode, done.stderr):
                raise HostKeyMismatch(target.name)
            err = done.stderr.decode("utf-8", "replace").strip().splitlines()
            if done.returncode == 1 and not err:
                last = f"{BOOT_FINISHED} not there yet (cloud-init still running)"
            else:
                last = f"ssh exited {done.returncode}" + (f": {err[-1]}" if err else "")
        await asyncio.sleep(min(0.25, max(remaining(), 0)))


def _not_ready(target: SshTarget, timeout: float, last: str) -> Timeout:
    return Timeout(
        f'"{target.name}" was not ready within {timeout:g} s; last seen: {last}',
        hint=f"the guest's console log may tell why (serial.log in the instance directory "
        f"of {target.name})",
    )
