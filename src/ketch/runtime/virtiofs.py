"""virtiofsd: the host side of native (virtiofs) mounts, one process per mount.

Debian 12's QEMU 7.2 ships the C daemon ``/usr/lib/qemu/virtiofsd``.  It is
started detached before QEMU (by :mod:`ketch.host.squashed`: its own session,
reparented away from ketchd, like QEMU), in a user namespace where the
guest's root is the host's ``nobody``; QEMU connects to its vhost-user
socket.  It serves exactly the mount's SOURCE: with ``sandbox=namespace`` it
``pivot_root``s into SOURCE in new mount, pid and net namespaces once QEMU
has connected, so nothing above SOURCE exists for it (``..`` and absolute
symlinks resolve inside SOURCE).  It exits by itself when QEMU closes the
socket; ketch ends it anyway on every way QEMU ends (:func:`stop_all`).

A restarted daemon finds a running virtiofsd again through its pid file,
its cmdline (``virtiofsd``) and its environment (``KETCH_VIRTIOFS_SOCKET``:
this instance's socket), as for QEMU.

Building argv and matching processes are pure; :func:`start` and
:func:`stop` act.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import HostCommandError, InvalidArgument
from ketch.host import procs, squashed
from ketch.host.run import run
from ketch.layout import FILE_MODE, VIRTIOFS_PID, VIRTIOFS_PREFIX, VIRTIOFS_SOCKET, InstanceDir
from ketch.model import MountSpec, MountType

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
TAG_PREFIX = "ketch-"
TAG_MAX = 36  # bytes: the virtio-fs config space's tag field
# Capabilities virtiofsd drops from its default set: the guest's root could
# otherwise make device nodes (a host user opening one reaches the host's
# disks) and file capabilities in SOURCE.
MODCAPS = "-mknod:-setfcap"
SOCKET_WAIT = 10.0  # seconds for virtiofsd to create its socket
SOCKET_FD = squashed.SOCKET_FD


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


def source_problem(mount: MountSpec) -> str | None:
    """Why this mount's source cannot be served now (None: it can).

    The source was resolved when the mount was added: a path that resolves
    elsewhere now had a component replaced by a symlink (by whoever can write
    above it) and is not followed; virtiofsd, as root, would serve its target.
    """
    source = mount.source
    if not os.path.isabs(source) or not os.path.isdir(source):
        return f"{source} is missing"
    if os.path.realpath(source) != os.path.normpath(source):
        return f"{source} now leads elsewhere through a symlink ({os.path.realpath(source)})"
    return None


def check_maps(mount: MountSpec) -> None:
    """Refuse ID maps a native mount cannot honour.

    virtiofsd 7.2 (the C daemon) maps no ids of its own; ketch runs it in a
    user namespace where every id is itself but root, which is the host's
    ``nobody`` (:mod:`ketch.host.squashed`).  So only identity maps ``N:N`` of
    another id than those two say something true; anything else is refused.
    """
    for kind, flag, maps in (("uid", "-u", mount.uid_maps), ("gid", "-g", mount.gid_maps)):
        for m in maps:
            if m.guest != m.host or m.host in (0, squashed.SQUASHED):
                guest = "default" if m.guest is None else str(m.guest)
                raise InvalidArgument(
                    f"a native mount cannot map {kind} {m.host} to {guest}: virtiofsd "
                    f"(QEMU 7.2) maps no ids; the guest sees the host's {kind}s as they "
                    f"are, and its root is the host's nobody",
                    hint=f"drop {flag} for a native mount, or use '--type classic', which maps ids",
                )


def build_argv(*, binary: str = VIRTIOFSD) -> list[str]:
    """virtiofsd's argv (pure): the same for every mount.

    The socket is a file descriptor (3) and SOURCE a path (``/mnt/source``)
    that :mod:`ketch.host.squashed` makes; ``sandbox=namespace``: confined
    to SOURCE.
    ``cache=auto`` (close-to-open consistency with the host); xattrs, locks
    and direct I/O are off; no device nodes or file capabilities
    (:data:`MODCAPS`); the open-files limit is left alone (raising it is not
    allowed in a user namespace).
    """
    return [
        binary,
        f"--fd={SOCKET_FD}",
        "-o",
        f"source={squashed.SOURCE_PATH}",
        "-o",
        "sandbox=namespace",
        "-o",
        "cache=auto",
        "-o",
        "no_xattr",
        "-o",
        f"modcaps={MODCAPS}",
        "-o",
        "log_level=warn",
        "--rlimit-nofile=0",
        "-f",
    ]


def launch_argv(
    argv: Sequence[str], *, source: str, socket: Path, pidfile: Path, log: Path
) -> list[str]:
    """Run ``argv`` through :mod:`ketch.host.squashed`, every word literal (pure)."""
    return [
        sys.executable,
        "-P",  # not the working directory first on sys.path: a planted ketch/ there
        "-m",
        "ketch.host.squashed",
        str(pidfile),
        str(socket),
        source,
        str(log),
        "--",
        *argv,
    ]


def argv_matches(cmdline: Sequence[str], environ: bytes, socket: Path) -> bool:
    """Is a process (its /proc/PID/cmdline and environ) the virtiofsd on this socket?"""
    want = f"{squashed.SOCKET_ENV}={socket}".encode("utf-8", "surrogateescape")
    return bool(cmdline) and Path(cmdline[0]).name == "virtiofsd" and want in environ.split(b"\0")


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


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
    if pid and argv and argv_matches(argv, _environ(pid), socket):
        return pid, argv
    for found, found_argv in _virtiofsd_processes():
        if argv_matches(found_argv, _environ(found), socket):
            return found, found_argv
    return None


def running(idir: InstanceDir, mount: MountSpec) -> bool:
    return find(idir, mount_tag(mount)) is not None


async def start(idir: InstanceDir, mount: MountSpec, *, binary: str = VIRTIOFSD) -> Share:
    """Start this mount's virtiofsd (ending a previous one), its guest root squashed.

    Returns once it runs; its socket exists (QEMU may connect before it accepts).
    """
    tag = mount_tag(mount)
    share = Share(tag=tag, socket=idir.virtiofs_socket(tag))
    await stop(idir, tag)
    pidfile, log = idir.virtiofs_pidfile(tag), idir.virtiofs_log(tag)
    argv = build_argv(binary=binary)
    launch = launch_argv(argv, source=mount.source, socket=share.socket, pidfile=pidfile, log=log)
    os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE))
    with log.open("ab") as f:
        f.write(("$ " + " ".join(launch) + "\n").encode())
        offset = f.tell()
    done = await run(launch, timeout=10.0, check=False)
    pid = procs.read_pidfile(pidfile) if done.returncode == 0 else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SOCKET_WAIT
    while pid and find(idir, tag) is None and procs.alive(pid) and loop.time() < deadline:
        await asyncio.sleep(0.02)  # the child execs virtiofsd
    if pid is None or find(idir, tag) is None:
        said = (done.stderr + log.read_bytes()[offset:][-2000:]).decode("utf-8", "replace")
        await stop(idir, tag)
        raise HostCommandError(
            argv,
            done.returncode or None,
            said.strip() or "virtiofsd did not start",
            hint=f"see {log}"
            + ("" if os.geteuid() == 0 else "; native mounts need ketchd to run as root"),
        )
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
    prefix = f"{squashed.SOCKET_ENV}={idir.path}/{VIRTIOFS_PREFIX}".encode()
    suffix = VIRTIOFS_SOCKET.encode()
    for pid, _ in _virtiofsd_processes():
        for var in _environ(pid).split(b"\0"):
            if var.startswith(prefix) and var.endswith(suffix) and b"/" not in var[len(prefix) :]:
                tags.add(var[len(prefix) : -len(suffix)].decode("utf-8", "replace"))
    return tags


async def stop_all(idir: InstanceDir) -> None:
    """End every virtiofsd of this instance; never raises (QEMU's end must not fail)."""
    for tag in tags_in(idir):
        with contextlib.suppress(Exception):
            await stop(idir, tag)
