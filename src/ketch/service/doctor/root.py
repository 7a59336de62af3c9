"""``ketch doctor`` on the storage root: directories without a record, QEMUs without one.

A directory holding a disk but no record is adopted (as a quarantined,
stopped instance: never deleted); one without a disk is only reported; a
QEMU running a disk under the root that no record names is reported.  A
name a launch or clone is making right now is left alone.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import uuid
from pathlib import Path

from ketch.errors import KetchError
from ketch.host import procs, qemu
from ketch.layout import DATABASE, DISK
from ketch.model import BootSpec, InstanceSpec, Intent
from ketch.service import guestlink, names
from ketch.service.context import Context
from ketch.service.doctor.finding import Finding, Repair


def examine_root(ctx: Context) -> list[Finding]:
    out: list[Finding] = database_repaired(ctx)
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
                           adopt(ctx, d)))  # fmt: skip
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


def database_repaired(ctx: Context) -> list[Finding]:
    """The note ketchd left when it repaired or rebuilt the database (``store/repair.py``)."""
    note = ctx.root.database_repaired
    try:
        doc = json.loads(note.read_text())
        lines = [str(line) for line in doc.get("lines", [])]
    except (OSError, ValueError, AttributeError):
        return []

    async def acknowledge() -> str:
        note.unlink(missing_ok=True)
        return "acknowledged (the damaged copy, if any, is kept)"

    message = f"at {doc.get('when', '?')}: " + "; ".join(lines or ["the database was rebuilt"])
    return [
        Finding(
            DATABASE, "database-repaired", message, "acknowledge it (the note is removed)",
            acknowledge,
        )
    ]  # fmt: skip


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


def adopt(ctx: Context, d: Path) -> Repair:
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
