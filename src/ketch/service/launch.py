"""Use case: launch an instance from an image and wait until it is ready."""

from __future__ import annotations

import asyncio
import secrets
import threading
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ketch import cloudinit, space
from ketch.api.models import NameResult
from ketch.errors import AlreadyExists, InvalidArgument, KetchError, NotFound, Timeout
from ketch.host import firmware, partitions, seed
from ketch.model import (
    LOCAL_HOST,
    BootSpec,
    ImageInfo,
    InstanceSpec,
    Intent,
    MountSpec,
    MountType,
    OperationKind,
)
from ketch.progress import Reporter
from ketch.runtime.driver import Purges
from ketch.runtime.netplan import seed_instance_id
from ketch.runtime.network import guest_network_config
from ketch.service import accel, guestlink, names, warm
from ketch.service.context import Context
from ketch.service.journal import journal
from ketch.service.units import parse_size
from ketch.service.waits import Cancelled, WaitCancelled

DEFAULT_IMAGE = "tiny"
DEFAULT_CPUS = 1
DEFAULT_MEMORY = "1G"
DEFAULT_DISK = "5G"
MIN_MEMORY = 128 * 1024**2
FIRMWARES = ("bios", "uefi")
_LACKS = {"bios": "no boot code in its first sector", "uefi": "no EFI system partition"}


@dataclass(frozen=True)
class LaunchRequest:
    image: str = DEFAULT_IMAGE
    name: str | None = None
    cpus: int = DEFAULT_CPUS
    memory: str = DEFAULT_MEMORY
    disk: str = DEFAULT_DISK
    cloud_init: str | None = None
    timeout: float | None = None
    firmware: str | None = None  # "bios", "uefi"; None: what the image needs
    forwards: list[str] = field(default_factory=list)  # explicit port forwards, as written
    networks: list[str] = field(default_factory=list)  # each --network, as given
    bridged: bool = False  # one more on local.bridged-network
    cold: bool = False  # --cold: boot, even when a template fits (service/warm.py)
    cold_reason: str | None = None  # why the daemon launches this one cold (a native mount)
    host: str | None = None  # --host: the host it runs on (None: placed, service/placement.py)
    mounts: bool = False  # launch --mount: mounts follow the launch (only local has them)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LaunchRequest:
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields
        if unknown:
            raise InvalidArgument(f"unknown launch option(s): {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in data.items() if v is not None})


def check_host(ctx: Context, req: LaunchRequest) -> None:
    """Refuse an unknown ``--host``, and the options its driver cannot honour (nothing made).

    A launch without ``--host`` is placed later (:func:`place`), once its image is known.
    """
    if req.host is None or req.host == LOCAL_HOST:
        return
    if ctx.drivers is None:
        raise NotFound(f'host "{req.host}" does not exist', hint="see 'ketch host list'")
    from ketch.service.drivers import refuse_launch

    refuse_launch(
        ctx.drivers.host(req.host),
        mounts=req.mounts,
        networks=bool(req.networks) or req.bridged,
        forwards=bool(req.forwards),
        firmware=req.firmware,
    )


def native_mount_reason(mounts: Collection[MountSpec]) -> str | None:
    """Why a launch with these mounts is cold: a native mount's memfd RAM (pure)."""
    if any(mt.type is MountType.NATIVE for mt in mounts):
        return "a native mount needs its memory shared with virtiofsd (a memfd), not a template's"
    return None


def _random_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def check_resources(cpus: int, memory: str, disk: str) -> tuple[int, int, int]:
    if not isinstance(cpus, int) or cpus < 1 or cpus > 64:
        raise InvalidArgument(f"invalid number of CPUs '{cpus}'", hint="use a number from 1 to 64")
    mem = parse_size(memory, "memory")
    if mem < MIN_MEMORY:
        # Multipass's sentence (src/client/cli/cmd/launch.cpp, INVALID_MEM_SIZE)
        raise InvalidArgument(
            f"Invalid memory size value supplied: {memory}.",
            hint="it is below the minimum 128M: use 128M or more, e.g. 1G",
        )
    size = parse_size(disk, "disk")
    return cpus, mem, size


async def launch(ctx: Context, req: LaunchRequest, reporter: Reporter) -> NameResult:
    """Create, boot and wait for an instance; on timeout keep it and raise Timeout."""
    name = (
        names.validate(req.name)
        if req.name
        else names.random_name({r.spec.name for r in ctx.store.all()})
    )
    if ctx.store.exists(name):
        raise AlreadyExists(f'instance "{name}" already exists')
    cpus, memory, disk = check_resources(req.cpus, req.memory, req.disk)
    check_host(ctx, req)
    # Off the event loop: a large file takes seconds to parse (cloudinit's limits bound it).
    user_cfg = (
        await asyncio.to_thread(cloudinit.parse_user_data, req.cloud_init)
        if req.cloud_init
        else None
    )
    if req.firmware is not None and req.firmware not in FIRMWARES:
        raise InvalidArgument(f"unknown firmware '{req.firmware}'", hint="use bios or uefi")
    from ketch.service.forwards import launch_forwards

    forwards = launch_forwards(ctx, name, req.forwards)

    from ketch.service.network import extra_networks

    networks = await extra_networks(ctx, req.networks, bridged=req.bridged, mac=_random_mac)
    image = await ctx.images.resolve(req.image, reporter)
    boot = await boot_for(image, req.firmware)
    host = await place(ctx, req, name, boot, reporter)
    local = host == LOCAL_HOST
    if not local and boot.kernel is None and boot.firmware == "uefi":
        from ketch.service.drivers import unsupported

        raise unsupported(host, f"UEFI boot (the image {req.image} needs it)")
    plan = await warm.plan(
        ctx,
        image,
        boot,
        cpus=cpus,
        memory=memory,
        disk=disk,
        user_cfg=user_cfg,
        cold=req.cold or not local,
        cold_reason=req.cold_reason if local else "the libvirt driver boots instances cold",
        extra_networks=bool(networks),
    )
    if plan.reason:
        reporter.warn(plan.reason)
    space.require("launch", ctx.root.instances)
    idir = ctx.root.instance(name)
    ssh_port = guestlink.free_port(ctx.store.used_ports())
    # On a remote host QEMU listens there and the jump here (host/ssh/jump.py): two ports.
    remote = not local and ctx.drivers is not None and ctx.drivers.remote(host)
    host_ssh_port = guestlink.free_port(ctx.store.used_ports() | {ssh_port}) if remote else 0
    async with journal(ctx, name, OperationKind.LAUNCH, step="prepare", reporter=reporter) as j:
        idir.path.mkdir(parents=True, exist_ok=False)
        j.undo(guestlink.remove_tree, idir.path)
        spec = InstanceSpec(
            name=name,
            image=req.image,
            image_id=image.id,
            release=image.release,
            cpus=cpus,
            memory=memory,
            disk=disk,
            boot=boot,
            base_disk=image.disk,
            ssh_port=ssh_port,
            mac=_random_mac(),
            instance_id=f"i-{uuid.uuid4().hex[:16]}",
            cloud_init=req.cloud_init,
            created=ctx.clock.time(),
            forwards=forwards,
            networks=networks,
            host=host,
            host_ssh_port=host_ssh_port,
        )
        driver = ctx.driver_for(spec)
        ctx.store.add(spec, Intent.STOP)
        j.undo(ctx.store.remove, name)

        reporter.step("Writing cloud-init seed")
        await asyncio.to_thread(write_seed, ctx, spec, user_cfg)
        how = "tcg, libvirt"  # the libvirt driver's domains are TCG ones for now
        if local:
            choice = await accel.choose(ctx, Path(image.boot.kernel) if image.boot.kernel else None)
            how = choice.accel
        warm_started = False
        if plan.template is not None:
            j.step("warm-start")
            reporter.step(f"Starting {name} from its template ({how})")
            j.undo(ctx.driver.kill, spec, idir)
            warm_started = await warm.start(
                ctx, spec, idir, plan.template, accel=how, reporter=reporter
            )
            if warm_started:
                j.step("boot")  # it has its identity: from here on as a cold-booted one
        if not warm_started:
            reporter.step("Preparing disk")
            if isinstance(driver, Purges):  # its volumes and domain, on its host
                j.undo(driver.purge, spec, idir)
            await driver.create_disk(
                idir, base=Path(image.disk), base_format=image.disk_format, size=disk
            )
            j.step("boot")
            reporter.step(f"Starting {name} ({how})")
            await driver.start(spec, idir, accel=how, resume=False)
            j.undo(driver.kill, spec, idir)
        ctx.store.set_intent(name, Intent.RUN)
        j.keep()  # from here on the instance stays, even if it never gets ready

        reporter.step("Waiting for the instance to be ready")
        timeout = req.timeout or ctx.boot_timeout
        try:
            await guestlink.wait_ready(
                ctx.root,
                spec,
                timeout=timeout,
                reporter=reporter,
                driver=driver,
                finished=warm_started,  # its agent said "done" after boot-finished
            )
        except Timeout as exc:
            raise Timeout(
                f'timed out after {timeout:g} s waiting for "{name}" to be ready ({exc.message})',
                hint=f"the instance is kept: see 'ketch info {name}' and its serial log "
                f"{idir.serial_log}; 'ketch delete --purge {name}' removes it",
            ) from exc
        except WaitCancelled as exc:
            raise Cancelled(
                f'stopped waiting for "{name}" to be ready: {exc.reason}; the instance is kept',
                hint=f"see 'ketch info {name}'; 'ketch delete --purge {name}' removes it",
            ) from exc
    return NameResult(name=name)


async def place(
    ctx: Context, req: LaunchRequest, name: str, boot: BootSpec, reporter: Reporter
) -> str:
    """The launch's host: ``--host``'s; else the placement's, said in a progress line
    (``local`` with no libvirt host configured: nothing is probed)."""
    if req.host is not None:
        return req.host
    from ketch.service import placement

    chosen = await placement.choose(
        ctx,
        name,
        mounts=req.mounts,
        networks=bool(req.networks) or req.bridged,
        forwards=bool(req.forwards),
        firmware=boot.firmware if boot.kernel is None else None,
    )
    if chosen is None:
        return LOCAL_HOST
    reporter.step(chosen.line(name))
    return chosen.host


def pick_firmware(requested: str | None, default: str, support: Collection[str], what: str) -> str:
    """The firmware to boot a disk with (pure).

    ``support`` is what the disk's partition table allows (empty: unknown, so
    anything may be tried); ``default`` is what the image declares.
    """
    if requested is not None:
        if support and requested not in support:
            other = " or ".join(f"--firmware {f}" for f in sorted(support))
            raise InvalidArgument(
                f"{what} cannot boot through {requested.upper()}: its disk has {_LACKS[requested]}",
                hint=f"launch it without --firmware, or with {other}",
            )
        return requested
    if not support or default in support:
        return default
    return sorted(support)[0]


async def boot_for(image: ImageInfo, requested: str | None) -> BootSpec:
    """How to boot ``image``: its own kernel, or the firmware its disk needs."""
    if image.boot.kernel:
        if requested is not None:
            raise InvalidArgument(
                f"{image.release} boots its kernel directly, without firmware",
                hint="--firmware applies to disk images with a bootloader; launch without it",
            )
        return image.boot
    try:
        table = await partitions.read_table(Path(image.disk), image.disk_format)
        support = partitions.firmware_support(table)
    except KetchError:
        support = frozenset()  # unreadable here: QEMU will say what it makes of it
    chosen = pick_firmware(requested, image.boot.firmware, support, image.release)
    if chosen == "uefi":
        await asyncio.to_thread(firmware.find_uefi)  # no OVMF: say so before anything is made
    return replace(image.boot, firmware=chosen)


_SEEDING = threading.Lock()  # seeds are written in worker threads, one at a time


def write_seed(ctx: Context, spec: InstanceSpec, user_cfg: dict[str, Any] | None) -> None:
    """The NoCloud seed ISO: merged user data, meta data, the pinned host key.

    Blocking (YAML rendering, ssh-keygen, the ISO): called through
    ``asyncio.to_thread``; one at a time, so the client key is made once.
    """
    with _SEEDING:
        _write_seed(ctx, spec, user_cfg)


def _write_seed(ctx: Context, spec: InstanceSpec, user_cfg: dict[str, Any] | None) -> None:
    idir = ctx.root.instance(spec.name)
    host_private, host_public = guestlink.make_host_key(idir, spec.name)
    cfg = cloudinit.merge_vendor(
        user_cfg,
        default_user=spec.user,
        client_public_key=guestlink.client_public_key(ctx.root),
        host_key_private=host_private,
        host_key_public=host_public,
        hostname=spec.name,
    )
    meta = cloudinit.meta_data(seed_instance_id(spec), spec.name)
    seed.build_seed_iso(
        idir.seed_iso,
        meta_data=meta,
        user_data=cloudinit.render_user_data(cfg),
        network_config=guest_network_config(spec),
        extra_files={
            seed.GUEST_CONFIG_FILE: seed.render_guest_config(
                cfg, {"instance-id": seed_instance_id(spec), "local-hostname": spec.name}
            ).encode()
        },
    )
