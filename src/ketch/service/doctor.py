"""``ketch doctor``: find, explain and (with ``--fix``) repair inconsistent state.

Without ``fix`` nothing is changed.  What cannot be repaired safely is
quarantined: the instance is kept, shown as Unknown with the reason, and
accepts only ``info``, ``doctor``, ``stop --force`` and ``delete --purge``.
ketch never deletes an instance, its disk or its record because something
looked wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ketch.codes import CODES
from ketch.errors import KetchError
from ketch.host import firmware, procs, qemu, ssh
from ketch.layout import DISK, InstanceDir
from ketch.model import BootSpec, Inconsistency, InstanceSpec, Intent, State
from ketch.model import InconsistencyCode as IC
from ketch.progress import Reporter
from ketch.runtime.driver import SUSPEND_TAG
from ketch.service import guestlink, journal, names, recovery
from ketch.service.context import Context
from ketch.service.inspect import View, view
from ketch.store.db import SnapshotRecord

Repair = Callable[[], Awaitable[str]]
POWEROFF_TIMEOUT = 60.0


@dataclass
class Finding:
    """One thing doctor found, and what ``--fix`` does about it."""

    instance: str
    code: str
    message: str
    fix: str
    repair: Repair | None = field(default=None, repr=False)
    outcome: str | None = None  # after --fix: what was done, or why not
    fixed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
            "fixed": self.fixed,
            "outcome": self.outcome,
        }


async def run(ctx: Context, wanted: list[str], *, fix: bool, reporter: Reporter) -> dict[str, Any]:
    """Examine the named instances (all, and the storage root, when none is named)."""
    records = [ctx.store.get(n) for n in wanted] if wanted else ctx.store.all()
    findings: list[Finding] = []
    for record in records:
        v = await view(ctx, record, inside_op=True)
        findings += await examine(ctx, v)
    if not wanted:
        findings += examine_root(ctx)
    if fix:
        for f in findings:
            if f.repair is None:
                f.fixed, f.outcome = False, "not repaired automatically: " + f.fix
                continue
            try:
                f.outcome = await f.repair()
                f.fixed = True
                reporter.step(f"{f.instance or 'storage'}: {f.outcome}")
            except KetchError as exc:
                f.fixed, f.outcome = False, exc.message
                reporter.warn(
                    f"{f.instance or 'storage'}: could not repair {f.code}: {exc.message}"
                )
    return {"findings": [f.to_dict() for f in findings], "fixed": fix}


# -- per instance -----------------------------------------------------------------


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
        out += await _check_disk(ctx, v)
        out += await _check_backing(ctx, v)
    if not v.derived.running and idir.efi_vars.exists():
        out += await _check_efi_vars(v, idir)
    if idir.disk.exists() and v.derived.state is not State.UNKNOWN:
        out += await _check_snapshots(ctx, v)
    if not v.derived.running and not v.record.deleted and not guestlink.port_free(spec.ssh_port):
        add(Finding(v.name, "port-taken",
                    f"SSH port {spec.ssh_port} is taken by another program",
                    "pick another free port", _new_port(ctx, spec)))  # fmt: skip
    if not v.derived.running and idir.qmp_socket.exists():
        add(Finding(v.name, "leftover-socket", "a QMP socket is left from a QEMU that is gone",
                    "remove it", _remove(idir.qmp_socket)))  # fmt: skip
    if v.record.quarantine and not out and _only_quarantine(v):
        add(Finding(v.name, "quarantine-cleared",
                    f"quarantined ({v.record.quarantine}) but nothing is wrong any more",
                    "release the quarantine", _release(ctx, v.name)))  # fmt: skip
    return out


def _only_quarantine(v: View) -> bool:
    return all(i.code is IC.QUARANTINED for i in v.derived.inconsistencies)


# -- what doctor does about each inconsistency ----------------------------------------


Fixer = Callable[[Context, View, Inconsistency], Repair]


def _always(v: View) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """Doctor's handling of one inconsistency code (its words are in ``ketch.codes``)."""

    fix: Fixer | None  # the repair ``--fix`` makes; None: reported, not repaired
    applies: Callable[[View], bool] = _always  # False: not a finding (said elsewhere)


def _idir(ctx: Context, v: View) -> InstanceDir:
    return ctx.root.instance(v.name)


def _not_quarantined(v: View) -> bool:
    return not v.record.quarantine


def _remove_pid(ctx: Context, v: View, _: Inconsistency) -> Repair:
    return _remove(_idir(ctx, v).pidfile, _idir(ctx, v).qmp_socket)


def _record_stopped(ctx: Context, v: View, _: Inconsistency) -> Repair:
    return _intent(ctx, v.name, Intent.STOP)


def _drop_stale_tag(ctx: Context, v: View, _: Inconsistency) -> Repair:
    return _drop_tag(ctx, v.record.spec, _idir(ctx, v))


def _end_qemu(ctx: Context, v: View, _: Inconsistency) -> Repair:
    return _kill(ctx, v.record.spec, _idir(ctx, v))


def _quarantine_for(ctx: Context, v: View, inc: Inconsistency) -> Repair:
    return _quarantine(ctx, v.name, inc.message)


RULES: dict[IC, Rule] = {
    IC.QUARANTINED: Rule(None, applies=lambda v: False),  # quarantine-cleared below
    IC.STALE_PID_FILE: Rule(_remove_pid),
    IC.FOREIGN_PID: Rule(_remove_pid),
    IC.PID_FILE_MISMATCH: Rule(
        lambda ctx, v, _: _write_pid(_idir(ctx, v), v.obs.pid or 0),
        applies=lambda v: v.obs.pid is not None,
    ),
    IC.DISK_ONLY_SUSPEND_TAG: Rule(_drop_stale_tag),
    IC.STRAY_SUSPEND_TAG: Rule(_drop_stale_tag),
    IC.INTERRUPTED_OPERATION: Rule(lambda ctx, v, _: _recover(ctx, v.name, reporter=None)),
    IC.MISSING_DISK: Rule(_quarantine_for, applies=_not_quarantined),
    IC.UNREADABLE_TAGS: Rule(_quarantine_for, applies=_not_quarantined),
    IC.DELETED_BUT_RUNNING: Rule(_end_qemu),
    IC.GUEST_HALTED: Rule(_end_qemu),
    IC.QMP_UNRESPONSIVE: Rule(lambda ctx, v, _: _poweroff(ctx, v.record.spec, _idir(ctx, v))),
    IC.PAUSED: Rule(lambda ctx, v, _: _cont(ctx, v.record.spec, _idir(ctx, v))),
    IC.PAUSED_IO_ERROR: Rule(lambda ctx, v, _: _cont_if_space(ctx, v.record.spec, _idir(ctx, v))),
    IC.UNEXPECTED_QMP_STATUS: Rule(None),
    IC.MISSING_SUSPEND_TAG: Rule(_record_stopped),
    IC.EXITED_UNEXPECTEDLY: Rule(_record_stopped),
}


async def _check_disk(ctx: Context, v: View) -> list[Finding]:
    idir = ctx.root.instance(v.name)
    try:
        result = await ctx.driver.check_disk(idir)
    except KetchError as exc:
        return [] if v.record.quarantine else [
            Finding(v.name, "disk-check-failed", f"qemu-img check failed: {exc.message}",
                    "quarantine the instance", _quarantine(ctx, v.name, exc.message))
        ]  # fmt: skip
    if result.corruptions or result.check_errors:
        if v.record.quarantine:
            return []
        reason = f"disk corrupted ({result.corruptions} corruptions)"
        advice = (
            "quarantine the instance; copy the disk away and inspect it with "
            "'qemu-img check' before any repair"
        )
        return [Finding(v.name, "disk-corrupt", reason, advice, _quarantine(ctx, v.name, reason))]
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
            await _quarantine(ctx, v.name, message)()
            raise KetchError(
                f"{message}, and fetching it again failed ({exc.message}): quarantined"
            ) from exc
        if image.id != spec.image_id:
            await _quarantine(ctx, v.name, message)()
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
        tags = await ctx.driver.disk_tags(ctx.root.instance(v.name))
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
                               None, time.time(), spec.cpus, spec.memory, spec.disk)
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


# -- storage root ---------------------------------------------------------------------


def examine_root(ctx: Context) -> list[Finding]:
    out: list[Finding] = []
    known = {r.spec.name for r in ctx.store.all()}
    base = ctx.root.instances
    dirs = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    for d in dirs:
        if d.name in known:
            continue
        if d.name in ctx.active:  # a launch or clone is making it right now
            continue
        if not (d / DISK).exists():
            out.append(Finding(d.name, "stray-directory", f"{d} has no record and no disk",
                               "none: remove it by hand if unneeded"))  # fmt: skip
            continue
        out.append(Finding(d.name, "directory-without-record",
                           f"{d} holds a disk but ketch has no record of it",
                           "adopt it as a quarantined instance (never deleted)",
                           _adopt(ctx, d)))  # fmt: skip
    for pid, disk in orphan_qemus(ctx.root.instances):
        name = disk.parent.name
        if name in known or name in ctx.active:
            continue
        if disk.parent.exists():
            what = "adopt the directory (done above); then 'stop --force' ends it"
        else:
            what = f"none: its directory is gone; end it with 'kill {pid}' if unneeded"
        out.append(
            Finding(name, "orphan-qemu", f"QEMU pid {pid} runs {disk} without a record", what)
        )
    return out


def orphan_qemus(instances: Path) -> list[tuple[int, Path]]:
    """QEMU processes whose disk lies under ``instances`` (found through /proc)."""
    found = []
    prefix = f"filename={qemu.opt(instances)}/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = procs.cmdline(int(entry.name))
        if not argv or "qemu-system" not in Path(argv[0]).name:
            continue
        for arg in argv:
            if arg.startswith("driver=file,") and prefix in arg:
                path = arg.split("filename=", 1)[1].split(",node-name", 1)[0].replace(",,", ",")
                if path.endswith("/" + DISK):
                    found.append((int(entry.name), Path(path)))
    return found


# -- repairs ---------------------------------------------------------------------


def _remove(*paths: Path) -> Repair:
    async def repair() -> str:
        procs.remove_quietly(*paths)
        return "removed " + ", ".join(p.name for p in paths)

    return repair


def _write_pid(idir: InstanceDir, pid: int) -> Repair:
    async def repair() -> str:
        tmp = idir.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(idir.pidfile)
        return f"the pid file names {pid} again"

    return repair


def _intent(ctx: Context, name: str, intent: Intent) -> Repair:
    async def repair() -> str:
        ctx.store.set_intent(name, intent)
        return f"recorded as {intent.value}"

    return repair


def _drop_tag(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    async def repair() -> str:
        await ctx.driver.delete_tag(spec, idir, SUSPEND_TAG)
        return "removed the stale 'suspend' tag"

    return repair


def _recover(ctx: Context, name: str, reporter: Reporter | None) -> Repair:
    async def repair() -> str:
        from ketch.progress import NULL

        done = []
        for entry in ctx.store.unfinished():
            if entry.instance == name:
                done.append(await recovery.recover(ctx, entry, reporter or NULL))
                journal.close(ctx, entry.id, "recovered", reporter or NULL)
        return "; ".join(done) or "nothing left to recover"

    return repair


def _cont(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    async def repair() -> str:
        await ctx.driver.cont(spec, idir)
        ctx.store.set_intent(spec.name, Intent.RUN)
        return "resumed the guest"

    return repair


MIN_FREE = 64 * 1024 * 1024  # below this, a guest paused by ENOSPC would pause again


def _cont_if_space(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    resume = _cont(ctx, spec, idir)

    async def repair() -> str:
        import shutil

        free = shutil.disk_usage(idir.path).free
        if free < MIN_FREE:
            raise KetchError(f"only {free // 2**20} MiB free in the storage root: free some first")
        return await resume()

    return repair


def _kill(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    async def repair() -> str:
        await ctx.driver.kill(spec, idir)
        return "ended QEMU"

    return repair


def _poweroff(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    async def repair() -> str:
        target = guestlink.target(ctx.root, spec)
        await ssh.run_in_guest(target, ["sudo", "-n", "poweroff"], timeout=30.0)
        pid = procs.read_pidfile(idir.pidfile)
        deadline = time.monotonic() + POWEROFF_TIMEOUT
        while pid and procs.alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if pid and procs.alive(pid):
            raise KetchError("the guest did not power off; 'ketch stop --force' ends it")
        procs.remove_quietly(idir.pidfile, idir.qmp_socket)
        ctx.store.set_intent(spec.name, Intent.STOP)
        return "the guest powered off; the instance is Stopped"

    return repair


def _quarantine(ctx: Context, name: str, reason: str) -> Repair:
    async def repair() -> str:
        ctx.store.set_quarantine(name, reason)
        return f"quarantined: {reason}"

    return repair


def _release(ctx: Context, name: str) -> Repair:
    async def repair() -> str:
        ctx.store.set_quarantine(name, None)
        return "quarantine released"

    return repair


def _new_port(ctx: Context, spec: InstanceSpec) -> Repair:
    async def repair() -> str:
        port = guestlink.free_port(ctx.store.used_ports())
        ctx.store.set_spec(replace(spec, ssh_port=port))
        return f"SSH port is now {port}"

    return repair


def _adopt(ctx: Context, d: Path) -> Repair:
    async def repair() -> str:
        try:
            names.validate(d.name)
        except KetchError as exc:
            raise KetchError(f"cannot adopt {d}: {exc.message}") from exc
        info = None
        with contextlib.suppress(KetchError, ValueError):
            info = await ctx.driver.disk_info(ctx.root.instance(d.name))
        spec = InstanceSpec(
            name=d.name,
            image="unknown",
            image_id="unknown",
            release="unknown (adopted by ketch doctor)",
            cpus=1,
            memory=1024**3,
            disk=info.virtual_size if info else 0,
            boot=BootSpec(),
            base_disk=(info.backing or "") if info else "",
            ssh_port=guestlink.free_port(ctx.store.used_ports()),
            mac="52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3)),
            instance_id=f"i-{uuid.uuid4().hex[:16]}",
            created=d.stat().st_mtime,
        )
        ctx.store.add(spec, Intent.STOP)
        reason = "found on disk without a record (adopted by ketch doctor)"
        ctx.store.set_quarantine(d.name, reason)
        return f"adopted as a quarantined instance: {reason}"

    return repair
