"""Use cases: ``ketch get`` / ``ketch set`` with Multipass's keys plus ketch's own.

Instance settings ``local.<instance>.cpus|memory|disk`` change the instance's
spec (the disk also grows, through the driver); they need the instance
Stopped and are journaled as ``set`` operations.  :func:`plan_instance_change`
checks a value and computes the new spec without touching anything.
"""

from __future__ import annotations

from dataclasses import replace

from ketch.api.models import SetReply
from ketch.errors import InvalidArgument, KetchError, NotFound
from ketch.model import InstanceSpec, OperationKind, PidStatus, State, Verb
from ketch.progress import Reporter
from ketch.service import accel, inspect, names
from ketch.service.context import Context
from ketch.service.journal import journal
from ketch.service.units import human, parse_size
from ketch.store.db import JournalEntry

DEFAULTS = {
    "local.driver": "qemu",
    "local.accel": "auto",
    "client.primary-name": "primary",
    "local.privileged-mounts": "true",
}
PRIVILEGED_MOUNTS = "local.privileged-mounts"
REMOTE_PREFIX = "local.remote."
INSTANCE_PROPS = ("cpus", "memory", "disk")
MIN_MEMORY = 512 * 1024**2  # Multipass's minimum for ``set``
MAX_CPUS = 64


def _check(key: str, value: str) -> str:
    if key == "local.driver":
        if value != "qemu":
            raise InvalidArgument(
                f"invalid driver '{value}'", hint="only 'qemu' is available for now"
            )
    elif key == "local.accel":
        accel.validate(value)
    elif key == PRIVILEGED_MOUNTS:
        if value.lower() not in ("true", "false", "on", "off", "yes", "no", "1", "0"):
            raise InvalidArgument(
                f"invalid value '{value}' for {key}", hint="give 'true' or 'false'"
            )
        value = "true" if value.lower() in ("true", "on", "yes", "1") else "false"
    elif key == "client.primary-name":
        if value:
            names.validate(value)
    elif key.startswith(REMOTE_PREFIX) and not value.startswith(("http://", "https://", "file://")):
        raise InvalidArgument(
            f"invalid remote URL '{value}'", hint="give an http(s):// or file:// URL"
        )
    return value


def known(key: str) -> bool:
    return key in DEFAULTS or key.startswith(REMOTE_PREFIX)


# -- instance settings ---------------------------------------------------------------------


def instance_key(key: str) -> tuple[str, str] | None:
    """``(instance, property)`` for ``local.<instance>.cpus|memory|disk``, else None.  Pure."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "local" and parts[1] and parts[2] in INSTANCE_PROPS:
        return parts[1], parts[2]
    return None


def instance_target(ctx: Context, key: str) -> tuple[str, str] | None:
    """The instance setting ``key`` names; ``local.remote.disk`` is a remote unless an
    instance called "remote" exists."""
    target = instance_key(key)
    if target is None:
        return None
    if key.startswith(REMOTE_PREFIX) and not ctx.store.exists(target[0]):
        return None
    return target


def show(spec: InstanceSpec, prop: str) -> str:
    """An instance setting as ``ketch get`` prints it (sizes as Multipass shows them)."""
    if prop == "cpus":
        return str(spec.cpus)
    return human(spec.memory if prop == "memory" else spec.disk)


def plan_instance_change(
    spec: InstanceSpec, prop: str, value: str, *, disk_now: int
) -> InstanceSpec:
    """The spec after ``local.<name>.<prop>=<value>``; InvalidArgument if not allowed.  Pure.

    ``disk_now`` is the disk's current virtual size: a disk can only grow
    (a size equal to the current one changes nothing); new sizes are rounded
    up to whole 512-byte sectors.  A size written exactly as ``get`` shows the
    current one (``5.3GiB``, rounded) changes nothing either, so what ``get``
    prints can always be set back.
    """
    if prop == "cpus":
        text = value.strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_CPUS:
            raise InvalidArgument(
                f"invalid number of CPUs '{value}'",
                hint=f"use a whole number from 1 to {MAX_CPUS}",
            )
        return replace(spec, cpus=int(text))
    if prop == "memory":
        if value.strip() == human(spec.memory):
            return spec
        memory = parse_size(value, "memory")
        if memory < MIN_MEMORY:
            raise InvalidArgument(
                f"memory '{value}' is below the minimum of 512M",
                hint="use 512M or more, e.g. 1G",
            )
        return replace(spec, memory=memory)
    if prop == "disk":
        size = -(-parse_size(value, "disk") // 512) * 512
        current = max(spec.disk, disk_now)
        if value.strip() == human(current):
            return spec
        if size < current:
            raise InvalidArgument(
                f"disk size '{value}' is smaller than the current {human(current)}",
                hint="a disk can only grow",
            )
        return spec if size == current else replace(spec, disk=size)
    raise NotFound(f"unknown instance setting '{prop}'", hint="use cpus, memory or disk")


def _set_hint(name: str, prop: str, state: State) -> str:
    if state is State.SUSPENDED:
        why = (
            'its saved memory state only loads into the same memory size (QEMU: "Size mismatch")'
            if prop == "memory"
            else "its saved state only loads into the same machine"
        )
        return (
            f"{why}: 'ketch start {name}' then 'ketch stop {name}' first, "
            f"or 'ketch stop --force {name}' (discards the suspended state)"
        )
    return f"stop it first: 'ketch stop {name}'; the new value applies at the next start"


async def set_instance(
    ctx: Context, name: str, prop: str, value: str, reporter: Reporter
) -> SetReply:
    """Change a stopped instance's cpus, memory or disk; nothing changes if refused."""
    v = await inspect.get(ctx, name)
    inspect.require(
        v, Verb.SET, phrase=f"change the {prop} of", hint=_set_hint(name, prop, v.state)
    )
    spec, idir = v.record.spec, ctx.root.instance(name)
    disk_now = (await ctx.driver.disk_info(idir)).virtual_size if prop == "disk" else 0
    new = plan_instance_change(spec, prop, value, disk_now=disk_now)
    if new != spec:
        target = {"cpus": new.cpus, "memory": new.memory, "disk": new.disk}[prop]
        async with journal(
            ctx, name, OperationKind.SET, step=f"{prop} {target}", reporter=reporter
        ):
            await _apply(ctx, name, prop, target, reporter)
    return SetReply(key=f"local.{name}.{prop}", value=show(new, prop), changed=new != spec)


async def _apply(ctx: Context, name: str, prop: str, target: int, reporter: Reporter) -> None:
    """Carry out ``prop = target`` (idempotent, so recovery can repeat it)."""
    idir = ctx.root.instance(name)
    if prop == "disk" and (await ctx.driver.disk_info(idir)).virtual_size < target:
        reporter.step(f"Growing the disk of {name} to {human(target)}")
        await ctx.driver.grow_disk(idir, target)
    spec = ctx.store.get(name).spec
    if prop == "cpus":
        spec = replace(spec, cpus=target)
    elif prop == "memory":
        spec = replace(spec, memory=target)
    else:
        spec = replace(spec, disk=target)
    ctx.store.set_spec(spec)


async def recover(ctx: Context, entry: JournalEntry, reporter: Reporter) -> str:
    """An interrupted instance setting is carried to its end (from ``service/recovery.py``)."""
    prop, _, text = entry.step.partition(" ")
    if prop not in INSTANCE_PROPS or not text.isdigit() or not ctx.store.exists(entry.instance):
        return "nothing to do"
    spec = ctx.store.get(entry.instance).spec
    obs = await ctx.driver.observe(spec, ctx.root.instance(entry.instance), probe_qmp=False)
    if obs.pid_status is PidStatus.OURS:
        raise KetchError(f'"{entry.instance}" runs: the setting is not applied')
    await _apply(ctx, entry.instance, prop, int(text), reporter)
    return f"setting finished: {prop} is {show(ctx.store.get(entry.instance).spec, prop)}"


# -- every setting ---------------------------------------------------------------------------


def mounts_allowed(ctx: Context) -> bool:
    """``local.privileged-mounts``: true unless set false."""
    return ctx.store.get_setting(PRIVILEGED_MOUNTS) != "false"


async def get(ctx: Context, key: str) -> str:
    target = instance_target(ctx, key)
    if target is not None:
        return show(ctx.store.get(target[0]).spec, target[1])
    if not known(key):
        raise NotFound(f"unknown setting '{key}'", hint="see 'ketch help get' for the keys")
    value = ctx.store.get_setting(key)
    if key == "local.accel" and value in (None, "auto"):
        choice = await accel.choose(ctx)
        return f"{choice.accel} ({choice.reason})"
    if value is None:
        if key in DEFAULTS:
            return DEFAULTS[key]
        raise NotFound(f"setting '{key}' is not set")
    return value


async def set_(ctx: Context, key: str, value: str) -> None:
    if not known(key):
        raise NotFound(f"unknown setting '{key}'", hint="see 'ketch help set' for the keys")
    ctx.store.set_setting(key, _check(key, value) if value else None)  # empty: unset
