"""A long-lived ``ssh`` session whose output is read line by line, bounded.

The forward watcher (``service/forward_watch.py``) keeps one per running
instance: the guest's output arrives as it is printed, with one TCP
connection and one ``sshd`` session for the instance's whole run instead of
a new connection (key exchange, authentication, a login shell) every half
second.  The guest is not trusted: a line is cut at ``max_line`` bytes (the
rest of it dropped and the line marked over-long by its length), reads are
bounded in bytes, and stderr is read into a small bounded buffer only.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncGenerator

from ketch.errors import HostCommandError, HostKeyMismatch
from ketch.host.ssh.argv import ssh_argv
from ketch.host.ssh.stderr import is_host_key_failure
from ketch.model import SshTarget

CHUNK = 4096
STDERR_KEEP = 4096


async def lines(target: SshTarget, script: str, *, max_line: int) -> AsyncGenerator[bytes, None]:
    """Run the shell ``script`` in the guest and yield its output lines (no newline).

    A line longer than ``max_line`` is yielded as ``max_line + 1`` bytes (its
    start), so the caller can tell.  Ends when the session does; the ``ssh``
    process is killed when the caller stops iterating or is cancelled.
    Raises HostKeyMismatch when the guest's host key is not the pinned one.
    """
    argv = ssh_argv(target, script, tty=False, batch=True)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise HostCommandError(argv, None, str(exc)) from exc
    assert proc.stdout is not None and proc.stderr is not None
    err = bytearray()

    async def drain_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(CHUNK):
            if len(err) < STDERR_KEEP:
                err.extend(chunk[: STDERR_KEEP - len(err)])

    errors = asyncio.create_task(drain_stderr())
    try:
        pending = bytearray()
        overlong = False
        while chunk := await proc.stdout.read(CHUNK):
            pending.extend(chunk)
            while (cut := pending.find(b"\n")) >= 0:
                line = bytes(pending[:cut])
                del pending[: cut + 1]
                if overlong:
                    overlong = False
                    continue
                yield line if len(line) <= max_line else line[: max_line + 1]
            if len(pending) > max_line:
                if not overlong:
                    yield bytes(pending[: max_line + 1])
                overlong = True
                pending.clear()
        await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(errors, 1.0)
        if is_host_key_failure(proc.returncode or 0, bytes(err)):
            raise HostKeyMismatch(target.name)
    finally:
        errors.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5.0)
