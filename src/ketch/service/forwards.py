"""Use cases: ``ketch forward``, ``forward --remove``, ``forwards``; the forwards ``info`` shows.

Explicit forwards are part of the instance's spec (``InstanceSpec.forwards``)
and are made at every start by the daemon's forwarder
(:mod:`ketch.service.forward_watch`); adding one to a running instance makes
it at once, and a host port QEMU cannot bind is refused then, with nothing
changed.  Automatic forwards are not stored: the forwarder derives them from
the guest's listeners.  ``local.auto-forward`` (default true) and
``local.NAME.auto-forward`` turn the automatic ones off.
"""

from __future__ import annotations

from dataclasses import replace

from ketch.api.models import ForwardInfo, ForwardResult, ForwardsReply
from ketch.errors import AlreadyExists, InvalidArgument, KetchError, NotFound
from ketch.forward_rules import format_rule, parse_rule
from ketch.model import ForwardSpec, InstanceSpec
from ketch.service.context import Context
from ketch.service.forward_table import EXPLICIT, Row
from ketch.service.inspect import View

AUTO_KEY = "local.auto-forward"
BOOLEANS = {"true": True, "false": False}


def instance_auto_key(name: str) -> str:
    return f"local.{name}.auto-forward"


def parse_bool(key: str, value: str) -> str:
    text = value.strip().lower()
    if text not in BOOLEANS:
        raise InvalidArgument(f"invalid value '{value}' for {key}", hint="use true or false")
    return text


def auto_forward(ctx: Context, name: str) -> bool:
    """Are the guest's listeners forwarded automatically?  (The instance's setting, else
    ``local.auto-forward``, else true.)"""
    for key in (instance_auto_key(name), AUTO_KEY):
        value = ctx.store.get_setting(key)
        if value is not None:
            return BOOLEANS.get(value, True)
    return True


def row_doc(row: Row) -> ForwardInfo:
    """One element of ``info``'s (and ``list --format json``'s) ``forwards``."""
    return ForwardInfo(
        host_address=row.host_ip,
        host_port=row.host_port,
        guest_port=row.guest_port,
        protocol=row.protocol.value,
        type=row.kind,
        guest_address=row.guest_address,
        active=row.active,
        note=row.note,
    )


def rows(ctx: Context, v: View) -> list[ForwardInfo]:
    """The instance's forwards as ``info`` shows them."""
    spec = v.record.spec
    fw = ctx.forwarder
    if fw is None or fw.driver is None:
        return [
            row_doc(Row(f.protocol, f.host_ip, None, f.guest_port, EXPLICIT, "", False,
                        "this daemon makes no forwards"))
            for f in spec.forwards
        ]  # fmt: skip
    return [row_doc(r) for r in fw.rows(spec, running=v.derived.running)]


def _usable(ctx: Context, name: str) -> InstanceSpec:
    record = ctx.store.get(name)
    if record.deleted:
        raise KetchError(f'instance "{name}" is deleted', hint=f"'ketch recover {name}' first")
    if record.quarantine:
        raise KetchError(
            f'instance "{name}" is quarantined: {record.quarantine}',
            hint=f"see 'ketch doctor {name}'",
        )
    ctx.require_local(record.spec, "port forwarding")
    return record.spec


def check_new(ctx: Context, name: str, f: ForwardSpec) -> None:
    """Refuse a rule whose host port another rule or an SSH port already holds."""
    for other in ctx.store.all():
        if other.spec.ssh_port == f.host_port and f.protocol.value == "tcp":
            raise AlreadyExists(
                f'host port {f.host_port} is the SSH port of "{other.spec.name}"',
                hint="choose another host port",
            )
        for g in other.spec.forwards:
            if (
                g.protocol is f.protocol
                and g.host_port == f.host_port
                and (g.host_ip == f.host_ip or "0.0.0.0" in (g.host_ip, f.host_ip))
            ):
                same = other.spec.name == name
                raise AlreadyExists(
                    f"host port {f.host_port}/{f.protocol.value} is already forwarded to "
                    f"{'' if same else chr(34) + other.spec.name + chr(34) + ' '}guest port "
                    f"{g.guest_port} ({format_rule(g)})",
                    hint=f"remove it first: 'ketch forward --remove {other.spec.name} "
                    f"{format_rule(g)}'",
                )


async def add(ctx: Context, name: str, rule: str) -> ForwardResult:
    """Add an explicit forward; made at once when the instance runs."""
    f = parse_rule(rule)
    spec = _usable(ctx, name)
    if f in spec.forwards:
        return ForwardResult(name=name, rule=format_rule(f), changed=False)
    check_new(ctx, name, f)
    fw = ctx.forwarder
    if fw is not None and fw.driver is not None:
        async with fw.lock(name):
            st = fw.status.get(name)
            if st is not None and st.pid is not None:
                try:
                    await fw.apply_explicit(name, spec, f)
                except KetchError as exc:
                    raise KetchError(
                        f"cannot forward {f.host_ip}:{f.host_port}: {exc.message}",
                        hint="the host port may be taken by another program, or need root; "
                        "choose another one",
                    ) from exc
            ctx.store.set_spec(replace(ctx.store.get(name).spec, forwards=(*spec.forwards, f)))
    else:
        ctx.store.set_spec(replace(spec, forwards=(*spec.forwards, f)))
    return ForwardResult(name=name, rule=format_rule(f), changed=True)


def _find(spec: InstanceSpec, f: ForwardSpec) -> ForwardSpec:
    for g in spec.forwards:
        same = (g.protocol, g.host_port, g.guest_port) == (f.protocol, f.host_port, f.guest_port)
        if same and (g.host_ip == f.host_ip or f.host_ip == "127.0.0.1"):
            return g
    listed = ", ".join(format_rule(g) for g in spec.forwards) or "none"
    raise NotFound(
        f'"{spec.name}" has no forward {format_rule(f)}',
        hint=f"its explicit forwards: {listed} (automatic ones end when the guest stops "
        "listening, or with 'ketch set local." + spec.name + ".auto-forward=false')",
    )


async def remove(ctx: Context, name: str, rule: str) -> ForwardResult:
    """Remove an explicit forward from the spec, and from the VM when it runs."""
    f = parse_rule(rule)
    spec = ctx.store.get(name).spec
    g = _find(spec, f)
    rest = tuple(x for x in spec.forwards if x != g)
    fw = ctx.forwarder
    if fw is not None and fw.driver is not None:
        async with fw.lock(name):
            ctx.store.set_spec(replace(ctx.store.get(name).spec, forwards=rest))
            await fw.remove_explicit(name, spec, g)
    else:
        ctx.store.set_spec(replace(spec, forwards=rest))
    return ForwardResult(name=name, rule=format_rule(g), changed=True)


async def listing(ctx: Context, names: list[str]) -> ForwardsReply:
    """``{"errors": [...], "forwards": {NAME: [...]}}`` for the names asked (all when none)."""
    from ketch.service import inspect

    errors: list[str] = []
    records = ctx.store.all()
    known = {r.spec.name: r for r in records}
    chosen = [r for r in records if not r.deleted] if not names else []
    for name in names:
        if name in known:
            chosen.append(known[name])
        else:
            errors.append(f'instance "{name}" does not exist')
    if names and not chosen:
        raise NotFound(errors[0])
    views = [await inspect.view(ctx, r) for r in chosen]
    return ForwardsReply(errors=errors, forwards={v.name: rows(ctx, v) for v in views})


def launch_forwards(ctx: Context, name: str, rules: list[str]) -> tuple[ForwardSpec, ...]:
    """``launch --forward``'s rules, checked before anything is made."""
    out: list[ForwardSpec] = []
    for rule in rules:
        f = parse_rule(rule)
        if any(g.protocol is f.protocol and g.host_port == f.host_port for g in out):
            raise InvalidArgument(f"host port {f.host_port}/{f.protocol.value} is given twice")
        out.append(f)
    for f in out:
        check_new(ctx, name, f)
    return tuple(out)
