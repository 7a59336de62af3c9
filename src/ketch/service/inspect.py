"""Looking at instances: observe, derive, and shape the answer like Multipass.

Partial failures become per-instance errors in the answer; only "not found"
raises.  (Modelled on Lima's store.Inspect.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from msgspec import UNSET

from ketch import vocabulary
from ketch.api.models import (
    Disk,
    ForwardInfo,
    Inconsistency,
    InfoEntry,
    ListEntry,
    Memory,
    MountInfo,
    SshAddress,
)
from ketch.errors import NotFound
from ketch.model import LOCAL_HOST, Derived, IdMap, InstanceSpec, Observation, State, Verb
from ketch.runtime.derive import derive
from ketch.service import mounts_health, queued
from ketch.service import network as network_uc
from ketch.service.context import Context
from ketch.service.guest_stats import NONE as NO_STATS
from ketch.service.guest_stats import GuestStats
from ketch.store.db import Record

GUEST_IPV4 = "10.0.2.15"  # the guest's address on QEMU user-mode networking


@dataclass(frozen=True)
class View:
    """One instance as ketch sees it right now."""

    record: Record
    obs: Observation
    derived: Derived
    managed: tuple[str, ...] = ()  # addresses on the managed network
    guest: tuple[str, ...] | None = None  # the addresses the guest shows (None: not known)

    @property
    def ipv4(self) -> list[str]:
        """Every IPv4 address of a running instance, the reachable one first.

        What the guest shows when its forward watcher has seen it (a managed
        address the guest does not hold is not reachable: left out), else the
        managed network's lease and user-mode networking's fixed address.
        """
        if not self.derived.running:
            return []
        if self.guest is None:
            return [*self.managed, GUEST_IPV4]
        held = [a for a in self.managed if a in self.guest]
        return [*held, *(a for a in self.guest if a not in held)]

    @property
    def name(self) -> str:
        return self.record.spec.name

    @property
    def state(self) -> State:
        return self.derived.state


def interrupted(ctx: Context, name: str, *, inside_op: bool = False) -> str | None:
    """The operation the journal shows unfinished on ``name`` that nobody runs now.

    Entries of a live operation are not interrupted; but the caller that holds
    the instance's lock (``inside_op``) sees every unfinished entry, since the
    live operation is its own and journals only after looking.
    """
    if name in ctx.active and not inside_op:
        return None
    ops = [e.op for e in ctx.store.unfinished() if e.instance == name]
    return ops[-1] if ops else None


async def view(ctx: Context, record: Record, *, inside_op: bool = False) -> View:
    """Observe and derive one instance.

    ``inside_op``: the caller is the operation that holds the instance's lock,
    so the live-operation entry is its own and does not count.
    """
    name = record.spec.name
    idir = ctx.root.instance(name)
    active = None if inside_op else ctx.active.get(name)
    obs = await ctx.driver_for(record.spec).observe(record.spec, idir, probe_qmp=active is None)
    derived = derive(
        intent=record.intent,
        deleted=record.deleted,
        obs=obs,
        active_op=active,
        interrupted_op=interrupted(ctx, name, inside_op=inside_op),
        delayed_shutdown=record.shutdown_at is not None,
        quarantine=record.quarantine,
    )
    if obs.host_error is not None:
        derived = queued.annotate(ctx, name, derived)  # what waits for the host, if anything
    managed: tuple[str, ...] = ()
    guest: tuple[str, ...] | None = None
    if derived.running and ctx.network is not None:
        managed = tuple(ctx.network.addresses(idir))
    if derived.running and ctx.forwarder is not None:
        guest = ctx.forwarder.guest_addresses(name, obs.pid)
    if record.spec.mounts and derived.state in (State.RUNNING, State.DELAYED_SHUTDOWN):
        # Not state derivation's: a running instance's mounts, as the host sees them.
        found = mounts_health.host_problems(idir, record.spec)
        derived = replace(derived, inconsistencies=(*derived.inconsistencies, *found))
    if ctx.network is not None and derived.state in (State.RUNNING, State.DELAYED_SHUTDOWN):
        tap = network_uc.tap_problem(idir, obs.pid)  # nor this: the TAP its QEMU was given
        if tap is not None:
            derived = replace(derived, inconsistencies=(*derived.inconsistencies, tap))
    return View(record, obs, derived, managed, guest)


async def get(ctx: Context, name: str) -> View:
    """The instance as an operation running on it sees it."""
    return await view(ctx, ctx.store.get(name), inside_op=True)


async def all_views(ctx: Context) -> list[View]:
    records = ctx.store.all()
    return list(await asyncio.gather(*(view(ctx, r) for r in records)))


def require(v: View, verb: Verb, *, hint: str | None = None, phrase: str | None = None) -> None:
    """Raise unless the instance's state accepts ``verb`` (``vocabulary.ACCEPTS``).

    A quarantined instance accepts only ``info``, ``doctor``, ``stop --force``
    and ``delete --purge`` (``vocabulary.QUARANTINE_ALLOWS``).
    """
    vocabulary.require(
        v.name,
        v.state,
        verb,
        quarantine=v.record.quarantine,
        deleted=v.record.deleted,
        hint=hint,
        phrase=phrase,
    )


def inconsistencies(
    v: View, active: Mapping[str, bool | None] | None = None
) -> list[Inconsistency]:
    """The instance's inconsistencies, with (given the mounts' ``active``) mounts whose
    guest side is gone."""
    found = list(v.derived.inconsistencies)
    if active and v.state in (State.RUNNING, State.DELAYED_SHUTDOWN):
        found += mounts_health.guest_problems(v.record.spec, active, found)
    return [Inconsistency(code=i.code, message=i.message, action=i.action) for i in found]


def list_entry(v: View, forwards: list[ForwardInfo] | None = None) -> ListEntry:
    """One element of ``ketch list --format json`` (Multipass's shape plus ketch keys)."""
    spec = v.record.spec
    return ListEntry(
        name=spec.name,
        state=v.state.value,
        ipv4=v.ipv4,
        release=spec.release,
        ssh_port=spec.ssh_port,
        inconsistencies=len(v.derived.inconsistencies),
        forwards=forwards or [],
        host=spec.host,
    )


def id_mapping(m: IdMap) -> str:
    """``HOST:GUEST`` as Multipass prints it (``default``: the guest's default user)."""
    return f"{m.host}:{'default' if m.guest is None else m.guest}"


def mount_entries(
    spec: InstanceSpec,
    active: Mapping[str, bool | None] | None = None,
    transports: Mapping[str, str | None] | None = None,
) -> dict[str, MountInfo]:
    """``info``'s ``mounts``: each of the spec's mounts by guest path, with ``active`` (in place
    in the guest; None: unknown) and a classic one's ``transport`` as found by the mounts
    use case."""
    return {
        m.target: MountInfo(
            source_path=m.source,
            uid_mappings=[id_mapping(x) for x in m.uid_maps],
            gid_mappings=[id_mapping(x) for x in m.gid_maps],
            type=m.type.value,
            active=(active or {}).get(m.target),
            transport=(transports or {}).get(m.target),
        )
        for m in spec.mounts
    }


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def info_entry(
    v: View,
    *,
    accel: str,
    guest: GuestStats = NO_STATS,
    snapshot_count: int = 0,
    forwards: list[ForwardInfo] | None = None,
    mounts_active: Mapping[str, bool | None] | None = None,
    mount_transports: Mapping[str, str | None] | None = None,
    launched: str = "cold",
) -> InfoEntry:
    """One value of ``ketch info --format json``'s "info" map."""
    spec = v.record.spec
    mem_total = spec.memory if guest.mem_total is None else guest.mem_total
    disk_total = spec.disk if guest.disk_total is None else guest.disk_total
    disk_used = UNSET if guest.disk_used is None else str(guest.disk_used)
    return InfoEntry(
        state=v.state.value,
        image_release=spec.release,
        image_hash=spec.image_id,
        release=guest.release,
        cpu_count=str(spec.cpus),
        memory=Memory(total=mem_total, used=UNSET if guest.mem_used is None else guest.mem_used),
        disks={"vda1": Disk(total=str(disk_total), used=disk_used)},
        load=list(guest.load),
        ipv4=v.ipv4,
        mounts=mount_entries(spec, mounts_active, mount_transports),
        snapshot_count=str(snapshot_count),
        created=_stamp(spec.created),
        # ketch's own keys
        ssh=SshAddress(host="127.0.0.1", port=spec.ssh_port, user=spec.user),
        accel=(accel if spec.host == LOCAL_HOST else "tcg") if v.derived.running else "",
        image=spec.image,
        pid=v.obs.pid if v.derived.running else None,
        quarantine=v.record.quarantine,
        inconsistencies=inconsistencies(v, mounts_active),
        forwards=forwards or [],
        shutdown_at=UNSET if v.record.shutdown_at is None else _stamp(v.record.shutdown_at),
        launched=launched,
        host=spec.host,
    )


def not_found(name: str) -> NotFound:
    return NotFound(f'instance "{name}" does not exist')
