"""virtiofsd: the host side of native (virtiofs) mounts, one process per mount.

Debian 12's QEMU 7.2 ships the C daemon ``/usr/lib/qemu/virtiofsd``.  It is
started detached (its own session, reparented away from ketchd, like QEMU)
before QEMU, which connects to its vhost-user socket; it serves exactly the
mount's SOURCE: with ``sandbox=namespace`` it ``pivot_root``s into SOURCE in
new mount, pid and net namespaces once QEMU has connected, so nothing above
SOURCE exists for it (``..`` and absolute symlinks resolve inside SOURCE).
It exits by itself when QEMU closes the socket; ketch ends it anyway on every
way QEMU ends (:func:`stop_all`).

A restarted daemon finds a running virtiofsd again through its pid file and
its cmdline (``--socket-path`` of this instance's socket), as for QEMU.

Building argv and matching cmdlines are pure; :func:`start` and :func:`stop`
act.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import HostCommandError, InvalidArgument
from ketch.host import procs
from ketch.host.run import run
from ketch.layout import FILE_MODE, VIRTIOFS_PID, VIRTIOFS_PREFIX, VIRTIOFS_SOCKET, InstanceDir
from ketch.model import MountSpec, MountType

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
TAG_PREFIX = "ketch-"
TAG_MAX = 36  # bytes: the virtio-fs config space's tag field
SOCKET_WAIT = 10.0  # seconds for virtiofsd to create its socket
# sh: background virtiofsd in a session of its own (setsid execs it: a background
# job of a non-interactive sh leads no process group), its stdio to the log; write
# its pid and exit at once: virtiofsd is reparented away from ketchd, which never
# has to reap it, and no signal to ketchd's group or terminal reaches it.
DETACH_SCRIPT = 'p=$1; l=$2; shift 2; setsid "$@" </dev/null >>"$l" 2>&1 & echo $! >"$p"'


@dataclass(frozen=True)
class Share:
    """One native mount as QEMU sees it: a vhost-user-fs device on a socket."""

    tag: str
    socket: Path


def mount_tag(mount: MountSpec) -> str:
    """The virtiofs tag of a mount: stable (from its guest path), ≤ 36 bytes."""
    digest = hashlib.sha256(mount.target.encode("utf-8", "surrogateescape")).hexdigest()
    tag = TAG_PREFIX + digest[:16]
    assert len(tag.encode()) <= TAG_MAX
    return tag


def native_mounts(mounts: Sequence[MountSpec]) -> list[MountSpec]:
    return [m for m in mounts if m.type is MountType.NATIVE]


def check_maps(mount: MountSpec) -> None:
    """Refuse ID maps a native mount cannot honour.

    virtiofsd 7.2 (the C daemon) maps no ids: the guest sees the host's uids
    and gids as they are, and its writes land with the guest's ids.  Only
    identity maps (``HOST:HOST``) say nothing more than that.
    """
    for kind, flag, maps in (("uid", "-u", mount.uid_maps), ("gid", "-g", mount.gid_maps)):
        for m in maps:
            if m.guest is None or m.guest != m.host:
                guest = "default" if m.guest is None else str(m.guest)
                raise InvalidArgument(
                    f"a native mount cannot map {kind} {m.host} to {guest}: virtiofsd "
                    f"(QEMU 7.2) maps no ids, the guest sees the host's {kind}s as they are",
                    hint=f"drop {flag} for a native mount, or use '--type classic', which maps ids",
                )


def _opt_value(value: str) -> str:
    """A value inside virtiofsd's ``-o`` list: backslashes and commas escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def build_argv(source: str, socket: Path, *, binary: str = VIRTIOFSD) -> list[str]:
    """virtiofsd's argv for one mount (pure).

    ``sandbox=namespace``: confined to SOURCE.  ``cache=auto`` (close-to-open
    consistency with the host); xattrs, locks and direct I/O are off.
    """
    return [
        binary,
        f"--socket-path={socket}",
        "-o",
        f"source={_opt_value(source)}",
        "-o",
        "sandbox=namespace",
        "-o",
        "cache=auto",
        "-o",
        "no_xattr",
        "-o",
        "log_level=warn",
        "-f",
    ]


def detach_argv(argv: Sequence[str], *, pidfile: Path, log: Path) -> list[str]:
    """Run ``argv`` detached through ``sh``, which writes its pid to ``pidfile`` (pure)."""
    return ["sh", "-c", DETACH_SCRIPT, "sh", str(pidfile), str(log), *argv]


def argv_matches(cmdline: Sequence[str], socket: Path) -> bool:
    """Is a process's argv (from /proc/PID/cmdline) the virtiofsd on this socket?"""
    return (
        bool(cmdline)
        and Path(cmdline[0]).name == "virtiofsd"
        and f"--socket-path={socket}" in cmdline
    )


def _virtiofsd_processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = procs.cmdline(int(entry.name))
            if argv and Path(argv[0]).name == "virtiofsd":
                found.append((int(entry.name), argv))
    return found


def find(idir: InstanceDir, tag: str) -> tuple[int, list[str]] | None:
    """The running virtiofsd of this mount (pid file first, then /proc), if any."""
    socket = idir.virtiofs_socket(tag)
    pid = procs.read_pidfile(idir.virtiofs_pidfile(tag))
    argv = procs.cmdline(pid) if pid else None
    if pid and argv and argv_matches(argv, socket):
        return pid, argv
    for found, found_argv in _virtiofsd_processes():
        if argv_matches(found_argv, socket):
            return found, found_argv
    return None


def running(idir: InstanceDir, mount: MountSpec) -> bool:
    return find(idir, mount_tag(mount)) is not None


async def start(idir: InstanceDir, mount: MountSpec, *, binary: str = VIRTIOFSD) -> Share:
    """Start this mount's virtiofsd (ending a previous one); returns once its socket exists."""
    tag = mount_tag(mount)
    share = Share(tag=tag, socket=idir.virtiofs_socket(tag))
    await stop(idir, tag)
    pidfile, log = idir.virtiofs_pidfile(tag), idir.virtiofs_log(tag)
    argv = build_argv(mount.source, share.socket, binary=binary)
    os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE))
    with log.open("ab") as f:
        f.write(("$ " + " ".join(argv) + "\n").encode())
    done = await run(detach_argv(argv, pidfile=pidfile, log=log), timeout=10.0, check=False)
    pid = procs.read_pidfile(pidfile)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SOCKET_WAIT
    while pid and procs.alive(pid) and not share.socket.exists() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if done.returncode != 0 or not pid or not procs.alive(pid) or not share.socket.exists():
        said = log.read_bytes()[-2000:].decode("utf-8", "replace").strip()
        await stop(idir, tag)
        raise HostCommandError(argv, done.returncode or None, said or "virtiofsd did not start")
    os.chmod(share.socket, FILE_MODE)
    return share


async def stop(idir: InstanceDir, tag: str) -> bool:
    """End this mount's virtiofsd if it runs (never another process); remove its files."""
    found = find(idir, tag)
    if found is not None:
        pid, argv = found
        await asyncio.to_thread(procs.terminate, pid, expect=argv)
    procs.remove_quietly(idir.virtiofs_pidfile(tag), idir.virtiofs_socket(tag))
    return found is not None


def tags_in(idir: InstanceDir) -> set[str]:
    """Tags of every virtiofsd this instance directory has files of, or runs."""
    tags = {
        p.name[len(VIRTIOFS_PREFIX) : -len(VIRTIOFS_PID)]
        for p in idir.path.glob(f"{VIRTIOFS_PREFIX}*{VIRTIOFS_PID}")
    }
    prefix = f"--socket-path={idir.path}/{VIRTIOFS_PREFIX}"
    for _, argv in _virtiofsd_processes():
        for arg in argv:
            if arg.startswith(prefix) and arg.endswith(VIRTIOFS_SOCKET):
                tags.add(arg[len(prefix) : -len(VIRTIOFS_SOCKET)])
    return tags


async def stop_all(idir: InstanceDir) -> None:
    """End every virtiofsd of this instance; never raises (QEMU's end must not fail)."""
    for tag in tags_in(idir):
        with contextlib.suppress(Exception):
            await stop(idir, tag)
