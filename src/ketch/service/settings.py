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
from ketch.service import accel, bridged, inspect, names, network
from ketch.service.context import Context
from ketch.service.journal import journal
from ketch.service.units import human, parse_size
from ketch.store.db import JournalEntry

# The one table of global keys: each does something today, and ``get --keys`` lists them
# (with ``local.<instance>.cpus|memory|disk`` of every instance and the remotes set).
DEFAULTS = {
    "local.driver": "qemu",
    "local.accel": "auto",
    "client.primary-name": "primary",
    "local.auto-forward": "true",
    "local.privileged-mounts": "true",
    "local.address": "",  # remote access (daemon/tls.py): HOST:PORT, the listener moves at once
    "local.passphrase": "false",  # get: whether one is set (as Multipass); stored hashed
}
PASSPHRASE = "local.passphrase"
ADDRESS = "local.address"
AUTO_FORWARD = ".auto-forward"  # local.NAME.auto-forward: the instance's own (service/forwards.py)
EMPTY_MEANS_EMPTY = ("client.primary-name",)  # ``set KEY=`` stores "" (disables the primary)
PRIVILEGED_MOUNTS = "local.privileged-mounts"
REMOTE_PREFIX = "local.remote."
NETWORK_KEYS = ("local.network", "local.network.subnet", "local.network.bridge")
BRIDGED_KEY = "local.bridged-network"
INSTANCE_PROPS = ("cpus", "memory", "disk")
SETTABLE_PROPS = (*INSTANCE_PROPS, "bridged")  # bridged: service/bridged.py
SNAPSHOT_PROPS = ("name", "comment")  # local.<instance>.<snapshot>.name|comment, as Multipass
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
    elif key == ADDRESS:
        from ketch.netaddr import parse_address

        host, port = parse_address(value)
        value = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    elif key == PASSPHRASE:
        from ketch.passphrase import hash_passphrase

        value = hash_passphrase(value)  # never stored in clear
    elif key.endswith(AUTO_FORWARD):
        from ketch.service.forwards import parse_bool

        value = parse_bool(key, value)
    elif key in (*NETWORK_KEYS, BRIDGED_KEY):
        network.check_setting(key, value)
    elif autostart_key(key) is not None and value not in ("true", "false"):
        raise InvalidArgument(f"invalid autostart '{value}'", hint="use true or false")
    elif key.startswith(REMOTE_PREFIX) and not value.startswith(("http://", "https://", "file://")):
        raise InvalidArgument(
            f"invalid remote URL '{value}'", hint="give an http(s):// or file:// URL"
        )
    return value


# The per-instance keys kept in the settings table (``local.NAME<suffix>``); the others
# (cpus, memory, disk) are the instance's spec.  A purged instance's go with it.
STORED_INSTANCE_SUFFIXES = (AUTO_FORWARD, ".autostart")


def forget_instance(ctx: Context, name: str) -> None:
    """Remove a purged instance's own settings, so a new instance of that name starts afresh."""
    for suffix in STORED_INSTANCE_SUFFIXES:
        if ctx.store.get_setting(f"local.{name}{suffix}") is not None:
            ctx.store.set_setting(f"local.{name}{suffix}", None)


def keys(ctx: Context) -> list[str]:
    """Every key that can be set today, sorted as Multipass lists them."""
    found = set(DEFAULTS) | set(NETWORK_KEYS) | {BRIDGED_KEY}
    found.update(key for key, _ in ctx.store.settings(REMOTE_PREFIX))
    live = {r.spec.name for r in ctx.store.all() if not r.deleted}
    for name in live:
        found.update(f"local.{name}.{prop}" for prop in SETTABLE_PROPS)
        found.update((f"local.{name}{AUTO_FORWARD}", f"local.{name}.autostart"))
    for snap in ctx.store.snapshots():
        if snap.instance in live:
            found.update(f"local.{snap.instance}.{snap.name}.{p}" for p in SNAPSHOT_PROPS)
    return sorted(found)


def known(key: str) -> bool:
    parts = key.split(".")
    per_instance = len(parts) == 3 and parts[0] == "local" and parts[2] == AUTO_FORWARD[1:]
    return (
        key in DEFAULTS
        or key in NETWORK_KEYS
        or key == BRIDGED_KEY
        or key.startswith(REMOTE_PREFIX)
        or per_instance
        or autostart_key(key) is not None
    )


def autostart_key(key: str) -> str | None:
    """The instance of ``local.<instance>.autostart`` (after a host reboot), else None.  Pure."""
    parts = key.split(".")
    ok = len(parts) == 3 and parts[0] == "local" and parts[1] and parts[2] == "autostart"
    return parts[1] if ok else None


# -- instance settings ---------------------------------------------------------------------


def instance_key(key: str) -> tuple[str, str] | None:
    """``(instance, property)`` for ``local.<instance>.cpus|memory|disk``, and
    ``(instance, "<snapshot>.name|comment")`` for a snapshot's; else None.  Pure."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "local" and parts[1] and parts[2] in SETTABLE_PROPS:
        return parts[1], parts[2]
    if len(parts) == 4 and parts[0] == "local" and all(parts[1:3]) and parts[3] in SNAPSHOT_PROPS:
        return parts[1], f"{parts[2]}.{parts[3]}"
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


def set_snapshot(ctx: Context, name: str, prop: str, value: str) -> SetReply:
    """Rename a snapshot or change its comment (``prop``: ``SNAPSHOT.name|comment``), in any
    state of the instance, as Multipass allows; one transaction, nothing to recover."""
    from ketch.service.snapshots import validate_name

    snap, _, what = prop.partition(".")
    ctx.store.get(name)  # NotFound for an unknown instance
    record = ctx.store.get_snapshot(name, snap)
    key = f"local.{name}.{prop}"
    if what == "comment":
        ctx.store.set_snapshot_comment(name, snap, value)
        return SetReply(key=key, value=value, changed=value != record.comment)
    new = validate_name(value)
    if new != snap:
        ctx.store.rename_snapshot(name, snap, new)
    return SetReply(key=key, value=new, changed=new != snap)


def snapshot_value(ctx: Context, name: str, prop: str) -> str:
    snap, _, what = prop.partition(".")
    ctx.store.get(name)
    record = ctx.store.get_snapshot(name, snap)
    return record.name if what == "name" else record.comment


async def set_instance(
    ctx: Context, name: str, prop: str, value: str, reporter: Reporter
) -> SetReply:
    """Change a stopped instance's cpus, memory or disk; nothing changes if refused."""
    if "." in prop:  # a snapshot's name or comment
        return set_snapshot(ctx, name, prop, value)
    ctx.require_local(ctx.store.get(name).spec, f"changing local.{name}.{prop}")
    if prop == bridged.PROP:
        return await bridged.set_bridged(ctx, name, value, reporter)
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
        if "." in target[1]:
            return snapshot_value(ctx, *target)
        if target[1] == bridged.PROP:
            ctx.store.get(target[0])  # NotFound for an unknown instance
            return bridged.value(ctx, target[0])
        return show(ctx.store.get(target[0]).spec, target[1])
    if not known(key):
        raise NotFound(f"unknown setting '{key}'", hint="see 'ketch help get' for the keys")
    value = ctx.store.get_setting(key)
    if key == PASSPHRASE:
        return "true" if value else "false"
    if key == "local.accel" and value in (None, "auto"):
        choice = await accel.choose(ctx)
        return f"{choice.accel} ({choice.reason})"
    if value is None and key in NETWORK_KEYS and ctx.network is not None:
        return await network.show_default(ctx.network, key)
    if value is None:
        if key.endswith(AUTO_FORWARD) and key != "local.auto-forward":
            return await get(ctx, "local.auto-forward")
        if key in DEFAULTS:
            return DEFAULTS[key]
        if autostart_key(key) is not None:
            return "true"
        raise NotFound(f"setting '{key}' is not set")
    return value


async def set_(ctx: Context, key: str, value: str) -> None:
    if not known(key):
        raise NotFound(f"unknown setting '{key}'", hint="see 'ketch help set' for the keys")
    if not value and key in EMPTY_MEANS_EMPTY:
        ctx.store.set_setting(key, "")
        return
    checked = _check(key, value) if value else None
    if key in NETWORK_KEYS:
        await _network_idle(ctx, key)
    ctx.store.set_setting(key, checked)  # empty: unset


async def _network_idle(ctx: Context, key: str) -> None:
    """The network's settings change only while no instance runs or is suspended."""
    busy = [
        v.name
        for v in await inspect.all_views(ctx)
        if v.derived.running or v.state is State.SUSPENDED
    ]
    if busy:
        raise KetchError(
            f"cannot change {key} while instances run or are suspended: {', '.join(busy)}",
            hint="stop them first ('ketch stop --all')",
        )
