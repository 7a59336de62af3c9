"""Use cases: delete (soft or with purge), recover, purge.

Purging removes an instance from any state and never fails on what it finds
on the way (a locked or unreadable disk, a missing directory): those become
warnings; one whose host does not answer is queued until it does
(:mod:`ketch.service.queued`).  Nothing else in ketch removes an instance.
"""

from __future__ import annotations

from dataclasses import replace

from ketch.api.models import DeleteResult, NameResult, PurgeResult
from ketch.errors import InvalidState, Queued
from ketch.model import OperationKind, State, Verb
from ketch.progress import Reporter
from ketch.runtime.driver import Driver, Purges
from ketch.service import guestlink, mounts, queued, settings
from ketch.service.context import Context
from ketch.service.inspect import get, require
from ketch.service.journal import journal, record_quietly
from ketch.vocabulary import accepted_states


async def delete(ctx: Context, name: str, reporter: Reporter, *, purge: bool) -> DeleteResult:
    v = await get(ctx, name)
    if purge:
        queued.hold(ctx, v, OperationKind.PURGE)  # its host does not answer: queued, said
        await _purge_one(ctx, name, reporter)
        return DeleteResult(name=name, purged=True)
    if v.state is State.DELETED:  # nothing to do
        return DeleteResult(name=name, purged=False)
    require(v, Verb.DELETE, hint=f"use 'ketch delete --purge {name}'")
    spec, idir = v.record.spec, ctx.root.instance(name)
    async with journal(ctx, name, OperationKind.DELETE, reporter=reporter):
        if v.derived.running:
            await mounts.deactivate_all(ctx, spec, reporter, guest=True)
            await guestlink.end_master(ctx.root, name)
            reporter.step(f"Stopping {name}")
            driver = ctx.driver_for(spec)
            if not await driver.powerdown(spec, idir, timeout=min(ctx.stop_timeout, 30.0)):
                reporter.warn("the guest did not power off in time; ending QEMU")
            await driver.kill(spec, idir)
        ctx.store.set_shutdown_at(name, None)
        ctx.store.set_deleted(name, True)
    return DeleteResult(name=name, purged=False)


async def _purge_one(ctx: Context, name: str, reporter: Reporter) -> None:
    spec = ctx.store.get(name).spec
    idir = ctx.root.instance(name)
    async with journal(ctx, name, OperationKind.PURGE, reporter=reporter, quiet=True):
        driver: Driver | None = None
        try:
            driver = ctx.driver_for(spec)
            await driver.kill(spec, idir)
        except Exception as exc:  # purge must not fail on a process it cannot end
            reporter.warn(f"ending QEMU failed: {exc}")
        if isinstance(driver, Purges):  # its domain and volumes on its host
            try:
                await driver.purge(spec, idir)
            except Exception as exc:  # nor on a host that does not answer: said, not hidden
                reporter.warn(
                    f'could not remove {name}\'s domain and volumes on host "{spec.host}" '
                    f"({exc}); remove them there by hand (virsh undefine ketch-{name} "
                    "--managed-save, virsh vol-delete)"
                )
        await mounts.deactivate_all(ctx, spec, reporter, guest=False)  # never raises
        await mounts.end_strays(ctx, replace(spec, mounts=()))
        await guestlink.end_master(ctx.root, name)  # never raises
        error = guestlink.remove_tree(idir.path)
        if error:
            reporter.warn(f"could not remove {idir.path}: {error}; remove it by hand")
        if ctx.network is not None:
            try:  # its lease goes; with the last instance, the managed network
                await ctx.network.release(name)
            except Exception as exc:
                reporter.warn(f"could not release the managed network's lease: {exc}")
        record_quietly(
            reporter,
            f"remove {name}'s record (its files are gone; 'ketch delete --purge {name}' "
            "again once the database can be written)",
            lambda: ctx.store.remove(name),
        )
        record_quietly(
            reporter,
            f"remove {name}'s settings (local.{name}.*: 'ketch set' them to their defaults)",
            lambda: settings.forget_instance(ctx, name),
        )
    reporter.step(f"Purged {name}")


async def recover(ctx: Context, name: str, reporter: Reporter) -> NameResult:
    v = await get(ctx, name)
    accepted = accepted_states(Verb.RECOVER)
    if v.state not in accepted:
        raise InvalidState(
            name,
            v.state.value,
            sorted(s.value for s in accepted),
            message=f'instance "{name}" is not deleted',
            hint="only deleted instances can be recovered",
        )
    async with journal(ctx, name, OperationKind.RECOVER, reporter=reporter):
        ctx.store.set_deleted(name, False)
    return NameResult(name=name)


async def purge(ctx: Context, reporter: Reporter) -> PurgeResult:
    """Purge every deleted instance; those whose host does not answer are queued, and
    said once the others are purged (:class:`~ketch.errors.Queued`)."""
    purged, held = [], []
    for record in ctx.store.all():
        if record.deleted:
            try:
                queued.hold(ctx, await get(ctx, record.spec.name), OperationKind.PURGE)
            except Queued as exc:
                held.append(exc)
                continue
            await _purge_one(ctx, record.spec.name, reporter)
            purged.append(record.spec.name)
    if held:
        raise Queued("; ".join(e.message for e in held), hint=held[0].hint)
    return PurgeResult(purged=purged)
