"""``ketch doctor`` on one instance: its inconsistencies as findings, and the costlier checks.

:func:`examine` turns each inconsistency the instance shows into a finding
through :data:`~ketch.service.doctor.rules.RULES`, then adds what ``list``
cannot afford to look at: the disk (``qemu-img check``), its base image, the
UEFI variable store, snapshot tags against their metadata, the SSH port, a
leftover QMP socket, and a quarantine nothing justifies any more.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from ketch.codes import CODES
from ketch.errors import KetchError
from ketch.host import firmware
from ketch.layout import InstanceDir
from ketch.model import InconsistencyCode as IC
from ketch.model import State
from ketch.service import guestlink
from ketch.service.context import Context
from ketch.service.doctor import repairs
from ketch.service.doctor.finding import Finding
from ketch.service.doctor.mounts import examine as mount_findings
from ketch.service.doctor.rules import RULES
from ketch.service.inspect import View
from ketch.store.db import SnapshotRecord


async def examine(ctx: Context, v: View) -> list[Finding]:
    spec, idir = v.record.spec, ctx.root.instance(v.name)
    out: list[Finding] = []
    add = out.append
    for inc in v.derived.inconsistencies:
        rule = RULES[inc.code]
        if rule.applies(v):
            repair = rule.fix(ctx, v, inc) if rule.fix else None
            add(Finding(v.name, inc.code, inc.message, CODES[inc.code].fix, repair))
    if not v.derived.running and idir.disk.exists():
        backing = await _check_backing(ctx, v)
        # Without its base image qemu-img cannot open the disk at all: that is no
        # damage to quarantine for; the disk is checked once the image is back.
        out += backing or await _check_disk(ctx, v)
    if not v.derived.running and idir.efi_vars.exists():
        out += await _check_efi_vars(v, idir)
    if idir.disk.exists() and v.derived.state is not State.UNKNOWN:
        out += await _check_snapshots(ctx, v)
    if not v.derived.running and not v.record.deleted and not guestlink.port_free(spec.ssh_port):
        add(Finding(v.name, "port-taken",
                    f"SSH port {spec.ssh_port} is taken by another program",
                    "pick another free port", repairs.new_port(ctx, spec)))  # fmt: skip
    if not v.derived.running and idir.qmp_socket.exists():
        add(Finding(v.name, "leftover-socket", "a QMP socket is left from a QEMU that is gone",
                    "remove it", repairs.remove(idir.qmp_socket)))  # fmt: skip
    out += await mount_findings(ctx, v)
    if v.record.quarantine and not out and _only_quarantine(v):
        add(Finding(v.name, "quarantine-cleared",
                    f"quarantined ({v.record.quarantine}) but nothing is wrong any more",
                    "release the quarantine", repairs.release(ctx, v.name)))  # fmt: skip
    return out


def _only_quarantine(v: View) -> bool:
    return all(i.code is IC.QUARANTINED for i in v.derived.inconsistencies)


async def _check_disk(ctx: Context, v: View) -> list[Finding]:
    idir = ctx.root.instance(v.name)
    try:
        result = await ctx.driver.check_disk(idir)
    except KetchError as exc:
        return [] if v.record.quarantine else [
            Finding(v.name, "disk-check-failed", f"qemu-img check failed: {exc.message}",
                    "quarantine the instance", repairs.quarantine(ctx, v.name, exc.message))
        ]  # fmt: skip
    if result.corruptions or result.check_errors:
        if v.record.quarantine:
            return []
        reason = f"disk corrupted ({result.corruptions} corruptions)"
        advice = (
            "quarantine the instance; copy the disk away and inspect it with "
            "'qemu-img check' before any repair"
        )
        return [
            Finding(v.name, "disk-corrupt", reason, advice, repairs.quarantine(ctx, v.name, reason))
        ]
    if result.leaks:

        async def repair() -> str:
            after = await ctx.driver.check_disk(idir, repair_leaks=True)
            if after.leaks:
                raise KetchError(f"{after.leaks} leaked clusters remain")
            return f"repaired {result.leaks} leaked clusters"

        return [Finding(v.name, "disk-leaks", f"{result.leaks} leaked clusters in the disk",
                        "repair them (qemu-img check -r leaks)", repair)]  # fmt: skip
    return []


async def _check_efi_vars(v: View, idir: InstanceDir) -> list[Finding]:
    """A UEFI instance's variable store: QEMU will not start on one of the wrong size.

    It only holds boot entries the firmware can do without (the image's
    loader is on the removable-media path), so it is moved aside, never
    deleted, and the next start makes a fresh one from the firmware's template.
    """
    try:
        efi = await asyncio.to_thread(firmware.find_uefi)
        want = efi.vars_template.stat().st_size
        have = idir.efi_vars.stat().st_size
    except (KetchError, OSError):
        return []  # no firmware to compare with: start says so itself
    if have == want:
        return []

    async def repair() -> str:
        aside = idir.efi_vars.with_name(f"{idir.efi_vars.name}.damaged-{int(time.time())}")
        idir.efi_vars.rename(aside)
        return (
            f"moved the UEFI variable store aside to {aside.name}; the next start makes a new one"
        )

    return [Finding(v.name, "efivars-damaged",
                    f"the UEFI variable store is {have} bytes; the firmware needs {want}",
                    "move it aside; the next start makes a fresh one (boot entries the guest "
                    "added are lost, the image's own loader still boots)", repair)]  # fmt: skip


async def _check_backing(ctx: Context, v: View) -> list[Finding]:
    spec = v.record.spec
    if Path(spec.base_disk).exists():
        return []
    message = f"the base image {spec.base_disk} is missing"

    async def repair() -> str:
        from ketch.progress import NULL

        try:
            image = await ctx.images.resolve(spec.image, NULL)
        except KetchError as exc:
            await repairs.quarantine(ctx, v.name, message)()
            raise KetchError(
                f"{message}, and fetching it again failed ({exc.message}): quarantined"
            ) from exc
        if image.id != spec.image_id:
            await repairs.quarantine(ctx, v.name, message)()
            raise KetchError(
                f"{message}; the catalogue now has {image.id}, not {spec.image_id}: quarantined"
            )
        if image.disk != spec.base_disk:
            await ctx.driver.rebase_disk(
                ctx.root.instance(v.name), base=Path(image.disk), base_format=image.disk_format
            )
            ctx.store.set_spec(replace(spec, base_disk=image.disk, boot=image.boot))
        return f"fetched {image.id} again"

    return [Finding(v.name, "missing-base-image", message,
                    "fetch the same image again, else quarantine", repair)]  # fmt: skip


async def _check_snapshots(ctx: Context, v: View) -> list[Finding]:
    """Snapshot tags in the disk without metadata, and metadata whose tag is gone."""
    from ketch.service import snapshots

    try:
        spec = v.record.spec
        tags = await ctx.driver_for(spec).disk_tags(spec, ctx.root.instance(v.name))
    except KetchError:
        return []  # unreadable tags are reported (and quarantined) above
    records = ctx.store.snapshots(v.name)
    orphans, missing = snapshots.snapshot_mismatches(tags, [r.tag for r in records])
    out = []
    for tag in orphans:

        async def adopt(tag: str = tag) -> str:
            name = snapshots.default_name(
                ctx.store.snapshots_taken(v.name), [r.name for r in ctx.store.snapshots(v.name)]
            )
            spec = ctx.store.get(v.name).spec
            ctx.store.add_snapshot(
                SnapshotRecord(v.name, name, tag, f"recovered by ketch doctor (tag {tag})",
                               None, ctx.clock.time(), spec.cpus, spec.memory, spec.disk)
            )  # fmt: skip
            return f"recorded tag {tag} as snapshot {name}"

        out.append(Finding(v.name, "snapshot-without-metadata",
                           f"the disk holds snapshot tag {tag} that ketch has no record of",
                           "record it as a snapshot (its data is kept)", adopt))  # fmt: skip
    for record in (r for r in records if r.tag in missing):

        async def forget(record: SnapshotRecord = record) -> str:
            ctx.store.remove_snapshot(v.name, record.name)
            return f"forgot snapshot {record.name} (its data was gone)"

        out.append(Finding(v.name, "snapshot-without-tag",
                           f"snapshot {record.name} is recorded but its tag {record.tag} "
                           "is not in the disk", "forget the record (nothing is left to restore)",
                           forget))  # fmt: skip
    return out
