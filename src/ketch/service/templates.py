"""Use case: warm-launch templates: their key, making one, finding one, listing, pruning.

A template is per (image, cpus, memory, firmware): one directory under
``templates/`` of the storage root (``layout.TemplateDir``), named by the image
and a key that also covers what makes an old template unusable: the image's
id, ketch's guest agent (``runtime/warm_guest.py``) and QEMU's version.  A
template whose key no longer matches is not found (so the next one is made),
listed as stale, and removed by ``image prune``.  The record is written last:
a directory without one is a template being made, or one that was never
finished (a crash), and is removed by the next build of that key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ketch.api.models import TemplateInfo
from ketch.errors import InvalidArgument, KetchError
from ketch.host.accel import qemu_version
from ketch.layout import FILE_MODE, InstanceDir, Root, TemplateDir
from ketch.model import BootSpec, ImageInfo
from ketch.progress import Reporter
from ketch.runtime import warm_guest
from ketch.runtime.driver import WarmStart
from ketch.runtime.template import TemplateBoot, golden_size
from ketch.runtime.warm_flavors import Guest, guest_of
from ketch.runtime.warm_flavors import image_name as image_short_name
from ketch.service import accel, guestlink
from ketch.service.context import Context
from ketch.service.template_seed import write_template_seed

log = logging.getLogger(__name__)

BUILD_TIMEOUT = 600.0  # booting the template's guest until its agent says idle
_BUILDING: dict[str, asyncio.Lock] = {}


@dataclass(frozen=True)
class Template:
    """A finished template, as its record says."""

    key: str
    image: str  # as the user named it
    image_id: str
    cpus: int
    memory: int
    firmware: str
    macs: tuple[str, ...]  # the template guest's MAC of each NIC (a clone's agent changes them)
    disk: int  # the golden disk's size: a clone's is this or larger
    base: str  # the image's disk, the golden disk's backing file
    qemu: str  # QEMU's version line when it was made
    agent: str  # warm_guest.digest() when it was made
    created: float
    build_seconds: float
    size: int  # bytes on disk (the memory file's allocated pages, the golden disk, the state)
    tdir: TemplateDir

    @property
    def nics(self) -> int:
        """NICs after net0 (the managed network's)."""
        return len(self.macs) - 1


def firmware_of(boot: BootSpec) -> str:
    """How a template boots: ``kernel`` (its own), else the firmware (``bios``, ``uefi``)."""
    return "kernel" if boot.kernel else boot.firmware


def guest(image: ImageInfo) -> Guest:
    """The warm agent's flavor of an image that has templates (see :func:`cold_reason`)."""
    found = guest_of(image.id)
    if found is None:
        raise InvalidArgument(f"{image.release} has no warm-launch templates")
    return found


def cold_reason(image: ImageInfo, boot: BootSpec) -> str | None:
    """Why no template of ``image`` booted by ``boot`` can exist (pure), or None."""
    if guest_of(image.id) is None:
        return f"{image.release} has no warm-launch templates (tiny and debian-12 have)"
    return None


async def key_of(image: ImageInfo, cpus: int, memory: int, firmware: str, nics: int) -> str:
    """The template directory's name for these (pure, given QEMU's version)."""
    blob = json.dumps(
        {
            "image": image.id,
            "cpus": cpus,
            "memory": memory,
            "firmware": firmware,
            "nics": nics,
            "qemu": await qemu_version(),
            "agent": warm_guest.digest(guest(image)),
        },
        sort_keys=True,
    )
    short = image_short_name(image.id)  # "ketch:tiny@2026…" -> "tiny"
    name = "".join(c if c.isalnum() or c in "-." else "-" for c in short) or "image"
    return f"{name[:40]}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _allocated(path: Path) -> int:
    total = 0
    for p in path.iterdir():
        with contextlib.suppress(OSError):
            total += p.stat().st_blocks * 512
    return total


def load(tdir: TemplateDir) -> Template | None:
    """The template of ``tdir`` when it is finished (its record is there), else None."""
    try:
        data = json.loads(tdir.record.read_text())
        return Template(
            key=tdir.path.name,
            image=str(data["image"]),
            image_id=str(data["image_id"]),
            cpus=int(data["cpus"]),
            memory=int(data["memory"]),
            firmware=str(data["firmware"]),
            macs=tuple(str(m) for m in data["macs"]),
            disk=int(data["disk"]),
            base=str(data["base"]),
            qemu=str(data["qemu"]),
            agent=str(data["agent"]),
            created=float(data["created"]),
            build_seconds=float(data.get("build_seconds", 0.0)),
            size=_allocated(tdir.path),
            tdir=tdir,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def all_templates(ctx: Context) -> list[Template]:
    return all_templates_at(ctx.root)


def all_templates_at(root: Root) -> list[Template]:
    """Every finished template below ``root``."""
    if not root.templates.is_dir():
        return []
    found = (load(root.template(p.name)) for p in sorted(root.templates.iterdir()))
    return [t for t in found if t is not None]


async def is_current(t: Template) -> bool:
    """Was ``t`` made by this QEMU and this guest agent?"""
    flavor = guest_of(t.image_id)
    return (
        flavor is not None
        and t.qemu == await qemu_version()
        and t.agent == warm_guest.digest(flavor)
    )


async def find(
    ctx: Context, image: ImageInfo, boot: BootSpec, cpus: int, memory: int, nics: int
) -> Template | None:
    """The finished, current template for these, if there is one (its files are not
    checked here: one that does not load makes a cold launch that says so)."""
    if cold_reason(image, boot) is not None:
        return None
    key = await key_of(image, cpus, memory, firmware_of(boot), nics)
    t = load(ctx.root.template(key))
    if t is None or t.image_id != image.id or not await is_current(t):
        return None
    return t


STATE_MAGIC = b"QEVM"  # a QEMU migration stream's first bytes
DISK_MAGIC = b"QFI\xfb"  # a qcow2's


def damage(t: Template) -> str | None:
    """What is wrong with a finished template's files (cheap: sizes and first bytes), or
    None.  A damaged template would not load (a garbage state) or, worse, load a guest
    that hangs (a memory file cut short reads as zeros) until the hand-over times out."""
    try:
        size = t.tdir.memory.stat().st_size
        if size != t.memory:
            return f"its memory file is {size} bytes, not {t.memory}"
        with t.tdir.state.open("rb") as f:
            if f.read(len(STATE_MAGIC)) != STATE_MAGIC:
                return "its device state is not a QEMU migration stream"
        with t.tdir.disk.open("rb") as f:
            if f.read(len(DISK_MAGIC)) != DISK_MAGIC:
                return "its disk is not a qcow2 image"
        if t.firmware == "uefi" and not t.tdir.boot.efi_vars.stat().st_size:
            return "its UEFI variable store is empty"
    except OSError as exc:
        return f"{Path(exc.filename or '?').name}: {exc.strerror}"
    return None


def remove(tdir: TemplateDir) -> None:
    """Remove a template (its clones keep working: each has its own disk; a running
    clone keeps the memory file's pages it mapped)."""
    tdir.record.unlink(missing_ok=True)  # first: never half a template that looks finished
    shutil.rmtree(tdir.path, ignore_errors=True)


async def prune(ctx: Context, *, days: float) -> list[Template]:
    """Remove stale templates (another QEMU or guest agent than now, or their image
    no longer cached) and those no launch used for ``days`` (0: all of them)."""
    gone = []
    now = ctx.clock.time()
    for t in all_templates(ctx):
        if not await is_current(t) or not _image_cached(t) or now - last_used(t) >= days * 86400:
            remove(t.tdir)
            gone.append(t)
    return gone


def last_used(t: Template) -> float:
    """When a launch last used ``t`` (its record's time, touched by each warm launch)."""
    try:
        return t.tdir.record.stat().st_mtime
    except OSError:
        return t.created


def touch(t: Template) -> None:
    with contextlib.suppress(OSError):
        os.utime(t.tdir.record)


def _image_cached(t: Template) -> bool:
    """Is the image the golden disk is an overlay on still there?"""
    return Path(t.base).exists()


def _random_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


async def build(
    ctx: Context,
    image_name: str,
    image: ImageInfo,
    cpus: int,
    memory: int,
    disk: int,
    reporter: Reporter,
    *,
    nics: int,
    nice: bool = False,
    firmware: str | None = None,
) -> Template:
    """Make (or find) the template of ``image`` for ``cpus``, ``memory`` and ``nics``
    NICs after net0, booted through ``firmware`` (None: what the image needs, as a
    launch without ``--firmware``); its disk is ``disk`` bytes (or the image's size when
    larger).  With ``nice``, its QEMU runs at the lowest CPU priority (a background
    rebuild)."""
    from ketch.service.launch import boot_for

    driver = ctx.driver
    if not isinstance(driver, WarmStart):
        raise InvalidArgument(f"the {driver.name} driver cannot make warm-launch templates")
    boot = await boot_for(image, firmware)
    why = cold_reason(image, boot)
    if why is not None:
        raise InvalidArgument(why[0].upper() + why[1:])
    flavor = guest(image)
    booted = firmware_of(boot)
    key = await key_of(image, cpus, memory, booted, nics)
    lock = _BUILDING.setdefault(key, asyncio.Lock())
    async with lock:
        found = await find(ctx, image, boot, cpus, memory, nics)
        if found is not None and damage(found) is None:
            return found
        tdir = ctx.root.template(key)
        remove(tdir)  # a stale or unfinished one of the same key
        tdir.path.mkdir(parents=True, mode=0o700)
        started = ctx.clock.time()
        try:
            reporter.step(f"Preparing the template of {image_name}")
            await driver.create_disk(
                InstanceDir(tdir.path),
                base=Path(image.disk),
                base_format=image.disk_format,
                size=disk,
            )
            os.replace(InstanceDir(tdir.path).disk, tdir.disk)
            mac = _random_mac()
            seed_iso = await asyncio.to_thread(write_template_seed, ctx, tdir, key, flavor, mac)
            choice = await accel.choose(ctx, Path(boot.kernel) if boot.kernel else None)
            tb = TemplateBoot(
                cpus=cpus,
                memory=memory,
                boot=boot,
                mac=mac,
                ssh_port=guestlink.free_port(ctx.store.used_ports()),
                extra_macs=tuple(_random_mac() for _ in range(nics)),
                link_up=flavor.link_up,
            )
            reporter.step(f"Booting the template of {image_name} ({choice.accel})")
            await driver.make_template(
                tdir, tb, accel=choice.accel, seed_iso=seed_iso, timeout=BUILD_TIMEOUT, nice=nice
            )
            record = {
                "image": image_name,
                "image_id": image.id,
                "cpus": cpus,
                "memory": memory,
                "firmware": booted,
                "macs": [tb.mac, *tb.extra_macs],
                "base": image.disk,
                "disk": (await golden_size(tdir.disk)),
                "qemu": await qemu_version(),
                "agent": warm_guest.digest(flavor),
                "guest": flavor.name,
                "created": ctx.clock.time(),
                "build_seconds": round(ctx.clock.time() - started, 3),
            }
            tmp = tdir.path / f".{tdir.record.name}.new"
            tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, tdir.record)
        except BaseException:
            remove(tdir)
            raise
        t = load(tdir)
        if t is None:
            raise KetchError(f"the template {key} was made but cannot be read back")
        return t


async def info_of(t: Template) -> TemplateInfo:
    return TemplateInfo(
        key=t.key,
        image=t.image,
        cpus=t.cpus,
        memory=t.memory,
        firmware=t.firmware,
        size=t.size,
        current=await is_current(t),
        created=t.created,
        build_seconds=t.build_seconds,
    )


async def infos(ctx: Context) -> list[TemplateInfo]:
    """Every finished template, for ``image list``."""
    return [await info_of(t) for t in all_templates(ctx)]


async def warm_image(
    ctx: Context,
    image_name: str,
    cpus: int,
    memory: str,
    reporter: Reporter,
    *,
    firmware: str | None = None,
) -> TemplateInfo:
    """``ketch image warm``: make the template launches of these options will use."""
    from ketch.service.launch import DEFAULT_DISK, check_resources
    from ketch.service.warm import nics_of

    cpus, mem, disk = check_resources(cpus, memory, DEFAULT_DISK)
    image = await ctx.images.resolve(image_name, reporter)
    t = await build(
        ctx, image_name, image, cpus, mem, disk, reporter, nics=nics_of(ctx), firmware=firmware
    )
    return await info_of(t)
