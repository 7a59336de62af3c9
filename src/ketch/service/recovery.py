"""Finishing or rolling back operations a crashed ketchd left half-done.

ketchd runs this at start-up for every journal entry that was never
finished, and ``ketch doctor --fix`` runs it too.  Each rule looks at what is
actually there (the QEMU process, its status, the suspend tag) and moves the
instance to the nearest consistent state without losing what the guest
wrote to its disk:

| interrupted | found | done |
|---|---|---|
| launch | QEMU runs | finished: the instance exists and runs |
| launch | no QEMU, step "prepare" | rolled back: the half-made instance is removed |
| launch | no QEMU, step "boot" | kept, Stopped: `start` boots it |
| launch | step "warm-start" | rolled back: the clone (maybe not yet itself) ended, removed |
| start | QEMU runs | finished: intent run; a leftover suspend tag is removed |
| start | no QEMU | nothing to do: the instance is as it was (Stopped or Suspended) |
| suspend | QEMU runs, a save job still going | waited for, then as below |
| suspend | QEMU runs paused, tag present | finished: QEMU quit, intent suspend |
| suspend | QEMU runs, no tag | rolled back: vCPUs resumed, intent run |
| suspend | no QEMU, tag present | finished: intent suspend |
| suspend | no QEMU, no tag | intent stop (QEMU died with the save) |
| stop | QEMU runs | finished: asked again to power off (`STOP_WAIT`), intent stop; else said |
| stop | no QEMU | finished: intent stop |
| force-stop, purge | its host does not answer | queued until it does (``service/queued.py``) |
| force-stop | any other | finished: QEMU ended, intent stop |
| purge | any other | finished: QEMU ended, directory and record removed |
| delete, recover | any | nothing to do: the instance is as it was left (repeat the command) |
| snapshot | its record written | finished |
| snapshot | no record | rolled back: its tag is removed from the disk |
| restore | - | finished: the tag applied again, the snapshot's resources recorded |
| delete-snapshot | - | finished: tag and record removed |
| clone | - | rolled back: the half-made clone's directory, then its record, removed |
| set | - | finished: the disk grown (if the setting is disk), the spec recorded |

The last five (``service/snapshots.py``, ``service/clone.py``,
``service/settings.py``) leave a disk alone while its QEMU runs (an error).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace

from ketch.errors import KetchError, NotFound
from ketch.model import Intent, OperationKind, PidStatus, RunState
from ketch.progress import Reporter
from ketch.runtime.driver import SUSPEND_TAG, Purges
from ketch.service import clone, guestlink, journal, mounts, settings, snapshots
from ketch.service.context import Context
from ketch.store.db import JournalEntry
from ketch.store.queued import QUEUEABLE

JOB_TIMEOUT = 300.0
STOP_WAIT = 15.0  # seconds an interrupted stop's guest is given to power off

# Operations whose steps name what they touch (a tag, a size): their own rules.
BY_STEP: dict[str, Callable[[Context, JournalEntry, Reporter], Awaitable[str]]] = {
    "snapshot": snapshots.recover_take,
    "restore": snapshots.recover_restore,
    "delete-snapshot": snapshots.recover_delete,
    "clone": clone.recover,
    "set": settings.recover,
}


async def recover_all(
    ctx: Context, reporter: Reporter, *, ignore_active: Collection[str] = ()
) -> list[str]:
    """Recover every unfinished operation nobody runs now; returns what was done.

    ``ignore_active``: instances whose live-operation entry is the caller's own.
    """
    done = []
    for entry in ctx.store.unfinished():
        if entry.instance in ctx.active and entry.instance not in ignore_active:
            continue
        try:
            what = await recover(ctx, entry, reporter)
        except KetchError as exc:
            what = f"could not recover: {exc.message}"
            reporter.warn(f"{entry.op} on {entry.instance}: {what}")
            continue
        journal.close(ctx, entry.id, "recovered", reporter)
        done.append(f"{entry.op} on {entry.instance}: {what}")
        reporter.step(done[-1])
    return done


async def recover(ctx: Context, entry: JournalEntry, reporter: Reporter) -> str:
    """Finish or roll back one interrupted operation; returns what was done."""
    if entry.op in BY_STEP:
        return await BY_STEP[entry.op](ctx, entry, reporter)
    try:
        record = ctx.store.get(entry.instance)
    except NotFound:
        return "the instance no longer exists"
    spec, idir = record.spec, ctx.root.instance(entry.instance)
    driver = ctx.driver_for(spec)
    await driver.settle(spec, idir, timeout=JOB_TIMEOUT)
    obs = await driver.observe(spec, idir)
    running = obs.pid_status is PidStatus.OURS

    if entry.op in QUEUEABLE and obs.host_error is not None:
        # its host does not answer: queued, as the same verb asked now would be
        ctx.store.queue_op(entry.instance, OperationKind(entry.op), ctx.clock.time())
        return f"queued until host {spec.host} answers ({obs.host_error})"
    if entry.op == "purge":
        await driver.kill(spec, idir)
        if isinstance(driver, Purges):
            await driver.purge(spec, idir)
        await mounts.end_strays(ctx, replace(spec, mounts=()))
        error = guestlink.remove_tree(idir.path)
        if error:
            reporter.warn(f"could not remove {idir.path}: {error}")
        ctx.store.remove(entry.instance)
        return "purge finished"
    if entry.op == "force-stop":
        await driver.kill(spec, idir)
        await mounts.end_strays(ctx, replace(spec, mounts=()))
        ctx.store.set_intent(entry.instance, Intent.STOP)
        return "force stop finished"
    if entry.op == "launch":
        if entry.step == "warm-start":  # a clone that may still be its template: never kept
            await driver.kill(spec, idir)
            error = guestlink.remove_tree(idir.path)
            if error:
                reporter.warn(f"could not remove {idir.path}: {error}")
            ctx.store.remove(entry.instance)
            return "warm launch rolled back: the half-made instance was ended and removed"
        if running:
            ctx.store.set_intent(entry.instance, Intent.RUN)
            return "launch finished: the instance runs"
        if entry.step in ("", "prepare"):
            if isinstance(driver, Purges):
                await driver.purge(spec, idir)
            error = guestlink.remove_tree(idir.path)
            if error:
                reporter.warn(f"could not remove {idir.path}: {error}")
            ctx.store.remove(entry.instance)
            return "launch rolled back: the half-made instance was removed"
        ctx.store.set_intent(entry.instance, Intent.STOP)
        return "launch stopped before the guest ran: the instance is kept, Stopped"
    if entry.op == "start":
        if running:
            ctx.store.set_intent(entry.instance, Intent.RUN)
            if obs.suspend_tag:
                await driver.delete_tag(spec, idir, SUSPEND_TAG)
            return "start finished: the instance runs"
        return "start did not happen: the instance is as it was"
    if entry.op == "suspend":
        if running and obs.suspend_tag and obs.qmp_status != RunState.RUNNING:
            await driver.kill(spec, idir)  # QMP quit first: the state is saved
            ctx.store.set_intent(entry.instance, Intent.SUSPEND)
            return "suspend finished: the saved state is kept"
        if running:
            if obs.suspend_tag:
                await driver.delete_tag(spec, idir, SUSPEND_TAG)
            if obs.qmp_status != RunState.RUNNING:
                await driver.cont(spec, idir)
            ctx.store.set_intent(entry.instance, Intent.RUN)
            return "suspend rolled back: the guest runs on"
        if obs.suspend_tag:
            ctx.store.set_intent(entry.instance, Intent.SUSPEND)
            return "suspend finished: the saved state is kept"
        ctx.store.set_intent(entry.instance, Intent.STOP)
        return "suspend lost with QEMU: the instance is Stopped, its disk intact"
    if entry.op == "stop":
        # The user asked for a stop, and the guest may have had the ACPI power-off already
        # (it would then power off after this look, and read as having exited
        # unexpectedly, with intent run): finish it, bounded.
        if running and not await driver.powerdown(spec, idir, timeout=STOP_WAIT):
            return (
                f"stop not finished: the guest did not power off within {STOP_WAIT:g} s of "
                f"being asked again; it runs on ('ketch stop {entry.instance}' again, or "
                "'stop --force')"
            )
        await driver.kill(spec, idir)  # tidy pid file and socket
        await mounts.end_strays(ctx, replace(spec, mounts=()))
        await guestlink.end_master(ctx.root, entry.instance)
        ctx.store.set_intent(entry.instance, Intent.STOP)
        return "stop finished: the guest powered off" if running else "stop finished"
    return f"nothing to do for '{entry.op}'"
