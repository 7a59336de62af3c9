"""Use cases: ``ketch mount`` / ``umount``, and mounts following the instance's life.

A mount is part of the instance's spec (``MountSpec``).  :func:`add` checks
it (the source exists, the target is absolute, not a system path, not taken)
and records it under the journal; on a running instance a classic mount is
put in place at once, a native one is refused (as Multipass: added while
stopped, in place from the next start).  :func:`remove` takes mounts out.
:func:`activate_all` runs after every start, resume and restart and when a
new ketchd starts (it restarts dead host sides); :func:`deactivate_all` runs
on stop, suspend, force-stop and purge and never fails.  A missing source
warns and is skipped at start.
"""

from __future__ import annotations

import inspect
import os
import posixpath
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ketch.api.models import MountRequest
from ketch.errors import InvalidArgument, KetchError, NotFound
from ketch.host import procs
from ketch.host.sftp.launch import is_supervisor
from ketch.model import IdMap, InstanceSpec, MountSpec, MountType, OperationKind, State
from ketch.progress import Reporter
from ketch.runtime import virtiofs
from ketch.service import mounts_classic, mounts_native
from ketch.service.context import Context
from ketch.service.inspect import get
from ketch.service.journal import journal

RUNNING = {State.RUNNING, State.DELAYED_SHUTDOWN}

#: Guest paths a mount may not cover (Multipass refuses /, /dev, /proc, /sys and
#: the default user's home; ketch adds the rest of the system's own directories).
SYSTEM_PATHS = frozenset(
    {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
     "/proc", "/root", "/run", "/sbin", "/sys", "/usr", "/var"}
)  # fmt: skip
#: Everything below these is refused too.
SYSTEM_TREES = ("/dev/", "/proc/", "/sys/", "/boot/", "/run/", "/usr/", "/etc/")

DISABLED = (
    "Mounts are disabled on this installation of ketch.\n\n"
    "See 'ketch set local.privileged-mounts=true' to enable them."
)


def check_target(target: str, user: str) -> str:
    """The clean absolute guest path, or InvalidArgument (exit 1) saying what is wrong."""
    if not target.startswith("/"):
        raise InvalidArgument(
            f'the mount target "{target}" is not an absolute path',
            hint="give the guest path from the root, e.g. INSTANCE:/home/ubuntu/project",
        )
    if "\0" in target or "\n" in target:
        raise InvalidArgument("the mount target has a NUL or newline character")
    clean = posixpath.normpath(target)
    clean = "/" + clean.lstrip("/")
    home = f"/home/{user}"
    if clean in SYSTEM_PATHS or clean == home or clean.startswith(SYSTEM_TREES):
        raise InvalidArgument(
            f'unable to mount to "{clean}": it is a system path of the guest',
            hint=f"mount under the home directory ({home}/NAME) or a new directory like /mnt/NAME",
        )
    return clean


def check_source(source: str) -> str:
    """The absolute, resolved host directory, or KetchError (exit 2) when it does not exist."""
    path = os.path.realpath(os.path.expanduser(source))
    if not os.path.exists(path):
        raise KetchError(
            f'source "{source}" does not exist',
            hint="create the directory first, or check the path",
        )
    if not os.path.isdir(path):
        raise KetchError(f'source "{source}" is not a directory', hint="mount a directory")
    return path


def default_maps(
    source: str, uid_maps: Sequence[IdMap], gid_maps: Sequence[IdMap]
) -> tuple[tuple[IdMap, ...], tuple[IdMap, ...]]:
    """The maps given, else the source's host owner → the guest's default user."""
    st = os.stat(source)
    uids = tuple(uid_maps) or (IdMap(st.st_uid, None),)
    gids = tuple(gid_maps) or (IdMap(st.st_gid, None),)
    return uids, gids


def from_request(request: MountRequest) -> MountSpec:
    """The spec of one requested mount (checked later, by :func:`add`)."""
    return MountSpec(
        source=request.source,
        target=request.target,
        type=MountType(request.type),
        uid_maps=tuple(parse_id_map(x) for x in request.uid_maps),
        gid_maps=tuple(parse_id_map(x) for x in request.gid_maps),
    )


def parse_id_map(text: str) -> IdMap:
    """``HOST:GUEST`` (GUEST a number or ``default``), or InvalidArgument."""
    host, sep, guest = text.partition(":")
    if not sep or not host.isdigit() or not (guest.isdigit() or guest == "default"):
        raise InvalidArgument(
            f"invalid id mapping '{text}'",
            hint="give HOST:GUEST ids, e.g. 1000:1000 or 1000:default",
        )
    ids = [int(host)] + ([int(guest)] if guest.isdigit() else [])
    if any(i > 2**32 - 2 for i in ids):
        raise InvalidArgument(f"invalid id mapping '{text}': an id is out of range")
    return IdMap(int(host), int(guest) if guest.isdigit() else None)


def check_all(mounts: Sequence[MountSpec], *, privileged: bool, user: str = "ubuntu") -> None:
    """What :func:`add` refuses before touching anything (for ``launch --mount``)."""
    if not privileged:
        raise KetchError(DISABLED)
    targets: set[str] = set()
    for mount in mounts:
        target = check_target(mount.target, user)
        check_source(mount.source)
        if target in targets:
            raise InvalidArgument(f'"{target}" is given twice')
        targets.add(target)


async def _maybe(result: Any) -> Any:
    """Await what the type-specific module returned, if it is awaitable."""
    return await result if inspect.isawaitable(result) else result


async def _activate(ctx: Context, spec: InstanceSpec, mount: MountSpec, rep: Reporter) -> None:
    if mount.type is MountType.CLASSIC:
        await mounts_classic.activate(ctx, spec, mount, rep)
    else:
        await _maybe(mounts_native.activate(ctx, spec, mount, rep))


async def add(
    ctx: Context,
    name: str,
    mounts: Sequence[MountSpec],
    reporter: Reporter,
    *,
    privileged: bool = True,
) -> list[str]:
    """Record ``mounts`` in the instance's spec; in place now if it runs (classic)."""
    if not privileged:
        raise KetchError(DISABLED)
    v = await get(ctx, name)
    if v.state is State.DELETED:
        raise NotFound(f'instance "{name}" is deleted', hint=f"'ketch recover {name}' first")
    spec = v.record.spec
    ctx.require_local(spec, "mount")
    taken = {m.target for m in spec.mounts}
    new: list[MountSpec] = []
    for mount in mounts:
        target = check_target(mount.target, spec.user)
        source = check_source(mount.source)
        if target in taken:
            raise InvalidArgument(f'"{target}" is already mounted in "{name}"')
        if mount.type is MountType.NATIVE and v.state in RUNNING:
            raise KetchError(
                f'Please stop the instance "{name}" before mounting natively.',
                hint="native mounts are added while the instance is stopped and are in place "
                "from its next start; or use a classic mount (the default)",
            )
        if mount.type is MountType.NATIVE:
            # virtiofsd maps no ids: refuse maps it cannot honour, and fill in none
            virtiofs.check_maps(mount)
            uids, gids = mount.uid_maps, mount.gid_maps
        else:
            uids, gids = default_maps(source, mount.uid_maps, mount.gid_maps)
        new.append(replace(mount, source=source, target=target, uid_maps=uids, gid_maps=gids))
        taken.add(target)
    async with journal(ctx, name, OperationKind.MOUNT, reporter=reporter):
        spec = ctx.store.get(name).spec
        spec = replace(spec, mounts=(*spec.mounts, *new))
        ctx.store.set_spec(spec)
        if v.state in RUNNING:
            for mount in new:
                reporter.step(f"Mounting {mount.source} => {name}:{mount.target}")
                try:
                    await _activate(ctx, spec, mount, reporter)
                except KetchError:
                    ctx.store.set_spec(
                        replace(spec, mounts=tuple(m for m in spec.mounts if m != mount))
                    )
                    raise
    return [m.target for m in new]


async def remove(ctx: Context, name: str, targets: Sequence[str], reporter: Reporter) -> list[str]:
    """Take mounts out of the spec (all of them when ``targets`` is empty), ending them."""
    v = await get(ctx, name)
    spec = v.record.spec
    if targets:
        wanted = {posixpath.normpath(t) if t.startswith("/") else t for t in targets}
        unknown = sorted(wanted - {m.target for m in spec.mounts})
        if unknown:
            raise NotFound(f'"{unknown[0]}" is not mounted in "{name}"')
        gone = [m for m in spec.mounts if m.target in wanted]
    else:
        gone = list(spec.mounts)
    async with journal(ctx, name, OperationKind.UMOUNT, reporter=reporter):
        for mount in gone:
            await deactivate_one(ctx, spec, mount, reporter, guest=v.state in RUNNING)
        spec = replace(ctx.store.get(name).spec)
        ctx.store.set_spec(replace(spec, mounts=tuple(m for m in spec.mounts if m not in gone)))
    return [m.target for m in gone]


async def activate_all(ctx: Context, spec: InstanceSpec, reporter: Reporter) -> None:
    """Put every mount of a running instance in place; each failure is a warning."""
    for mount in spec.mounts:
        if not os.path.isdir(mount.source):
            reporter.warn(f"the source {mount.source} of {mount.target} is missing: not mounted")
            continue
        try:
            await _activate(ctx, spec, mount, reporter)
        except KetchError as exc:
            reporter.warn(f"{mount.source} => {mount.target} was not mounted: {exc.message}")
        except OSError as exc:
            reporter.warn(f"{mount.source} => {mount.target} was not mounted: {exc}")


async def deactivate_one(
    ctx: Context, spec: InstanceSpec, mount: MountSpec, reporter: Reporter, *, guest: bool
) -> None:
    """End one mount; never raises (warnings instead)."""
    try:
        if mount.type is MountType.CLASSIC:
            await mounts_classic.deactivate(ctx, spec, mount, reporter, guest=guest)
        else:
            await _maybe(mounts_native.deactivate(ctx, spec, mount, reporter))
    except Exception as exc:  # stop --force and purge must never fail because of a mount
        reporter.warn(f"ending the mount {mount.target} failed: {exc}")


async def deactivate_all(
    ctx: Context, spec: InstanceSpec, reporter: Reporter, *, guest: bool
) -> None:
    """End every mount's host side (in the guest first when ``guest``); never raises."""
    for mount in spec.mounts:
        if mount.type is MountType.CLASSIC:
            await deactivate_one(ctx, spec, mount, reporter, guest=guest)


async def end_strays(ctx: Context, spec: InstanceSpec) -> None:
    """End the host sides of classic mounts no longer in the spec (their pid files remain)."""
    idir = ctx.root.instance(spec.name)
    if not idir.mounts.is_dir():
        return
    keep = {idir.mount_pidfile(m.target).name for m in spec.mounts}
    for path in idir.mounts.glob("*.pid"):
        if path.name not in keep:
            pid = procs.read_pidfile(path)
            argv = procs.cmdline(pid) if pid else None
            if pid and argv and is_supervisor(argv, str(path)):
                procs.terminate(pid, expect=argv)
            procs.remove_quietly(path)


async def entries(ctx: Context, spec: InstanceSpec, running: bool) -> dict[str, bool | None]:
    """Each mount's ``active`` for ``info``: None when the instance does not run."""
    if not running or not spec.mounts:
        return {m.target: None for m in spec.mounts}
    mounted = await mounts_classic.guest_mounts(ctx, spec)
    out: dict[str, bool | None] = {}
    for mount in spec.mounts:
        if mount.type is MountType.CLASSIC:
            out[mount.target] = mounts_classic.active(ctx, spec, mount, mounted)
        else:
            try:
                out[mount.target] = await _maybe(mounts_native.active(ctx, spec, mount))
            except KetchError:
                out[mount.target] = None
    return out


def transports(ctx: Context, spec: InstanceSpec) -> dict[str, str | None]:
    """Each classic mount's stream to its live host side (``virtio-serial``, ``ssh``), for
    ``info``; None where none runs."""
    idir = ctx.root.instance(spec.name)
    return {
        m.target: mounts_classic.transport_of(idir, m.target)
        for m in spec.mounts
        if m.type is MountType.CLASSIC
    }


async def adopt(ctx: Context, name: str, reporter: Reporter) -> None:
    """A new ketchd's pass over one instance: end strays, restart dead host sides."""
    v = await get(ctx, name)
    await end_strays(ctx, v.record.spec)
    if v.state in RUNNING:
        await activate_all(ctx, v.record.spec, reporter)
