"""Use case: ``ketch info`` and ``ketch list --snapshots``, assembled as Multipass shapes them.

``info`` takes instance names and ``INSTANCE.SNAPSHOT`` references together;
partial failures become entries of ``errors``, and only "nothing asked for
exists" raises NotFound.  Running instances get guest statistics (over SSH,
in parallel, each failure an error line).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec

from ketch.api.models import InfoEntry, InfoReply, SnapshotListReply
from ketch.errors import NotFound
from ketch.model import State
from ketch.service import forwards as forwards_uc
from ketch.service import guest_stats, guestlink, mounts, warm
from ketch.service import inspect as inspect_uc
from ketch.service import snapshots as snapshots_uc
from ketch.service.accel import choose
from ketch.service.context import Context

RUNNING = (State.RUNNING, State.DELAYED_SHUTDOWN)


async def _stats(
    ctx: Context, v: inspect_uc.View, runtime: bool
) -> tuple[guest_stats.GuestStats, str | None]:
    if not runtime or v.state not in RUNNING:
        return guest_stats.NONE, None
    return await guest_stats.collect_quietly(guestlink.target(ctx.root, v.record.spec))


async def info(ctx: Context, asked: Sequence[str], *, runtime: bool = True) -> InfoReply:
    """``{"errors": [...], "info": {NAME: {...}}}`` for the names asked (all when none).

    ``runtime`` false: nothing is asked of the guests (no stats; mounts' ``active`` None).
    """
    wanted = [n for n in asked if "." not in n]
    snapshots, errors = snapshots_uc.info_doc(ctx, [n for n in asked if "." in n])
    records = ctx.store.all()
    known = {r.spec.name: r for r in records}
    chosen = [] if asked else list(records)
    for name in wanted:
        if name in known:
            chosen.append(known[name])
        else:
            errors.append(f'instance "{name}" does not exist')
    if asked and not chosen and not snapshots:
        # Every name that does not exist, one a line, as Multipass's daemon reports them.
        raise NotFound("\n".join(errors))
    accel = (await choose(ctx)).accel if chosen else ""
    views = await asyncio.gather(*(inspect_uc.view(ctx, r) for r in chosen))
    stats = await asyncio.gather(*(_stats(ctx, v, runtime) for v in views))
    counts = ctx.store.snapshot_counts()
    entries: dict[str, InfoEntry] = {}
    actives = await asyncio.gather(
        *(mounts.entries(ctx, v.record.spec, runtime and v.state in RUNNING) for v in views)
    )
    for v, (guest, error), active in zip(views, stats, actives, strict=True):
        entries[v.name] = inspect_uc.info_entry(
            v,
            accel=accel,
            guest=guest,
            snapshot_count=counts.get(v.name, 0),
            forwards=forwards_uc.rows(ctx, v),
            mounts_active=active,
            mount_transports=mounts.transports(ctx, v.record.spec),
            launched=warm.launched(ctx.root.instance(v.name)),
        )
        if error:
            errors.append(error)
    for instance, snaps in snapshots.items():  # Multipass's shape: info[NAME]["snapshots"]
        entry = entries.get(instance)
        entries[instance] = (
            InfoEntry(snapshots=snaps)
            if entry is None
            else msgspec.structs.replace(entry, snapshots=snaps)
        )
    return InfoReply(errors=errors, info=entries, hosts=1 + len(ctx.store.hosts()))


def snapshot_listing(ctx: Context, names: Sequence[str]) -> SnapshotListReply:
    """``{"errors", "info"}`` of ``list --snapshots``; NotFound when none of ``names`` exists."""
    doc = snapshots_uc.list_doc(ctx, names)
    if names and doc.errors and not doc.info:
        raise NotFound("\n".join(doc.errors))
    return doc
