"""Start virtiofsd detached, with the guest's root squashed (a user namespace).

virtiofsd 7.2 maps no ids and takes each guest request's uid as its own: run
as host root, the guest's root would create host-root-owned files in SOURCE,
setuid executables among them, which any host user could run.  So ketch runs
it in a user namespace whose uid 0 (and gid 0) is the host's ``nobody``
(65534) and every other id is itself: the guest's users write as the same
host uids, the guest's root as ``nobody``, and no capability it holds there
reaches a host file it does not own (nor makes a device node).

Run as ``python -m ketch.host.squashed PIDFILE SOCKET SOURCE LOG -- ARGV…``
(ketch's own process: never inside ketchd, which must not fork).  It binds
the vhost-user socket (0600, owned by the caller) and opens SOURCE, as the
caller, then forks; the child takes a new session and user namespace, gets
its id maps from the parent, becomes the namespace's root and execs ARGV with
the socket as fd 3 and SOURCE as fd 4 (ARGV says ``--fd=3``,
``source=/proc/self/fd/4``), its output to LOG.  The parent writes the
child's pid to PIDFILE and exits: virtiofsd is nobody's child, and whoever
asked needs to reap nothing.  The child's environment carries
:data:`SOCKET_ENV` (the socket's path), by which ketch recognises it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import sys
from collections.abc import Sequence

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
SOCKET_FD = 3
SCRATCH = "/mnt"  # a tmpfs is mounted over it, in virtiofsd's mount namespace only
SOURCE_PATH = f"{SCRATCH}/source"  # where virtiofsd finds SOURCE
SOCKET_ENV = "KETCH_VIRTIOFS_SOCKET"
SQUASHED = 65534  # the host's nobody/nogroup: what the guest's root becomes
ID_MAX = 4294967294  # the largest valid id ((uid_t) -1 is not one)


def id_map(squashed: int = SQUASHED) -> str:
    """The namespace's uid_map/gid_map: 0 is ``squashed``, every other id itself (pure)."""
    lines = [f"0 {squashed} 1"]
    if squashed > 1:
        lines.append(f"1 1 {squashed - 1}")
    if squashed < ID_MAX:
        lines.append(f"{squashed + 1} {squashed + 1} {ID_MAX - squashed}")
    return "\n".join(lines) + "\n"


def _libc(call: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, call)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}{args!r}: {os.strerror(err)}")


def _unshare_user() -> None:
    _libc("unshare", CLONE_NEWUSER)


def _expose(source: str) -> None:
    """Give SOURCE the path :data:`SOURCE_PATH`, in a mount namespace of our own.

    The squashed virtiofsd has no capability over host-root-owned
    directories, so it could not walk the path to SOURCE (an instance
    directory, a 0700 home); here SOURCE is bind-mounted on a fresh tmpfs
    over :data:`SCRATCH`, seen by this process and its children only.  It is
    opened first and mounted through that descriptor, after checking that
    the path it was opened by has no symlink in it: no component can be
    swapped for a symlink meanwhile.
    """
    _libc("unshare", CLONE_NEWNS)
    _libc("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
    fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
        if opened != os.path.normpath(source):
            raise OSError(errno.ELOOP, f"{source} leads to {opened} through a symlink")
        flags = MS_NOSUID | MS_NODEV
        _libc("mount", b"tmpfs", SCRATCH.encode(), b"tmpfs", flags, b"mode=0755,size=16k")
        os.mkdir(SOURCE_PATH, 0o755)
        _libc("mount", f"/proc/self/fd/{fd}".encode(), SOURCE_PATH.encode(), None, MS_BIND, None)
    finally:
        os.close(fd)


def _child(ready_w: int, go_r: int, sock: int, log: int, argv: Sequence[str]) -> None:
    """In the forked child: never returns (execs, or exits 127)."""
    try:
        os.setsid()
        _unshare_user()
        os.write(ready_w, b"u")
        if os.read(go_r, 1) != b"g":
            os._exit(127)
        os.setresgid(0, 0, 0)
        os.setgroups([])
        os.setresuid(0, 0, 0)
        # Out of the way first (the log may be fd 3 now), then into place.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (sock, log)]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(high[1], 1)
        os.dup2(high[1], 2)
        os.dup2(high[0], SOCKET_FD)
        os.closerange(SOCKET_FD + 1, os.sysconf("SC_OPEN_MAX"))
        os.execv(argv[0], list(argv))
    except BaseException as exc:  # nothing to translate: the child's only voice is the log
        os.write(2, f"ketch: could not start {argv[0]}: {exc}\n".encode())
    os._exit(127)


def main(args: Sequence[str]) -> int:
    if len(args) < 6 or args[4] != "--":
        print(
            "usage: python -m ketch.host.squashed PIDFILE SOCKET SOURCE LOG -- ARGV…",
            file=sys.stderr,
        )
        return 2
    pidfile, sock_path, source, log_path, argv = args[0], args[1], args[2], args[3], args[5:]
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        _expose(source)
    except OSError as exc:
        print(f"could not give {source} to {argv[0]}: {exc}", file=sys.stderr)
        return 1
    try:
        return _launch(pidfile, sock_path, log, log_path, argv)
    except OSError as exc:
        print(f"could not start {argv[0]}: {exc}", file=sys.stderr)
        return 1


def _launch(pidfile: str, sock_path: str, log: int, log_path: str, argv: Sequence[str]) -> int:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(sock_path)
    finally:
        os.umask(old)
    listener.listen(1)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    os.environ[SOCKET_ENV] = sock_path
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)  # a parent that dies before "go" ends the child's wait
        _child(ready_w, go_r, listener.fileno(), log, argv)
    os.close(ready_w)  # a child that dies before "ready" ends ours
    os.close(go_r)
    if os.read(ready_r, 1) != b"u":
        os.waitpid(pid, 0)
        print(f"could not make a user namespace for {argv[0]} (see {log_path})", file=sys.stderr)
        return 1
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(id_map())
    tmp = f"{pidfile}.{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, pidfile)
    os.write(go_w, b"g")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
