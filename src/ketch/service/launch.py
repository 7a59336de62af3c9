"""Use case: launch an instance from an image and wait until it is ready."""

from __future__ import annotations

import secrets
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch import cloudinit
from ketch.errors import AlreadyExists, InvalidArgument, Timeout
from ketch.host import qemu_img, seed
from ketch.model import InstanceSpec, Intent
from ketch.progress import Reporter
from ketch.service import accel, guestlink, names
from ketch.service.context import Context
from ketch.service.lifecycle import finish_quietly
from ketch.service.units import parse_size

DEFAULT_IMAGE = "tiny"
DEFAULT_CPUS = 1
DEFAULT_MEMORY = "1G"
DEFAULT_DISK = "5G"
MIN_MEMORY = 128 * 1024**2


@dataclass(frozen=True)
class LaunchRequest:
    image: str = DEFAULT_IMAGE
    name: str | None = None
    cpus: int = DEFAULT_CPUS
    memory: str = DEFAULT_MEMORY
    disk: str = DEFAULT_DISK
    cloud_init: str | None = None
    timeout: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LaunchRequest:
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields
        if unknown:
            raise InvalidArgument(f"unknown launch option(s): {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in data.items() if v is not None})


def _random_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def check_resources(cpus: int, memory: str, disk: str) -> tuple[int, int, int]:
    if not isinstance(cpus, int) or cpus < 1 or cpus > 64:
        raise InvalidArgument(f"invalid number of CPUs '{cpus}'", hint="use a number from 1 to 64")
    mem = parse_size(memory, "memory")
    if mem < MIN_MEMORY:
        raise InvalidArgument(f"memory '{memory}' is below the minimum 128M")
    size = parse_size(disk, "disk")
    return cpus, mem, size


async def launch(ctx: Context, req: LaunchRequest, reporter: Reporter) -> dict[str, Any]:
    """Create, boot and wait for an instance; on timeout keep it and raise Timeout."""
    name = (
        names.validate(req.name)
        if req.name
        else names.random_name({r.spec.name for r in ctx.store.all()})
    )
    if ctx.store.exists(name):
        raise AlreadyExists(f'instance "{name}" already exists')
    cpus, memory, disk = check_resources(req.cpus, req.memory, req.disk)
    user_cfg = cloudinit.parse_user_data(req.cloud_init) if req.cloud_init else None

    image = await ctx.images.resolve(req.image, reporter)
    idir = ctx.root.instance(name)
    entry = ctx.store.begin(name, "launch", "prepare")
    async with AsyncExitStack() as undo:
        idir.path.mkdir(parents=True, exist_ok=False)
        undo.callback(guestlink.remove_tree, idir.path)
        spec = InstanceSpec(
            name=name,
            image=req.image,
            image_id=image.id,
            release=image.release,
            cpus=cpus,
            memory=memory,
            disk=disk,
            boot=image.boot,
            base_disk=image.disk,
            ssh_port=guestlink.free_port(ctx.store.used_ports()),
            mac=_random_mac(),
            instance_id=f"i-{uuid.uuid4().hex[:16]}",
            cloud_init=req.cloud_init,
            created=time.time(),
        )
        ctx.store.add(spec, Intent.STOP)
        undo.callback(ctx.store.remove, name)

        reporter.step("Preparing disk")
        base_size = (await qemu_img.info(Path(image.disk))).virtual_size
        await qemu_img.create_overlay(
            idir.disk, Path(image.disk), image.disk_format, max(disk, base_size)
        )

        reporter.step("Writing cloud-init seed")
        write_seed(ctx, spec, user_cfg)

        ctx.store.step(entry, "boot")
        choice = await accel.choose(ctx, Path(image.boot.kernel) if image.boot.kernel else None)
        reporter.step(f"Starting {name} ({choice.accel})")
        await ctx.driver.start(spec, idir, accel=choice.accel, resume=False)
        undo.push_async_callback(ctx.driver.kill, spec, idir)
        ctx.store.set_intent(name, Intent.RUN)
        undo.pop_all()  # from here on the instance stays, even if it never gets ready

    reporter.step("Waiting for the instance to be ready")
    timeout = req.timeout or ctx.boot_timeout
    try:
        await guestlink.wait_ready(
            ctx.root, spec, timeout=timeout, reporter=reporter, driver=ctx.driver
        )
    except Timeout as exc:
        finish_quietly(ctx, entry, "timeout")
        raise Timeout(
            f'timed out after {timeout:g} s waiting for "{name}" to be ready ({exc.message})',
            hint=f"the instance is kept: see 'ketch info {name}' and its serial log "
            f"{idir.serial_log}; 'ketch delete --purge {name}' removes it",
        ) from exc
    except BaseException:
        finish_quietly(ctx, entry, "failed")
        raise
    ctx.store.finish(entry, "ok")
    return {"name": name}


def write_seed(ctx: Context, spec: InstanceSpec, user_cfg: dict[str, Any] | None) -> None:
    """The NoCloud seed ISO: merged user data, meta data, the pinned host key."""
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
    meta = cloudinit.meta_data(spec.instance_id, spec.name)
    seed.build_seed_iso(
        idir.seed_iso,
        meta_data=meta,
        user_data=cloudinit.render_user_data(cfg),
        extra_files={
            seed.GUEST_CONFIG_FILE: seed.render_guest_config(
                cfg, {"instance-id": spec.instance_id, "local-hostname": spec.name}
            ).encode()
        },
    )
