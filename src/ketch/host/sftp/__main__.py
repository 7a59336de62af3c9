"""The supervisor of one classic mount's host side: ``python -m ketch.host.sftp``.

``python -m ketch.host.sftp SOURCE --uid U --gid G [--uid-map H:G]… [--gid-map H:G]… -- SSH…``
makes a socketpair, forks the server (confined to SOURCE as ``U:G``, see
``confine``) on one end and runs the ssh command with its stdin and stdout on
the other (the guest side of that command is ``sshfs -o slave``).  When either
ends, the other is ended too and the supervisor exits: 0 when ssh exited 0.
SIGTERM ends both; both also die with the supervisor (parent-death signals),
so a ``kill -9`` of it leaves nothing behind.  ``--pidfile P [--log L]``
detaches first (a new session; the first process exits once P is written;
stdout and stderr appended to L): that is how ketchd starts it.  The pid file outlives
the supervisor: whoever ends it removes the file once it has gone.  ``--fd N``
instead of ``-- SSH…`` serves an inherited descriptor (the tests' raw SFTP
client); the server is forked and confined the same way.  ``--connect SOCKET``
instead serves a unix socket it connects to first: the host end of the mount's
virtio-serial port (QEMU's chardev), whose guest end sshfs reads and writes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
from types import FrameType

# Everything the confined server runs is imported here, before it is confined.
from ketch.host.sftp import confine, protocol, server

_ = protocol


def _idmap(text: str) -> tuple[int, int]:
    host, sep, guest = text.partition(":")
    if not sep or not host.isdigit() or not guest.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:GUEST numeric ids, got {text!r}")
    return int(host), int(guest)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ketch.host.sftp")
    parser.add_argument("source")
    parser.add_argument("--uid", type=int, required=True, help="host uid the server runs as")
    parser.add_argument("--gid", type=int, required=True, help="host gid the server runs as")
    parser.add_argument("--uid-map", type=_idmap, action="append", default=[])
    parser.add_argument("--gid-map", type=_idmap, action="append", default=[])
    parser.add_argument("--fd", type=int, help="serve this inherited descriptor")
    parser.add_argument("--connect", help="serve this unix socket (a virtio-serial port's)")
    parser.add_argument("--pidfile", help="detach, and write the supervisor's pid here")
    parser.add_argument("--log", help="with --pidfile: append stdout and stderr here")
    return parser


def _detach(pidfile: str, log: str | None) -> None:
    """Fork; the parent exits 0 once the child (a new session) has written ``pidfile``."""
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        ok = os.read(ready_r, 1) == b"1"
        os._exit(0 if ok else 2)
    os.close(ready_r)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log else null
    os.dup2(out, 1)
    os.dup2(out, 2)
    tmp = f"{pidfile}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, pidfile)
    os.write(ready_w, b"1")
    os.close(ready_w)


def _groups(uid: int, gid: int) -> tuple[int, ...]:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return (gid,)
    return tuple(os.getgrouplist(name, gid))


def _fork_server(fd: int, args: argparse.Namespace) -> int:
    ids = server.IdMapper(dict(args.uid_map), dict(args.gid_map))
    groups = _groups(args.uid, args.gid)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            confine.confine(args.source, args.uid, args.gid, groups, keep=(fd,))
            confine.die_with_parent(parent, signal.SIGKILL)  # a killed supervisor ends it too
            code = server.serve(fd, fd, ids)
        except BaseException as exc:  # the child must never return into the supervisor
            sys.stderr.write(f"ketch sftp: cannot serve {args.source}: {exc}\n")
        finally:
            os._exit(code)
    return pid


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in raw:
        cut = raw.index("--")
        raw, command = raw[:cut], raw[cut + 1 :]
    args = _parser().parse_args(raw)
    if not command and args.fd is None and args.connect is None:
        _parser().error("give the ssh command after --, or --fd, or --connect")
    if not os.path.isdir(args.source):
        sys.stderr.write(f"ketch sftp: {args.source} is not a directory\n")
        return 2
    if args.pidfile:
        _detach(args.pidfile, args.log)
    children: list[int] = []

    def _terminate(signum: int, frame: FrameType | None) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if args.connect is not None:
        port = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            port.connect(args.connect)
        except OSError as exc:
            sys.stderr.write(f"ketch sftp: cannot connect to {args.connect}: {exc}\n")
            return 2
        sys.stderr.write(f"ketch sftp: serving {args.source} over {args.connect}\n")
        sys.stderr.flush()
        args.fd = port.detach()
    if args.fd is not None:
        children.append(_fork_server(args.fd, args))
        os.close(args.fd)
        ssh: subprocess.Popen[bytes] | None = None
    else:
        ours, theirs = socket.socketpair()
        children.append(_fork_server(theirs.fileno(), args))
        theirs.close()
        parent = os.getpid()
        ssh = subprocess.Popen(
            command,
            stdin=ours.fileno(),
            stdout=ours.fileno(),
            preexec_fn=lambda: confine.die_with_parent(parent, signal.SIGTERM),
        )
        ours.close()
        children.append(ssh.pid)
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        children.remove(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if ssh is not None and pid == ssh.pid:
            ssh.returncode = code
            status = code if code >= 0 else 2
        elif ssh is None:
            status = code if code >= 0 else 2
        _terminate(signal.SIGTERM, None)
    # The pid file stays: a pid file removed here, before this process has exited, told
    # ketchd "no supervisor" while one still ran (CI saw it).  A pid file naming a process
    # that is gone, or no longer this command, reads as "not running" (the cmdline check);
    # who ends the supervisor removes it once it has gone.
    return status


if __name__ == "__main__":
    sys.exit(main())
