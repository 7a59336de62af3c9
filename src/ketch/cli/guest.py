"""Client-side guest access: ``ketch exec`` and ``ketch shell``, and how ssh is run.

The CLI asks the daemon for an instance's :class:`~ketch.sshtarget.SshTarget` and
calls these functions, which run the system ``ssh`` (see
:mod:`ketch.host.ssh`).  This module is on the CLI hot path: at import time
it loads only the standard library's light modules and ketch's ``SshTarget``,
errors and ssh argv builders (not :mod:`ketch.model`).  ``ketch transfer`` is
:mod:`ketch.cli.transfer`, which runs ssh through :func:`spawn` here.
"""

from __future__ import annotations

import os
import posixpath
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ketch.errors import GuestError, HostKeyMismatch, InvalidArgument
from ketch.hints import TYPE_CHECKING
from ketch.host.ssh import StderrWatch, remote_command, ssh_argv, ssh_failure_error
from ketch.sshtarget import SshTarget

if TYPE_CHECKING:
    from typing import IO

CHUNK = 1 << 16


def exec_command(target: SshTarget, argv: list[str], *, workdir: str | None) -> int:
    """Run ``argv`` in the guest (in ``workdir`` when given); return its exit code.

    Standard input and output are handed to ssh as they are (binary safe,
    pipes work); a tty is requested only when both are terminals.  stderr is
    forwarded while ssh's own failure messages are watched for.
    """
    tty = _isatty(0) and _isatty(1)
    remote = guest_command(argv, workdir)
    return _run_attached(target, ssh_argv(target, remote, tty=tty, batch=True))


# What ``sudo sh -c`` runs for a command starting with sudo: ``cd "$1"``, then the command.
_SUDO_CD = 'cd "$1" && shift && exec "$@"'


def guest_command(argv: list[str], workdir: str | None) -> str:
    """The shell string ``exec`` sends: ``cd DIR && exec ARGV``, every word quoted.

    A directory the guest does not have makes the guest's ``cd`` fail and say
    so; the command is not run (as Multipass, whose exec sends ``cd DIR &&
    ARGV``).  A command starting with ``sudo`` changes directory as root
    (``sudo sh -c 'cd "$1" && ...' sh DIR sudo ...``), so a directory the
    default user may not enter works too: Multipass's exec.cpp does the same
    ("it might happen that the default user does not have access to the
    folder"), with the directory passed as an argument here, never pasted
    into the script.
    """
    if workdir is not None and argv and argv[0] == "sudo":
        if not workdir:
            raise InvalidArgument("the working directory is empty")
        return remote_command(["sudo", "sh", "-c", _SUDO_CD, "sh", workdir, *argv])
    return remote_command(argv, workdir=workdir)


def map_workdir(cwd: str, mounts: Iterable[tuple[str, str]]) -> str | None:
    """The guest directory that host directory ``cwd`` is in through a mount; None if none.

    ``mounts`` are (SOURCE, TARGET) pairs.  Paths are compared by components
    (``/a/bc`` is not inside ``/a/b``); trailing and repeated slashes and
    ``.`` do not matter.  Among nested mounts the longest SOURCE wins (the
    first of equal ones); ``cwd`` equal to SOURCE maps to TARGET itself.
    Pure: the caller resolves ``cwd`` (:func:`mapped_workdir`).
    """
    here = _components(cwd)
    best: str | None = None
    depth = -1
    for source, target in mounts:
        src = _components(source)
        if len(src) > depth and here[: len(src)] == src:
            best = posixpath.join(posixpath.normpath(target), *here[len(src) :])
            depth = len(src)
    return best


def _components(path: str) -> list[str]:
    return [p for p in posixpath.normpath(path).split("/") if p]


def mapped_workdir(mounts: Iterable[tuple[str, str]]) -> str | None:
    """:func:`map_workdir` for this process's directory, symbolic links resolved on both sides.

    The working directory is the physical one (as Multipass's
    ``QDir::current().canonicalPath()``), so a directory reached through a
    symbolic link maps by where it really is; a SOURCE is resolved as well.
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed
        return None
    return map_workdir(cwd, [(os.path.realpath(s), t) for s, t in mounts])


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
    "guest_command",
    "interrupts_to_child",
    "map_workdir",
    "mapped_workdir",
    "read_chunk",
    "shell",
    "spawn",
    "write_stderr",
]
