"""Use case: clone a stopped instance into a new, independent one.

The clone's disk is the driver's copy (``Driver.copy_disk``; for QEMU
``qemu-img convert -B BASE``) of the source's disk: a new
qcow2 overlay on the same read-only base image in the vault, holding a copy
of everything the source changed.  It shares no writable file with the
source, so it survives the source's purge, and ``convert`` copies no
internal snapshot (the ``suspend`` tag and snapshot tags stay behind).  A
source without a backing file is copied in full (docs/internals.md says
why).  On a libvirt host the clone stays on the source's host and its disk is a volume
libvirt copies from the source's (``createXMLFrom``): a full copy, without a backing
file (``runtime/libvirt_host.py``).  A UEFI source's variable store is copied too, so
the clone keeps its boot entries.

A clone is made on its source's host; ``--host`` naming another is refused
(:class:`~ketch.errors.HostUnsupported`: nothing moves a disk between hosts yet).
The clone gets a new instance-id, hostname (its name), MAC address, SSH port
and SSH host key: its seed ISO is rendered afresh from the source's user data.
A clone that fails half-way is removed (directory, then record, in reverse
order of their making); one a crashed ketchd left half-made is removed by
:func:`recover` (from ``service/recovery.py``) when ketchd starts again.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import uuid
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from ketch import cloudinit, space
from ketch.api.models import CloneResult
from ketch.errors import AlreadyExists, HostUnsupported, InvalidArgument, InvalidState, KetchError
from ketch.layout import InstanceDir
from ketch.model import LOCAL_HOST, InstanceSpec, Intent, OperationKind, PidStatus, State, Verb
from ketch.progress import Reporter
from ketch.runtime.driver import Driver, Purges
from ketch.service import guestlink, names
from ketch.service.context import Context
from ketch.service.inspect import get, require
from ketch.service.journal import journal
from ketch.service.launch import write_seed
from ketch.store.db import JournalEntry
from ketch.vocabulary import suspended_hint


def default_name(source: str, taken: Collection[str]) -> str:
    """``SOURCE-cloneN`` with the smallest N not taken, as Multipass names clones."""
    n = 1
    while f"{source}-clone{n}" in taken:
        n += 1
    candidate = f"{source}-clone{n}"
    try:
        return names.validate(candidate)
    except InvalidArgument as exc:
        raise InvalidArgument(
            f'the default clone name "{candidate}" is not a valid instance name',
            hint="give the clone a name with --name",
        ) from exc


class NameReservations:
    """Default clone names handed out but not yet made, so two clones never pick one name."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    def reserve(self, ctx: Context, source: str, name: str | None) -> str:
        """``name`` (validated), or the next free ``SOURCE-cloneN``; held until released."""
        if name:
            new = names.validate(name)
        else:
            new = default_name(source, {r.spec.name for r in ctx.store.all()} | self._held)
        self._held.add(new)
        return new

    def release(self, name: str) -> None:
        self._held.discard(name)


async def _require_local_disk(
    driver: Driver, source: str, src_dir: InstanceDir, instances: Path
) -> None:
    """The source's base image is there, and ``instances`` has room for the copy."""
    disk_info = await driver.disk_info(src_dir)
    backing = Path(disk_info.backing) if disk_info.backing else None
    if backing is not None and not backing.exists():
        raise KetchError(
            f'cannot clone "{source}": its base image {backing} is missing',
            hint="the image vault lost it; the source itself cannot start either",
        )
    space.require("clone", instances, size=space.allocated(src_dir.disk))


def _random_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def refuse_another_host(src: InstanceSpec, host: str | None) -> None:
    """A clone is made on its source's host: ``host`` (when given) must be that one.  Pure."""
    if host is None or host == src.host:
        return
    where = f'"{src.name}" is on host "{src.host}", not "{host}"'
    raise HostUnsupported(
        f"clone onto another host is not supported yet: {where}",
        hint=f'clone it on host "{src.host}" (leave out --host)',
    )


async def clone(
    ctx: Context,
    source: str,
    name: str,
    reporter: Reporter,
    *,
    mounts: bool = False,
    host: str | None = None,
) -> CloneResult:
    """Make ``name`` a stopped copy of the stopped instance ``source`` (on its host)."""
    names.validate(name)
    v = await get(ctx, source)
    if host not in (None, LOCAL_HOST, v.record.spec.host) and ctx.drivers is not None:
        ctx.drivers.host(host)  # an unknown host: NotFound, with its hint
    refuse_another_host(v.record.spec, host)
    hint = f"stop it first: 'ketch stop {source}'"
    if v.state is State.SUSPENDED:
        hint = suspended_hint(source, managed_save=v.record.spec.host != LOCAL_HOST)
    try:
        require(v, Verb.CLONE, hint=hint)
    except InvalidState as exc:
        if type(exc) is not InvalidState:  # deleted, quarantined: their own sentences
            raise
        # Multipass's sentence first (src/daemon/daemon.cpp, clone), then ketch's.
        raise InvalidState(
            exc.name,
            exc.current,
            exc.accepted,
            message=f"ketch can only clone stopped instances. {exc.message}",
            hint=exc.hint,
        ) from None
    if ctx.store.exists(name):
        raise AlreadyExists(f'instance "{name}" already exists')
    src_spec = v.record.spec
    src_dir, idir = ctx.root.instance(source), ctx.root.instance(name)
    driver = ctx.driver_for(src_spec)  # the clone's host is the source's
    user_cfg = (
        await asyncio.to_thread(cloudinit.parse_user_data, src_spec.cloud_init)
        if src_spec.cloud_init
        else None
    )
    if src_spec.host == LOCAL_HOST:  # a libvirt host's volumes are libvirt's to check
        await _require_local_disk(driver, source, src_dir, ctx.root.instances)
    async with journal(
        ctx, name, OperationKind.CLONE, step=f"from {source}", reporter=reporter
    ) as j:
        try:
            idir.path.mkdir(parents=True, exist_ok=False)
        except FileExistsError as exc:
            raise AlreadyExists(
                f"a directory for {name} is in the way: {idir.path}",
                hint="it belongs to no instance; remove it, or choose another name",
            ) from exc
        j.undo(guestlink.remove_tree, idir.path)
        ssh_port = guestlink.free_port(ctx.store.used_ports())
        spec = replace(
            src_spec,
            name=name,
            ssh_port=ssh_port,
            # on a remote host: a port there of its own too (host/ssh/jump.py)
            host_ssh_port=guestlink.free_port(ctx.store.used_ports() | {ssh_port})
            if src_spec.host_ssh_port
            else 0,
            mac=_random_mac(),
            networks=tuple(replace(n, mac=_random_mac()) for n in src_spec.networks),
            instance_id=f"i-{uuid.uuid4().hex[:16]}",
            created=ctx.clock.time(),
            forwards=(),  # host ports are the source's: a clone gets its own with 'ketch forward'
            # as Multipass, a clone does not inherit the source's mounts, unless asked to
            mounts=src_spec.mounts if mounts else (),
        )
        ctx.store.add(spec, Intent.STOP)
        j.undo(ctx.store.remove, name)

        j.step("copy-disk")
        reporter.step(f"Copying the disk of {source}")
        if isinstance(driver, Purges):  # the copied volume, on the host
            j.undo(driver.purge, spec, idir)
        await driver.copy_disk(src_dir, idir)
        src_vars = src_dir.efi_vars
        if src_vars.exists():  # a UEFI instance: its firmware's variables come along
            await asyncio.to_thread(shutil.copyfile, src_vars, idir.efi_vars)
        j.step("seed")
        reporter.step("Writing cloud-init seed")
        await asyncio.to_thread(write_seed, ctx, spec, user_cfg)
    return CloneResult(name=name, source=source)


async def recover(ctx: Context, entry: JournalEntry, reporter: Reporter) -> str:
    """A clone a crashed ketchd left unfinished is removed: directory, then record."""
    name = entry.instance
    idir = ctx.root.instance(name)
    if ctx.store.exists(name):
        spec = ctx.store.get(name).spec
        driver = ctx.driver_for(spec)
        obs = await driver.observe(spec, idir, probe_qmp=False)
        if obs.pid_status is PidStatus.OURS:
            raise KetchError(f'"{name}" runs: it is not removed')
        if isinstance(driver, Purges):  # what the clone has on its host (its disk volume)
            await driver.purge(spec, idir)
    error = guestlink.remove_tree(idir.path)
    if error:
        raise KetchError(f"could not remove the half-made clone {idir.path}: {error}")
    ctx.store.remove(name)
    return "clone rolled back: the half-made instance was removed"
