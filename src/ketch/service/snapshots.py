"""Use cases: snapshots of stopped instances (take, restore, delete, list, info).

A snapshot is a qcow2 internal snapshot of the instance disk under a tag ketch
makes up, ``ketch-snap-<uuid>``: it can clash neither with the ``suspend`` tag
nor with any name a user picks.  What the user sees (the name, the comment,
the parent, the instance's cpus/memory/disk at the time) is in the store.
Names default to ``snapshot1``, ``snapshot2``… (one more than the snapshots
ever taken of the instance), as Multipass does; the parent is the snapshot the
disk was last taken at or restored to (the *head*).  Restoring also brings
back the cpus, memory and disk size recorded with the snapshot (``qemu-img
snapshot -a`` restores the disk's size itself).

Each operation is journaled step by step; :func:`recover_take`,
:func:`recover_restore` and :func:`recover_delete` (called by
``service/recovery.py``) finish (restore, delete) or roll back (take) what a
crashed ketchd left half-done.  The disk's tags are the driver's of the
instance's host (``ctx.driver_for(spec)``: ``Driver.create_tag``, ``apply_tag``,
``delete_tag``, ``disk_tags``): qemu-img's and QMP's on the local QEMU driver, libvirt's
domain snapshots on a libvirt host (``runtime/libvirt_host.py``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import replace

from ketch import space
from ketch.api.models import (
    RestoreResult,
    SnapshotInfo,
    SnapshotListEntry,
    SnapshotListReply,
    SnapshotResult,
)
from ketch.errors import AlreadyExists, KetchError
from ketch.layout import InstanceDir
from ketch.model import LOCAL_HOST, InstanceSpec, OperationKind, PidStatus, State, Verb
from ketch.progress import Reporter
from ketch.runtime.driver import SUSPEND_TAG
from ketch.service.context import Context
from ketch.service.inspect import View, get, require
from ketch.service.journal import journal
from ketch.service.names import validate as validate_label
from ketch.store.db import JournalEntry, SnapshotRecord
from ketch.vocabulary import suspended_hint

TAG_PREFIX = "ketch-snap-"
DEFAULT_PREFIX = "snapshot"

# -- pure parts ------------------------------------------------------------------------------


def new_tag() -> str:
    """A fresh internal tag: never ``suspend``, never a user's name."""
    return TAG_PREFIX + uuid.uuid4().hex


def validate_name(name: str) -> str:
    """Snapshot names follow the instance-name rules; a dot separates instance and snapshot."""
    return validate_label(name, what="snapshot")


def default_name(taken: int, existing: Collection[str]) -> str:
    """``snapshotN`` with N one more than the snapshots ever taken, skipping names in use."""
    n = taken + 1
    while f"{DEFAULT_PREFIX}{n}" in existing:
        n += 1
    return f"{DEFAULT_PREFIX}{n}"


def snapshot_mismatches(
    tags: Sequence[str], recorded: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Compare a disk's internal snapshot tags with the tags the store records for it.

    Returns ``(tags without metadata, recorded tags missing from the disk)``,
    each in the order given, without duplicates.  The ``suspend`` tag belongs
    to suspend/resume, not to snapshots, and is never reported.  Pure.
    """
    on_disk, known = set(tags), set(recorded)
    orphans = [t for t in dict.fromkeys(tags) if t not in known and t != SUSPEND_TAG]
    missing = [t for t in dict.fromkeys(recorded) if t not in on_disk]
    return orphans, missing


def _step_tag(entry: JournalEntry) -> str | None:
    """The tag a journal step such as ``create-tag ketch-snap-…`` names."""
    _, _, tag = entry.step.partition(" ")
    return tag if tag.startswith(TAG_PREFIX) else None


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def list_entry(snap: SnapshotRecord) -> SnapshotListEntry:
    """One snapshot in ``ketch list --snapshots --format json`` (Multipass's keys)."""
    return SnapshotListEntry(parent=snap.parent or "", comment=snap.comment)


def info_entry(snap: SnapshotRecord, children: Sequence[str]) -> SnapshotInfo:
    """One snapshot in ``ketch info NAME.SNAP --format json``."""
    return SnapshotInfo(
        cpu_count=str(snap.cpus),
        disk_space=str(snap.disk),
        memory_size=str(snap.memory),
        mounts={},
        created=_stamp(snap.created),
        parent=snap.parent or "",
        children=list(children),
        comment=snap.comment,
        tag=snap.tag,
    )


# -- looking -------------------------------------------------------------------------------


def list_doc(ctx: Context, names: Sequence[str] = ()) -> SnapshotListReply:
    """``{"errors": [...], "info": {instance: {snapshot: {parent, comment}}}}``."""
    errors: list[str] = []
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        if not ctx.store.exists(name):
            errors.append(f'instance "{name}" does not exist')
    info: dict[str, dict[str, SnapshotListEntry]] = {}
    for snap in ctx.store.snapshots():
        if wanted and snap.instance not in wanted:
            continue
        info.setdefault(snap.instance, {})[snap.name] = list_entry(snap)
    return SnapshotListReply(errors=errors, info=info)


def info_doc(
    ctx: Context, refs: Sequence[str]
) -> tuple[dict[str, dict[str, SnapshotInfo]], list[str]]:
    """Details of ``INSTANCE.SNAPSHOT`` references: ``({instance: {snap: …}}, errors)``."""
    found: dict[str, dict[str, SnapshotInfo]] = {}
    errors: list[str] = []
    for ref in dict.fromkeys(refs):
        instance, _, name = ref.partition(".")
        if not ctx.store.exists(instance):
            errors.append(f'instance "{instance}" does not exist')
            continue
        snaps = ctx.store.snapshots(instance)
        snap = next((s for s in snaps if s.name == name), None)
        if snap is None:
            errors.append(f'snapshot "{instance}.{name}" does not exist')
            continue
        children = [s.name for s in snaps if s.parent == name]
        found.setdefault(instance, {})[name] = info_entry(snap, children)
    return found, errors


# -- acting --------------------------------------------------------------------------------


def _require_stopped(v: View, verb: Verb) -> None:
    name = v.name
    if v.state is State.SUSPENDED:
        hint = suspended_hint(name, managed_save=v.record.spec.host != LOCAL_HOST)
    elif v.state is State.UNKNOWN:
        hint = f"see 'ketch info {name}'; 'ketch stop --force {name}' ends it"
    else:
        hint = f"stop it first: 'ketch stop {name}'"
    require(v, verb, hint=hint)


async def _drop_tag_quietly(ctx: Context, v: View, tag: str, reporter: Reporter) -> None:
    try:
        spec = v.record.spec
        await ctx.driver_for(spec).delete_tag(spec, ctx.root.instance(v.name), tag)
    except KetchError as exc:
        reporter.warn(
            f"could not remove the partial snapshot tag {tag}: {exc.message}; "
            "it is listed as a tag without metadata"
        )


async def take(
    ctx: Context, name: str, snapshot: str | None, comment: str, reporter: Reporter
) -> SnapshotResult:
    """Snapshot a stopped instance's disk."""
    v = await get(ctx, name)
    _require_stopped(v, Verb.SNAPSHOT)
    return SnapshotResult(name=name, snapshot=await _take(ctx, v, snapshot, comment, reporter))


async def _take(
    ctx: Context, v: View, snapshot: str | None, comment: str, reporter: Reporter
) -> str:
    name, spec = v.name, v.record.spec
    existing = {s.name for s in ctx.store.snapshots(name)}
    if snapshot:
        snap = validate_name(snapshot)
    else:
        snap = default_name(ctx.store.snapshots_taken(name), existing)
    if snap in existing:
        # Multipass's sentence first (include/multipass/exceptions/snapshot_exceptions.h)
        raise AlreadyExists(
            f"Snapshot already exists: {name}.{snap}",
            hint="choose another name with --name, or delete it with "
            f"'ketch delete --purge {name}.{snap}'",
        )
    idir, tag = ctx.root.instance(name), new_tag()
    space.require("snapshot", idir.path)
    async with journal(
        ctx, name, OperationKind.SNAPSHOT, step=f"create-tag {tag}", reporter=reporter
    ) as j:
        reporter.step(f"Taking snapshot {name}.{snap}")
        await ctx.driver_for(spec).create_tag(spec, idir, tag)
        j.undo(_drop_tag_quietly, ctx, v, tag, reporter)
        j.step(f"record {tag}")
        ctx.store.add_snapshot(
            SnapshotRecord(
                instance=name,
                name=snap,
                tag=tag,
                comment=comment,
                parent=ctx.store.snapshot_head(name),
                created=ctx.clock.time(),
                cpus=spec.cpus,
                memory=spec.memory,
                disk=spec.disk,
            )
        )
    return snap


async def restore(
    ctx: Context, name: str, snapshot: str, *, snapshot_first: bool, reporter: Reporter
) -> RestoreResult:
    """Bring a stopped instance's disk and resources back to a snapshot.

    With ``snapshot_first`` the current state is snapshotted first (default
    name, comment "Before restoring SNAP"), as Multipass offers.
    """
    v = await get(ctx, name)
    _require_stopped(v, Verb.RESTORE)
    meta = ctx.store.get_snapshot(name, snapshot)
    spec, idir = v.record.spec, ctx.root.instance(name)
    driver = ctx.driver_for(spec)
    if meta.tag not in await driver.disk_tags(spec, idir):
        raise KetchError(
            f'cannot restore "{name}.{snapshot}": its data (tag {meta.tag}) is not in the disk',
            hint=f"'ketch delete --purge {name}.{snapshot}' removes the snapshot's record",
        )
    saved = None
    if snapshot_first:
        saved = await _take(ctx, v, None, f"Before restoring {snapshot}", reporter)
    async with journal(
        ctx, name, OperationKind.RESTORE, step=f"apply {meta.tag}", reporter=reporter
    ) as j:
        reporter.step(f"Restoring {name} to {snapshot}")
        await driver.apply_tag(spec, idir, meta.tag)
        j.step(f"record {meta.tag}")
        _record_restore(ctx, meta)
    return RestoreResult(name=name, snapshot=snapshot, saved=saved)


def _record_restore(ctx: Context, meta: SnapshotRecord) -> None:
    spec = ctx.store.get(meta.instance).spec
    ctx.store.set_spec(replace(spec, cpus=meta.cpus, memory=meta.memory, disk=meta.disk))
    ctx.store.set_snapshot_head(meta.instance, meta.name)


async def delete(ctx: Context, name: str, snapshot: str, reporter: Reporter) -> SnapshotResult:
    """Remove a snapshot's tag (over QMP while the instance runs) and its record."""
    v = await get(ctx, name)
    require(
        v,
        Verb.DELETE_SNAPSHOT,
        hint=f"see 'ketch info {name}'; 'ketch stop --force {name}' first",
    )
    meta = ctx.store.get_snapshot(name, snapshot)
    spec, idir = v.record.spec, ctx.root.instance(name)
    driver = ctx.driver_for(spec)
    step = f"delete-tag {meta.tag}"
    async with journal(ctx, name, OperationKind.DELETE_SNAPSHOT, step=step, reporter=reporter) as j:
        try:
            present = meta.tag in await driver.disk_tags(spec, idir)
        except KetchError:
            present = True  # unknown: let the deletion itself say what is wrong
        if present:
            reporter.step(f"Deleting snapshot {name}.{snapshot}")
            await driver.delete_tag(spec, idir, meta.tag)
        else:
            reporter.warn(f"the snapshot's tag {meta.tag} was already gone; removing its record")
        j.step(f"forget {meta.tag}")
        ctx.store.remove_snapshot(name, snapshot)
    return SnapshotResult(name=name, snapshot=snapshot)


# -- after a crash (called by service/recovery.py) ---------------------------------------------


async def _idle(ctx: Context, instance: str) -> tuple[InstanceSpec, InstanceDir, bool]:
    """Recovery changes a disk only while no QEMU of ours holds it; whether it has a disk
    (a local file, or a volume on a libvirt host: the driver's observation says)."""
    spec, idir = ctx.store.get(instance).spec, ctx.root.instance(instance)
    obs = await ctx.driver_for(spec).observe(spec, idir, probe_qmp=False)
    if obs.pid_status is PidStatus.OURS:
        raise KetchError(f'"{instance}" runs: its disk is left as it is')
    return spec, idir, obs.disk_exists


async def _drop_if_there(ctx: Context, instance: str, tag: str) -> bool:
    """Remove ``tag`` from the idle instance's disk if it is there; whether it was."""
    spec, idir, disk = await _idle(ctx, instance)
    driver = ctx.driver_for(spec)
    if not disk or tag not in await driver.disk_tags(spec, idir):
        return False
    await driver.delete_tag(spec, idir, tag)
    return True


async def recover_take(ctx: Context, entry: JournalEntry, reporter: Reporter) -> str:
    """An interrupted snapshot is rolled back, unless its record was written (then it is done)."""
    tag = _step_tag(entry)
    if tag is None:
        return "snapshot had not started: nothing to do"
    if ctx.store.snapshot_by_tag(tag) is not None:
        return "snapshot finished: it was recorded"
    if not ctx.store.exists(entry.instance):
        return "the instance no longer exists"
    if await _drop_if_there(ctx, entry.instance, tag):
        return f"snapshot rolled back: its unrecorded tag {tag} was removed"
    return "snapshot rolled back: no tag had been made"


async def recover_restore(ctx: Context, entry: JournalEntry, reporter: Reporter) -> str:
    """An interrupted restore is applied again and recorded (both steps are idempotent)."""
    tag = _step_tag(entry)
    meta = ctx.store.snapshot_by_tag(tag) if tag else None
    if meta is None or not ctx.store.exists(entry.instance):
        return "restore cannot be finished: the snapshot no longer exists"
    spec, idir, _ = await _idle(ctx, entry.instance)
    await ctx.driver_for(spec).apply_tag(spec, idir, meta.tag)
    _record_restore(ctx, meta)
    return f"restore finished: the disk is at snapshot {meta.name}"


async def recover_delete(ctx: Context, entry: JournalEntry, reporter: Reporter) -> str:
    """An interrupted snapshot deletion is carried to its end."""
    tag = _step_tag(entry)
    if tag is None or not ctx.store.exists(entry.instance):
        return "nothing to do"
    meta = ctx.store.snapshot_by_tag(tag)
    await _drop_if_there(ctx, entry.instance, tag)
    if meta is not None:
        ctx.store.remove_snapshot(meta.instance, meta.name)
    return "snapshot deletion finished"
