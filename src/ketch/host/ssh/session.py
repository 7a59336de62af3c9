"""A long-lived ``ssh`` session whose output is read line by line, bounded.

The forward watcher (``service/forward_watch.py``) keeps one per running
instance: the guest's output arrives as it is printed, with one TCP
connection and one ``sshd`` session for the instance's whole run instead of
a new connection (key exchange, authentication, a login shell) every half
second.  The guest is not trusted: a line is cut at ``max_line`` bytes (the
rest of it dropped and the line marked over-long by its length), reads are
bounded in bytes, and stderr is read into a small bounded buffer only.  The
session ends when its ``ssh`` does, even if another process (the instance's
master) still holds the pipe (:func:`until_exit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncGenerator

from ketch.errors import HostCommandError, HostKeyMismatch
from ketch.host.run import exited
from ketch.host.ssh.argv import ssh_argv
from ketch.host.ssh.stderr import is_host_key_failure
from ketch.sshtarget import SshTarget

CHUNK = 4096
STDERR_KEEP = 4096
DRAIN = 1.0  # seconds the output is still read after ssh ended (see until_exit)


async def until_exit(
    proc: asyncio.subprocess.Process, stream: asyncio.StreamReader, *, drain: float = DRAIN
) -> AsyncGenerator[bytes, None]:
    """``stream``'s chunks until end of file, or until ``drain`` seconds after ``proc`` ended.

    The end of the program is the end of the session, whoever still holds the
    pipe: an ssh that rides on a master hands its pipes to the master, and when
    it is killed while its session is being set up the master keeps them open,
    writing nothing, until the master itself ends.  Waiting for end of file then
    waits for ever.
    """
    loop = asyncio.get_running_loop()
    ended = asyncio.ensure_future(exited(proc))
    until: float | None = None  # once the program has ended: the drain's deadline
    read: asyncio.Future[bytes] | None = None
    try:
        while True:
            read = asyncio.ensure_future(stream.read(CHUNK))
            if until is None:
                await asyncio.wait({read, ended}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    until = loop.time() + drain
            if until is not None and not read.done():
                try:
                    await asyncio.wait_for(read, max(0.0, until - loop.time()))
                except TimeoutError:
                    return  # (wait_for cancelled the read)
            chunk = read.result()
            if not chunk:
                return
            yield chunk
    finally:
        ended.cancel()
        if read is not None:
            read.cancel()


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
        chunks = until_exit(proc, proc.stdout)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
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
        await exited(proc)
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
                await asyncio.wait_for(exited(proc), 5.0)
