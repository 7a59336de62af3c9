"""Use case: launching warm, from a template, when one fits (called by ``launch``).

:func:`plan` decides, before anything is made, whether this launch can be warm
and says in one line why not when it cannot; :func:`start` starts the clone.  A
template that fails to load is removed, the launch goes on cold (with a
warning) and the template is made again in the background.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ketch.layout import InstanceDir
from ketch.model import BootSpec, ImageInfo, InstanceSpec
from ketch.progress import NULL, Reporter
from ketch.runtime.driver import WarmStart
from ketch.runtime.network import MANAGED
from ketch.runtime.template import TemplateMismatch
from ketch.runtime.template_wait import TemplateError
from ketch.runtime.warm_flavors import guest_of
from ketch.service import template_seed, templates
from ketch.service.context import Context

log = logging.getLogger(__name__)

# cloud-config modules that act before the NoCloud datasource's "local" stage on a
# cold boot (or on the disk layout): a warm guest is past that point, so they cannot
# be honoured as on a cold boot
EARLY_MODULES = (
    "bootcmd",
    "disk_setup",
    "fs_setup",
    "mounts",
    "swap",
    "growpart",
    "device_aliases",
)
_REBUILDS: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class Plan:
    """How a launch starts: ``template`` when warm; else ``reason`` (None: nothing to say)."""

    template: templates.Template | None
    reason: str | None = None


def cold_reason_of_user_data(user_cfg: dict[str, Any] | None) -> str | None:
    """Why this user data needs a cold boot (pure), or None."""
    if not user_cfg:
        return None
    early = [k for k in EARLY_MODULES if user_cfg.get(k)]
    if early:
        return f"its cloud-config uses {', '.join(early)}, which act early in a boot"
    if user_cfg.get("resize_rootfs") is False:
        return "its cloud-config sets resize_rootfs: false (a template's disk is grown)"
    if user_cfg.get("preserve_hostname") is True:
        return "its cloud-config sets preserve_hostname (a template has a hostname of its own)"
    if user_cfg.get("system_info"):
        return "its cloud-config sets system_info (a template's default user is made already)"
    return None


def nics_of(ctx: Context) -> int:
    """NICs after net0 a launch gets now: the managed network's (``--network`` ones are cold)."""
    return 1 if ctx.network is not None and ctx.network.mode() == MANAGED else 0


async def plan(
    ctx: Context,
    image: ImageInfo,
    boot: BootSpec,
    *,
    cpus: int,
    memory: int,
    disk: int,
    user_cfg: dict[str, Any] | None,
    cold: bool,
    cold_reason: str | None,
    extra_networks: bool,
) -> Plan:
    if cold:
        return Plan(None)
    if not isinstance(ctx.driver, WarmStart) or guest_of(image.id) is None:
        return Plan(None)  # no template can exist: nothing to say
    never = templates.cold_reason(image, boot)
    if never is not None:
        return Plan(None, f"Launching cold: {never}")
    t = await templates.find(ctx, image, boot, cpus, memory, nics_of(ctx))
    if t is None:
        return Plan(None)
    broken = templates.damage(t)
    if broken is not None:
        templates.remove(t.tdir)
        rebuild(ctx, t)
        return Plan(
            None,
            f"Launching cold: the template of {t.image} is damaged ({broken}); "
            "it is made again in the background",
        )
    why = cold_reason or cold_reason_of_user_data(user_cfg)
    if why is None and extra_networks:
        why = "it has --network NICs, which templates do not have"
    if why is None and disk < t.disk:
        why = f"its disk is smaller than its template's ({t.disk // 1024**3} GiB)"
    if why is not None:
        return Plan(None, f"Launching cold: {why}")
    return Plan(t)


def fit_seed(idir: InstanceDir) -> bool:
    """Pad the instance's seed to the template's seed size; False when it is larger."""
    return template_seed.pad_seed(idir.seed_iso)


async def start(
    ctx: Context,
    spec: InstanceSpec,
    idir: InstanceDir,
    t: templates.Template,
    *,
    accel: str,
    reporter: Reporter,
) -> bool:
    """Start ``spec`` warm; False (and a warning) when it must be started cold after all."""
    driver = ctx.driver
    assert isinstance(driver, WarmStart)
    flavor = guest_of(t.image_id)
    assert flavor is not None  # plan() found the template: its image has templates
    if not await asyncio.to_thread(fit_seed, idir):
        reporter.warn("Launching cold: its cloud-init seed is larger than a template's")
        return False
    try:
        warnings = await driver.start_warm(
            spec,
            idir,
            t.tdir,
            accel=accel,
            template_macs=t.macs,
            clock=ctx.clock.time,
            grow=spec.disk > t.disk,
            handover_timeout=flavor.handover_seconds,
        )
    except TemplateMismatch as exc:
        reporter.warn(f"Launching cold: {exc.message}")
        return False
    except TemplateError as exc:
        reporter.warn(
            f"Launching cold: the template of {t.image} did not load ({exc.message}); "
            "it is made again in the background"
        )
        templates.remove(t.tdir)
        rebuild(ctx, t)
        return False
    for w in warnings:
        reporter.warn(f"warm start: the guest agent said: {w}")
    return True


def rebuild(ctx: Context, t: templates.Template) -> None:
    """Make the template of ``t`` again, in the background, at low CPU priority."""

    async def again() -> None:
        try:
            image = await ctx.images.resolve(t.image, NULL)
            await templates.build(
                ctx, t.image, image, t.cpus, t.memory, t.disk, NULL, nics=t.nics, nice=True,
                firmware=None if t.firmware == "kernel" else t.firmware,
            )  # fmt: skip
        except Exception as exc:  # a background job: said in the log, never raised
            log.warning("could not make the template of %s again: %s", t.image, exc)

    task = asyncio.get_running_loop().create_task(again())
    _REBUILDS.add(task)
    task.add_done_callback(_REBUILDS.discard)


def launched(idir: InstanceDir) -> str:
    """How an instance was launched (for ``info``): ``warm (template KEY)`` or ``cold``."""
    from ketch.runtime.template import read_record

    record = read_record(idir)
    return f"warm (template {record.get('template')})" if record else "cold"
