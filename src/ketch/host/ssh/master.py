"""One multiplexed SSH connection per running instance: an OpenSSH ``ControlMaster``.

ketchd starts the master (:func:`start`) once the guest answers SSH, as a
child of its own (``ssh -N`` with ``ControlMaster=yes``, ``ControlPersist=no``:
the process is the connection, ketchd ends it, nothing detaches by itself),
and ends it with the instance (:func:`stop`).  Every other session of the
instance (``exec``, ``shell``, ``transfer``, the readiness probe, the forward
watcher) runs ``ssh`` with ``ControlMaster=no`` and ``ControlPath`` set: a
new channel on the master's connection, no TCP connect, key exchange or
authentication.  When the socket does not answer, ``ssh`` connects directly.

Who may use the socket:

* it lives in the instance directory, which only the storage root's owner can
  enter (the root is 0700, checked by ``daemon/trust.py``), and ``ssh``
  creates it 0600 (umask 0177 around ``bind``);
* the master itself accepts a client only of its own uid (or root):
  ``getpeereid`` in OpenSSH's ``mux.c``;
* ketchd hands the path out only while the very socket it saw its master make
  is there (same device and inode, a socket, owned by this user, mode 0600:
  :meth:`Master.live`); a stale socket (the master killed) or one planted at
  the path is never handed out, and the next start removes it;
* the CLI checks the path again before it uses it (:func:`usable_control`).

The socket's path must fit in ``sun_path`` together with the random suffix
``ssh`` binds it under before linking it into place (:func:`fits`); a storage
root too deep for that gets no master and every session connects directly.

Imports at module level are the light standard library only: the CLI reaches
:func:`usable_control` on the hot path.
"""

from __future__ import annotations

import os
import stat

from ketch.hints import TYPE_CHECKING
from ketch.host.ssh.argv import CONNECT_TIMEOUT, SSH, ssh_argv, ssh_option

if TYPE_CHECKING:
    import asyncio
    from pathlib import Path

    from ketch.host.procs import PidFd
    from ketch.host.run import Completed
    from ketch.sshtarget import SshTarget

#: ``sun_path`` holds 108 bytes with the terminating NUL.
SUN_PATH_MAX = 107
#: ssh binds ``PATH.`` + 16 random characters, then links that to PATH.
TEMP_SUFFIX = 17
#: Seconds a master may take to connect and authenticate before it is given up.
START_TIMEOUT = CONNECT_TIMEOUT + 20.0
#: How much of the master's log a failure report reads (its end).
LOG_KEEP = 4096
#: Seconds between two looks for the socket while the master starts.
POLL = 0.01


def fits(path: str | Path) -> bool:
    """Can ssh bind a control socket at ``path`` (with its temporary suffix)?"""
    return len(os.fsencode(str(path))) + TEMP_SUFFIX <= SUN_PATH_MAX


def socket_stat(path: str | Path) -> os.stat_result | None:
    """``lstat`` of ``path`` if it is a socket of this user, mode 0600 or stricter; else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        return None
    if st.st_mode & 0o077:
        return None
    return st


def usable_control(path: str) -> str:
    """``path`` if a client may use it as its ControlPath now, else "" (connect directly).

    The CLI's check of what the daemon handed out: a socket, owned by this
    user, no access for group or others, in a directory of this user that no
    one else may write to.
    """
    if not path or not os.path.isabs(path) or socket_stat(path) is None:
        return ""
    try:
        parent = os.lstat(os.path.dirname(path))
    except OSError:
        return ""
    if not stat.S_ISDIR(parent.st_mode) or parent.st_uid != os.geteuid():
        return ""
    if parent.st_mode & 0o022:
        return ""
    return path


def master_argv(target: SshTarget, control: str) -> list[str]:
    """The argv of the master listening on ``control`` (pure)."""
    return ssh_argv(target.replace(control_path=control), None, tty=False, master=True)


def is_master_argv(argv: list[str] | None, control: str) -> bool:
    """Is ``argv`` (a live process's) an ssh master listening on ``control``?  (Pure.)"""
    if not argv or os.path.basename(argv[0]) != SSH:
        return False
    return "ControlMaster=yes" in argv and ssh_option("ControlPath", control) in argv


class Master:
    """A master of this ketchd: one it started (``proc``), or one it adopted (``pidfd``)."""

    def __init__(
        self,
        pid: int,
        control: Path,
        pidfile: Path,
        st: os.stat_result,
        *,
        proc: asyncio.subprocess.Process | None = None,
        pidfd: PidFd | None = None,
    ) -> None:
        self.pid = pid
        self.proc = proc
        self.pidfd = pidfd
        self.control = control
        self.pidfile = pidfile
        self.ident = (st.st_dev, st.st_ino)

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.returncode is None
        return self.pidfd is not None and not self.pidfd.exited()

    def live(self) -> bool:
        """Is the process running and its own socket at the path (not another, not gone)?"""
        if not self.running():
            return False
        st = socket_stat(self.control)
        return st is not None and (st.st_dev, st.st_ino) == self.ident

    async def stop(self) -> None:
        """End the master (SIGTERM: ssh removes its socket), reap it, remove its files."""
        import asyncio
        import contextlib

        from ketch.host import procs

        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 3.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self.pidfd is not None:
            await asyncio.to_thread(procs.terminate_pidfd, self.pidfd, grace=2.0)
            self.pidfd.close()
        _remove_own_socket(self.control, self.ident)
        _remove(self.pidfile)


def check_argv(control: str) -> list[str]:
    """``ssh -O check`` through ``control``: the master there says its pid (pure)."""
    return [SSH, "-F", "/dev/null", "-o", ssh_option("ControlPath", control), "-O", "check",
            "--", "127.0.0.1"]  # fmt: skip


async def adopt(control: Path, pidfile: Path) -> Master | None:
    """The master an earlier ketchd left running on ``control``, if it really is one.

    All of: the pid file names a live ``ssh`` whose argv is a master's on this
    path (checked through a pidfd), the path is a socket of this user (0600),
    and the master answering on it (``ssh -O check``) says that very pid.  The
    sessions already open on it (a user's ``shell``) go on.  None otherwise.
    """
    from ketch.host import procs
    from ketch.host.run import run

    pid = procs.read_pidfile(pidfile)
    if pid is None:
        return None
    handle = procs.open_pidfd(pid)
    if handle is None:
        return None
    st = socket_stat(control)
    if st is None or not is_master_argv(procs.cmdline(pid), str(control)):
        handle.close()
        return None
    from ketch.errors import KetchError

    try:
        done = await run(check_argv(str(control)), timeout=10.0, check=False)
    except KetchError:  # it did not answer in time, or ssh could not be run
        handle.close()
        return None
    again = socket_stat(control)
    if (
        done.returncode != 0
        or f"(pid={pid})".encode() not in done.stderr
        or again is None
        or (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino)
        or handle.exited()
    ):
        handle.close()
        return None
    return Master(pid, control, pidfile, st, pidfd=handle)


async def start(
    target: SshTarget, control: Path, pidfile: Path, log: Path, *, timeout: float = START_TIMEOUT
) -> Master | Completed:
    """Start the master of ``target`` on ``control``; the :class:`Master`, or how ssh failed.

    Whatever is at ``control`` first (a stale or planted socket) is removed:
    ssh would refuse to link its own there.  The caller ends any master it
    still has on that path first (:func:`end_stray`).  On failure the
    :class:`~ketch.host.run.Completed` carries ssh's exit code and the end of
    its stderr (``255`` and a note when it did not finish in ``timeout``).
    """
    import asyncio
    import contextlib
    import subprocess

    from ketch.errors import HostCommandError
    from ketch.host.run import Completed

    _remove(control)
    argv = master_argv(target, str(control))
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fd,
            start_new_session=True,  # Ctrl-C of a foreground ketchd does not reach it
        )
    except OSError as exc:
        raise HostCommandError(argv, None, str(exc)) from exc
    finally:
        os.close(fd)
    from ketch.host import procs

    procs.write_pidfile(pidfile, proc.pid)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        st = socket_stat(control)
        if st is not None and proc.returncode is None:
            return Master(proc.pid, control, pidfile, st, proc=proc)
        if proc.returncode is not None or loop.time() >= deadline:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), POLL)
    note = b""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        note = f"ssh: the control master was not up within {timeout:g} s\n".encode()
    code = await proc.wait()
    _remove(pidfile)
    _remove(control)  # a socket left by a killed ssh
    return Completed(tuple(argv), 255 if note else code, b"", _tail(log) + note)


def end_stray(control: Path, pidfile: Path) -> bool:
    """End a master named by ``pidfile`` that no :class:`Master` holds (an earlier ketchd's).

    Only a live ``ssh`` master on ``control`` is signalled (checked through a
    pidfd, so a recycled pid is never hit); its pid file and a socket left at
    ``control`` are removed either way.  True when there was one to end.
    """
    from ketch.host import procs

    ended = False
    pid = procs.read_pidfile(pidfile)
    if pid is not None:
        handle = procs.open_pidfd(pid)
        if handle is not None:
            with handle:
                if is_master_argv(procs.cmdline(pid), str(control)):
                    procs.terminate_pidfd(handle, grace=2.0)
                    ended = True
    _remove(pidfile)
    _remove(control)
    return ended


def _tail(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_KEEP))
            return f.read()
    except OSError:
        return b""


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # not ours to remove; ssh will refuse the path
        pass


def _remove_own_socket(path: Path, ident: tuple[int, int]) -> None:
    """Remove the socket at ``path`` only if it is still the one with ``ident``."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if (st.st_dev, st.st_ino) == ident:
        _remove(path)
