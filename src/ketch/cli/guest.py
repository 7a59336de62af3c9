"""Client-side guest access: ``ketch exec`` and ``ketch shell``, and how ssh is run.

The CLI asks the daemon for an instance's :class:`~ketch.model.SshTarget` and
calls these functions, which run the system ``ssh`` (see
:mod:`ketch.host.ssh`).  This module is on the CLI hot path: at import time
it loads only the standard library's light modules and ketch's model, errors
and ssh argv builders.  ``ketch transfer`` is :mod:`ketch.cli.transfer`,
which runs ssh through :func:`spawn` here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from ketch.errors import GuestError, HostKeyMismatch
from ketch.host.ssh import StderrWatch, remote_command, ssh_argv, ssh_failure_error
from ketch.model import SshTarget

CHUNK = 1 << 16


def exec_command(target: SshTarget, argv: list[str], *, workdir: str | None) -> int:
    """Run ``argv`` in the guest; return its exit code.

    Standard input and output are handed to ssh as they are (binary safe,
    pipes work); a tty is requested only when both are terminals.  stderr is
    forwarded while ssh's own failure messages are watched for.
    """
    tty = _isatty(0) and _isatty(1)
    remote = remote_command(argv, workdir=workdir)
    return _run_attached(target, ssh_argv(target, remote, tty=tty, batch=True))


def shell(target: SshTarget) -> int:
    """An interactive login shell in the guest (``ssh -t``); its exit code.

    ssh passes window-size changes on by itself.
    """
    return _run_attached(target, ssh_argv(target, None, tty=True, batch=False))


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _run_attached(target: SshTarget, argv: list[str]) -> int:
    proc = spawn(argv, stdin=None, stdout=None)
    assert proc.stderr is not None
    watch = StderrWatch()
    said = False
    with interrupts_to_child():
        fd = proc.stderr.fileno()
        while chunk := read_chunk(fd):
            out = watch.feed(chunk)
            said = said or bool(out)
            write_stderr(out)
        returncode = proc.wait()
    proc.stderr.close()
    out, failure, host_key = watch.finish(returncode)
    write_stderr(out)
    if host_key:
        raise HostKeyMismatch(target.name)
    if failure is not None:
        raise ssh_failure_error(target, failure)
    if returncode == 255 and not (said or out):
        # ssh logs "server not responding" only at INFO level; say it ourselves.
        write_stderr(
            f'ketch: the connection to "{target.name}" ended with status 255 and no '
            f"message: the guest may have stopped answering (see 'ketch info "
            f"{target.name}')\n".encode()
        )
    return returncode if returncode >= 0 else 128 - returncode


def read_chunk(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, CHUNK)
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue


def write_stderr(data: bytes) -> None:
    if not data:
        return
    try:
        sys.stderr.flush()
        view = memoryview(data)
        while view:
            n = os.write(2, view)
            view = view[n:]
    except OSError:
        pass  # stderr closed: nothing sensible to do


@contextmanager
def interrupts_to_child() -> Iterator[None]:
    """Ctrl-C reaches ssh (same process group); ketch waits for it to end."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def spawn(
    argv: list[str], *, stdin: int | IO[bytes] | None, stdout: int | IO[bytes] | None
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    except OSError as exc:
        raise GuestError(
            f"cannot run ssh: {exc.strerror or exc}", hint="install the OpenSSH client"
        ) from exc


__all__ = [
    "CHUNK",
    "exec_command",
    "interrupts_to_child",
    "read_chunk",
    "shell",
    "spawn",
    "write_stderr",
]
