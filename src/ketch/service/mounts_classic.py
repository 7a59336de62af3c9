"""Classic mounts in place: the detached SFTP supervisor on the host, sshfs in the guest.

:func:`activate` starts (or keeps) one mount's supervisor (``host/sftp``).
When the driver plugs the mount a virtio-serial port (``MountPorts``: an
instance recorded with the mounts' controller), the supervisor serves the
port's host socket and the guest's ``sshfs -o slave`` runs on the port's
device; otherwise (no bus, a failed hot-plug) the supervisor runs ssh to the
guest's sshfs, as before.  It waits until the guest's ``/proc/mounts`` shows
the target, then raises the mount's read-ahead there (``READ_AHEAD_KB``).
:func:`deactivate` unmounts in the guest when asked to and it can, then ends the
supervisor; it never raises.
:func:`active` says whether both sides are there.  The supervisor is found
by its pid file (``layout``) and its cmdline, so a new ketchd adopts it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from ketch.errors import GuestError, KetchError
from ketch.host import mountport, procs
from ketch.host.run import run
from ketch.host.sftp.launch import (
    guest_argv,
    guest_port_argv,
    guest_tune_argv,
    guest_unmount_argv,
    is_supervisor,
    mounted_targets,
    supervisor_argv,
    transport,
)
from ketch.host.ssh.argv import remote_command, ssh_argv
from ketch.host.ssh.ready import run_in_guest
from ketch.layout import InstanceDir, mount_key
from ketch.model import IdMap, InstanceSpec, MountSpec
from ketch.progress import Reporter
from ketch.runtime.driver import MountPorts
from ketch.service import guestlink
from ketch.service.context import Context

MOUNT_WAIT = 30.0  # seconds for sshfs to show up in the guest's /proc/mounts
INSTALL_TIMEOUT = 600.0


def supervisor_pid(idir: InstanceDir, target: str) -> int | None:
    """The pid of the mount's live supervisor, or None."""
    pidfile = idir.mount_pidfile(target)
    pid = procs.read_pidfile(pidfile)
    if pid is None:
        return None
    argv = procs.cmdline(pid)
    return pid if argv is not None and is_supervisor(argv, str(pidfile)) else None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(w) for w in text.split() if w.isdigit()]


def serves_stale_source(pid: int, source: str) -> bool:
    """Does the supervisor's server serve a directory that is no longer ``source``?

    The server's root is SOURCE as it was when it started (``confine``
    pivots into it): a source removed and made again is another directory,
    which the server never sees.  False when it cannot be told.
    """
    argv = procs.cmdline(pid)
    try:
        now = os.stat(source)
    except OSError:
        return False  # a missing source is said on its own
    for child in _children(pid):
        if procs.cmdline(child) != argv:
            continue  # ssh; the server is a fork of the supervisor (the same cmdline)
        try:
            served = os.stat(f"/proc/{child}/root")
        except OSError:
            return False
        return (served.st_dev, served.st_ino) != (now.st_dev, now.st_ino)
    return False


def transport_of(idir: InstanceDir, target: str) -> str | None:
    """How the mount's live supervisor reaches the guest (``virtio-serial``, ``ssh``), or None."""
    pid = supervisor_pid(idir, target)
    argv = procs.cmdline(pid) if pid is not None else None
    return transport(argv) if argv is not None else None


def host_side(idir: InstanceDir, mount: MountSpec) -> str | None:
    """What is wrong with the mount's host side (None: its supervisor serves its source)."""
    pid = supervisor_pid(idir, mount.target)
    if pid is None:
        return "its host side (the SFTP server) is not running"
    if serves_stale_source(pid, mount.source):
        return f"its host side serves a directory that is no longer {mount.source}"
    return None


def end_supervisor(idir: InstanceDir, target: str) -> None:
    """End the mount's supervisor (it ends its server and ssh), remove its pid file."""
    pidfile = idir.mount_pidfile(target)
    pid = supervisor_pid(idir, target)
    if pid is not None:
        argv = procs.cmdline(pid)
        if argv is not None:
            procs.terminate(pid, grace=3.0, expect=argv)
    procs.remove_quietly(pidfile)


async def guest_mounts(ctx: Context, spec: InstanceSpec) -> set[str] | None:
    """The guest paths where an sshfs is mounted now, or None when the guest cannot say."""
    try:
        done = await run_in_guest(
            guestlink.target(ctx.root, spec), ["cat", "/proc/mounts"], timeout=20.0
        )
    except KetchError:
        return None
    if done.returncode != 0:
        return None
    return mounted_targets(done.stdout.decode("utf-8", "surrogateescape"))


async def _guest_ids(ctx: Context, spec: InstanceSpec) -> tuple[int, int]:
    done = await run_in_guest(
        guestlink.target(ctx.root, spec), ["sh", "-c", "id -u; id -g"], check=True
    )
    words = done.stdout.split()
    if len(words) != 2 or not all(w.isdigit() for w in words):
        raise GuestError(f"cannot read the default user's ids in {spec.name}")
    return int(words[0]), int(words[1])


async def ensure_sshfs(ctx: Context, spec: InstanceSpec, reporter: Reporter) -> None:
    """sshfs in the guest: there already (tiny, debian-12), else installed by its packager."""
    target = guestlink.target(ctx.root, spec)
    probe = await run_in_guest(target, ["sh", "-c", "command -v sshfs"], timeout=30.0)
    if probe.returncode == 0:
        return
    reporter.step(f"Installing sshfs in {spec.name} (first classic mount)")
    script = (
        "if command -v apt-get >/dev/null; then "
        "DEBIAN_FRONTEND=noninteractive apt-get -qq update && "
        "DEBIAN_FRONTEND=noninteractive apt-get -qq install -y sshfs; "
        "elif command -v dnf >/dev/null; then dnf -q -y install fuse-sshfs; "
        "elif command -v apk >/dev/null; then apk add -q sshfs; "
        "else echo 'no known package manager' >&2; exit 3; fi"
    )
    done = await run_in_guest(target, ["sudo", "-n", "sh", "-c", script], timeout=INSTALL_TIMEOUT)
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise KetchError(
            f"cannot install sshfs in {spec.name}: " + ("; ".join(detail) or "it failed"),
            hint=f"install sshfs in the guest ('ketch exec {spec.name} -- sudo apt-get install "
            "sshfs'), or use a native mount (-t native)",
        )


def _resolve(maps: tuple[IdMap, ...], default: int) -> list[tuple[int, int]]:
    return [(m.host, default if m.guest is None else m.guest) for m in maps]


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return "; ".join(lines[-3:])


async def activate(ctx: Context, spec: InstanceSpec, mount: MountSpec, reporter: Reporter) -> None:
    """Put one classic mount in place (a no-op when it already is)."""
    idir = ctx.root.instance(spec.name)
    mounted = await guest_mounts(ctx, spec)
    if supervisor_pid(idir, mount.target) is not None:
        if host_side(idir, mount) is None and mounted is not None and mount.target in mounted:
            return
        end_supervisor(idir, mount.target)  # the guest side is gone, or a stale source: afresh
    idir.mounts.mkdir(mode=0o700, exist_ok=True)
    pidfile, log = idir.mount_pidfile(mount.target), idir.mount_log(mount.target)
    if mounted is None or mount.target in mounted:
        # What a dead host side left in the guest goes first: from here on, the target in
        # the guest's /proc/mounts is the new sshfs (see active()).
        cleared = await run_in_guest(
            guestlink.target(ctx.root, spec),
            guest_unmount_argv(mount.target, mount_key(mount.target)),
            timeout=30.0,
        )
        with log.open("ab") as f:
            f.write(cleared.stderr)
    await ensure_sshfs(ctx, spec, reporter)
    guest_uid, guest_gid = await _guest_ids(ctx, spec)
    uid_maps = _resolve(mount.uid_maps, guest_uid)
    gid_maps = _resolve(mount.gid_maps, guest_gid)
    st = os.stat(mount.source)
    uid = uid_maps[0][0] if uid_maps else st.st_uid
    gid = gid_maps[0][0] if gid_maps else st.st_gid

    def argv(*, ssh: list[str] | None = None, connect: str | None = None) -> list[str]:
        return supervisor_argv(
            mount.source,
            uid=uid,
            gid=gid,
            uid_maps=uid_maps,
            gid_maps=gid_maps,
            pidfile=str(pidfile),
            log=str(log),
            ssh=ssh or (),
            connect=connect,
        )

    if not await _start_over_port(ctx, spec, mount, lambda sock: argv(connect=sock)):
        ssh = ssh_argv(
            guestlink.target(ctx.root, spec, mux=False),  # a detached supervisor: its own link
            remote_command(guest_argv(mount.target, mount_key(mount.target))),
            tty=False,
            batch=True,
        )
        done = await run(argv(ssh=ssh), timeout=30.0, check=False)
        if done.returncode != 0:
            raise KetchError(
                f"cannot start the host side of {mount.source} => {mount.target}: "
                + (_log_tail(log) or done.stderr.decode("utf-8", "replace").strip()),
                hint=f"see {log}",
            )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MOUNT_WAIT
    while True:
        mounted = await guest_mounts(ctx, spec)
        if mounted is not None and mount.target in mounted:
            await _tune(ctx, spec, mount)
            return
        if supervisor_pid(idir, mount.target) is None or loop.time() > deadline:
            end_supervisor(idir, mount.target)
            await _unplug(ctx, spec, mount)
            raise KetchError(
                f"{mount.source} was not mounted at {mount.target} in {spec.name}"
                + (f": {tail}" if (tail := _log_tail(log)) else ""),
                hint=f"see {log}",
            )
        await asyncio.sleep(0.3)


async def _tune(ctx: Context, spec: InstanceSpec, mount: MountSpec) -> None:
    """The mount's read-ahead raised in the guest (``READ_AHEAD_KB``); a failure is only
    noted in its log: the mount works without it, only slower to read."""
    log = ctx.root.instance(spec.name).mount_log(mount.target)
    try:
        done = await run_in_guest(
            guestlink.target(ctx.root, spec), guest_tune_argv(mount.target), timeout=20.0
        )
    except KetchError as exc:
        _note(log, f"the read-ahead was not raised: {exc.message}")
        return
    if done.returncode != 0 or done.stderr:
        _note(log, "the read-ahead was not raised: " + done.stderr.decode("utf-8", "replace"))


def _note(log: Path, text: str) -> None:
    with log.open("ab") as f:
        f.write(f"ketch: {text}\n".encode())


async def _unplug(ctx: Context, spec: InstanceSpec, mount: MountSpec) -> None:
    """The mount's virtio-serial port out of the VM, if it has one (never raises)."""
    if isinstance(ctx.driver, MountPorts):
        await ctx.driver.remove_mount_port(spec, ctx.root.instance(spec.name), mount.target)


async def _start_over_port(
    ctx: Context, spec: InstanceSpec, mount: MountSpec, argv: Callable[[str], list[str]]
) -> bool:
    """Start the mount over a virtio-serial port: plug it, start the supervisor on its
    socket (``argv``), start sshfs in the guest on it.  False (said in the mount's log,
    nothing left behind) when there is no port for it or a step fails: then over ssh."""
    driver, idir = ctx.driver, ctx.root.instance(spec.name)
    log = idir.mount_log(mount.target)
    if not isinstance(driver, MountPorts):
        return False
    try:
        socket = await driver.add_mount_port(spec, idir, mount.target)
    except KetchError as exc:
        _note(log, f"no virtio-serial port ({exc.message}): the mount goes over ssh")
        return False
    if socket is None:
        _note(log, "this instance has no virtio-serial bus for mounts: the mount goes over ssh")
        return False
    started = False
    try:
        done = await run(argv(str(socket)), timeout=30.0, check=False)
        if done.returncode == 0:
            key = mount_key(mount.target)
            guest = await run_in_guest(
                guestlink.target(ctx.root, spec),
                guest_port_argv(mount.target, key, mountport.port_name(key)),
                timeout=60.0,
            )
            with log.open("ab") as f:
                f.write(guest.stderr)
            started = guest.returncode == 0
        _note(
            log,
            f"{mount.source} => {mount.target} over virtio-serial"
            if started
            else "the virtio-serial port did not work: the mount goes over ssh",
        )
    finally:
        if not started:  # failed, or raised (the guest unreachable): nothing left behind
            end_supervisor(idir, mount.target)
            await driver.remove_mount_port(spec, idir, mount.target)
    return started


async def deactivate(
    ctx: Context, spec: InstanceSpec, mount: MountSpec, reporter: Reporter, *, guest: bool
) -> None:
    """End one classic mount: in the guest first when ``guest``; never raises."""
    idir = ctx.root.instance(spec.name)
    if guest:
        try:
            await run_in_guest(
                guestlink.target(ctx.root, spec),
                guest_unmount_argv(mount.target, mount_key(mount.target)),
                timeout=20.0,
            )
        except Exception as exc:  # ending a mount must never fail
            reporter.warn(f"could not unmount {mount.target} in {spec.name}: {exc}")
    try:
        end_supervisor(idir, mount.target)
    except Exception as exc:
        reporter.warn(f"could not end the host side of {mount.target}: {exc}")
    await _unplug(ctx, spec, mount)  # before a suspend too: a saved state carries no port


def active(ctx: Context, spec: InstanceSpec, mount: MountSpec, mounted: set[str] | None) -> bool:
    """Both sides in place: the supervisor serving the source and (when known) the guest's
    mount there."""
    alive = host_side(ctx.root.instance(spec.name), mount) is None
    return alive and (mounted is None or mount.target in mounted)
