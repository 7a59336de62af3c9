"""Use cases: start, stop (graceful, forced, delayed), suspend, restart.

Each operation checks its verb against the states that accept it (one
table, ``vocabulary.ACCEPTS``); anything else raises InvalidState with a
hint.  ``stop --force`` accepts every state and never fails: what goes wrong
on its way becomes a warning.
"""

from __future__ import annotations

import asyncio

from ketch import space
from ketch.api.models import NameResult, StartResult
from ketch.errors import HostCommandError, InvalidState, KetchError, Timeout
from ketch.host import procs
from ketch.model import (
    LOCAL_HOST,
    InconsistencyCode,
    InstanceSpec,
    Intent,
    MountType,
    OperationKind,
    State,
    Verb,
)
from ketch.progress import Reporter
from ketch.runtime import virtiofs
from ketch.runtime.driver import SUSPEND_TAG
from ketch.service import accel, guestlink, mounts, queued
from ketch.service.context import Context
from ketch.service.inspect import View, get, require
from ketch.service.journal import journal, record_quietly
from ketch.service.waits import Cancelled, WaitCancelled
from ketch.vocabulary import resumable

RUNNING = {State.RUNNING, State.DELAYED_SHUTDOWN}


async def start(
    ctx: Context,
    name: str,
    reporter: Reporter,
    *,
    timeout: float | None = None,
    waiting_to: str = "start",
) -> StartResult:
    """Boot a stopped instance, resume a suspended one; a running one is left alone.

    ``timeout`` bounds the wait for readiness (default: the context's boot
    timeout); when it passes, the instance is kept running and Timeout is raised
    with Multipass's sentence ("Timed out waiting for instance to start.").
    """
    v = await get(ctx, name)
    require(v, Verb.START, hint=f"'ketch stop --force {name}' first")
    queued.superseded(ctx, name, reporter)  # a stop --force queued before is not wanted now
    if v.state in RUNNING:
        return StartResult(name=name, resumed=False)
    spec, idir = v.record.spec, ctx.root.instance(name)
    driver = ctx.driver_for(spec)
    if v.state is State.UNKNOWN:
        if resumable(v.obs.qmp_status):
            reporter.step("Resuming paused vCPUs")
            async with journal(ctx, name, OperationKind.START, reporter=reporter):
                await driver.cont(spec, idir)
                ctx.store.set_intent(name, Intent.RUN)
            return StartResult(name=name, resumed=True)
        raise KetchError(
            f'cannot start "{name}": its state is Unknown',
            hint=f"see 'ketch info {name}'; 'ketch stop --force {name}' then start again",
        )
    async with journal(ctx, name, OperationKind.START, reporter=reporter):
        resume = v.state is State.SUSPENDED
        if not resume and (v.obs.suspend_tag or v.obs.suspend_tag_disk_only):
            reporter.warn("removing a stale 'suspend' tag (it is never loaded)")
            await _drop_tag(ctx, v.record.spec, reporter)
        await _free_port(ctx, v, reporter)
        spec = ctx.store.get(name).spec
        if not resume:
            for m in spec.mounts:
                problem = virtiofs.source_problem(m) if m.type is MountType.NATIVE else None
                if problem:
                    reporter.warn(f"{problem}: its native mount at {m.target} is skipped")
        how = (await accel.choose(ctx)).accel if spec.host == LOCAL_HOST else "tcg, libvirt"
        reporter.step(f"{'Resuming' if resume else 'Starting'} {name}")
        try:
            await driver.start(spec, idir, accel=how, resume=resume)
        except HostCommandError as exc:
            if not resume:
                raise
            raise KetchError(
                f'cannot resume "{name}" from its saved state: {exc.stderr or exc.message}',
                hint=f"the saved state is kept; 'ketch stop --force {name}' discards it "
                "and the next start boots afresh (nothing on the disk is lost)",
            ) from exc
        ctx.store.set_intent(name, Intent.RUN)
        # The loaded state's tag goes while the guest wakes up: the wait for readiness
        # needs no monitor until its first check of QEMU, a second from now.
        dropping = (
            asyncio.ensure_future(_drop_tag(ctx, spec, reporter, " after resuming"))
            if resume
            else None
        )
        try:
            await _wait_ready(
                ctx, spec, reporter, timeout=timeout or ctx.boot_timeout, waiting_to=waiting_to,
                finished=resume and guestlink.resumes_ready(idir),  # no boot-finished probe
            )  # fmt: skip
        finally:
            if dropping is not None:
                await dropping
        await mounts.activate_all(ctx, spec, reporter)
    return StartResult(name=name, resumed=resume)


async def _wait_ready(
    ctx: Context,
    spec: InstanceSpec,
    reporter: Reporter,
    *,
    timeout: float,
    waiting_to: str,
    finished: bool,
) -> None:
    """Wait for a started instance to be ready, in Multipass's words when it is not."""
    name, wait, idir = spec.name, timeout, ctx.root.instance(spec.name)
    reporter.step("Waiting for the instance to be ready")
    try:
        await guestlink.wait_ready(
            ctx.root,
            spec,
            timeout=wait,
            reporter=reporter,
            driver=ctx.driver_for(spec),
            finished=finished,
        )
    except Timeout as exc:
        # Multipass's sentence first (src/client/cli/cmd/start.cpp, restart.cpp)
        raise Timeout(
            f"Timed out waiting for instance to {waiting_to}. "
            f'"{name}" was not ready after {wait:g} s ({exc.message})',
            hint=f"it was started and is kept: see 'ketch info {name}' and its serial "
            f"log {idir.serial_log}",
        ) from exc
    except WaitCancelled as exc:
        raise Cancelled(
            f'stopped waiting for "{name}" to be ready: {exc.reason}; it was started and is kept',
            hint=f"see 'ketch info {name}'",
        ) from exc


async def _free_port(ctx: Context, v: View, reporter: Reporter) -> None:
    """If another program took the instance's SSH port while it was down, pick another."""
    spec = v.record.spec
    if guestlink.port_free(spec.ssh_port):
        return
    others = ctx.store.used_ports() - {spec.ssh_port}
    port = guestlink.free_port(others | {spec.ssh_port})
    reporter.warn(f"port {spec.ssh_port} is taken by another program; using {port} for SSH")
    from dataclasses import replace

    ctx.store.set_spec(replace(spec, ssh_port=port))


async def _drop_tag(ctx: Context, spec: InstanceSpec, reporter: Reporter, when: str = "") -> None:
    """Delete the suspend tag; a failure is a warning (``when``: said after "tag")."""
    try:
        await ctx.driver_for(spec).delete_tag(spec, ctx.root.instance(spec.name), SUSPEND_TAG)
    except KetchError as exc:
        reporter.warn(f"could not remove the 'suspend' tag{when}: {exc.message}")


async def stop(ctx: Context, name: str, reporter: Reporter) -> NameResult:
    """Graceful stop: ACPI power-off, bounded wait, else a clear error."""
    v = await get(ctx, name)
    require(
        v,
        Verb.STOP,
        hint=f"use 'ketch stop --force {name}'"
        + (" (this discards the suspended state)" if v.state is State.SUSPENDED else ""),
    )
    ctx.store.set_shutdown_at(name, None)
    if v.state is State.STOPPED:
        ctx.store.set_intent(name, Intent.STOP)
        return NameResult(name=name)
    spec, idir = v.record.spec, ctx.root.instance(name)
    async with journal(ctx, name, OperationKind.STOP, reporter=reporter):
        await mounts.deactivate_all(ctx, spec, reporter, guest=True)
        await guestlink.end_master(ctx.root, name)
        reporter.step(f"Stopping {name}")
        driver = ctx.driver_for(spec)
        if not await driver.powerdown(spec, idir, timeout=ctx.stop_timeout):
            raise Timeout(
                f'"{name}" did not power off within {ctx.stop_timeout:g} s',
                hint=f"use 'ketch stop --force {name}' to end it at once",
            )
        await driver.kill(spec, idir)  # removes the pid file and socket
        ctx.store.set_intent(name, Intent.STOP)
        after = await get(ctx, name)
        if after.obs.suspend_tag or after.obs.suspend_tag_disk_only:
            await _drop_tag(ctx, after.record.spec, reporter)
    return NameResult(name=name)


async def force_stop(ctx: Context, name: str, reporter: Reporter) -> NameResult:
    """End the instance from any state; never fails for anything but "not found" (and
    :class:`~ketch.errors.Queued` when its host does not answer: it runs once it does)."""
    v = await get(ctx, name)
    queued.hold(ctx, v, OperationKind.FORCE_STOP)  # its host does not answer: queued, said
    spec, idir = v.record.spec, ctx.root.instance(name)
    driver = ctx.driver_for(spec)
    async with journal(ctx, name, OperationKind.FORCE_STOP, reporter=reporter, quiet=True):
        record_quietly(
            reporter, "cancel a delayed shutdown", lambda: ctx.store.set_shutdown_at(name, None)
        )
        try:
            if await driver.kill(spec, idir):
                reporter.step(f"Ended {name}'s QEMU")
        except Exception as exc:  # the hallmark: force stop must not fail
            reporter.warn(f"ending QEMU failed: {exc}")
        await mounts.deactivate_all(ctx, spec, reporter, guest=False)  # never raises
        await guestlink.end_master(ctx.root, name)  # never raises
        for inc in v.derived.inconsistencies:
            if inc.code in (InconsistencyCode.STALE_PID_FILE, InconsistencyCode.FOREIGN_PID):
                reporter.warn(f"{inc.message}; removed the pid file")
        obs = await driver.observe(spec, idir, probe_qmp=False)
        if v.record.intent is Intent.SUSPEND and obs.suspend_tag is False:
            reporter.warn(
                "the instance was recorded as suspended but its 'suspend' tag was missing; "
                "it is now Stopped and the next start boots afresh"
            )
        if obs.suspend_tag is None:
            reporter.warn(f"could not read the disk's snapshot tags: {obs.tag_error}")
        elif obs.suspend_tag or obs.suspend_tag_disk_only:
            try:
                await driver.delete_tag(spec, idir, SUSPEND_TAG)
                reporter.step("Discarded the suspended state")
            except KetchError as exc:
                reporter.warn(
                    f"could not remove the 'suspend' tag ({exc.message}); it is never loaded "
                    "into a stopped instance"
                )
        record_quietly(
            reporter,
            "record the instance as stopped (it is: its QEMU has ended)",
            lambda: ctx.store.set_intent(name, Intent.STOP),
        )
        record_quietly(
            reporter,
            "forget the queued stop --force",
            lambda: queued.done(ctx, name, OperationKind.FORCE_STOP),
        )
    return NameResult(name=name)


def due_shutdowns(ctx: Context) -> list[str]:
    """The instances whose delayed shutdown has fallen due (by ``ctx.clock``)."""
    now = ctx.clock.time()
    return [
        r.spec.name
        for r in ctx.store.all()
        if r.shutdown_at is not None and r.shutdown_at <= now and not r.deleted
    ]


async def delayed_stop(ctx: Context, name: str, minutes: float) -> NameResult:
    v = await get(ctx, name)
    require(v, Verb.DELAYED_STOP)
    when = ctx.clock.time() + minutes * 60
    ctx.store.set_shutdown_at(name, when)
    return NameResult(name=name, shutdown_at=when)


async def cancel_delayed_stop(ctx: Context, name: str) -> NameResult:
    v = await get(ctx, name)
    if v.record.shutdown_at is None:
        raise KetchError(f'no delayed shutdown is scheduled for "{name}"')
    ctx.store.set_shutdown_at(name, None)
    return NameResult(name=name)


async def suspend(ctx: Context, name: str, reporter: Reporter) -> NameResult:
    """Save the running VM into its disk as the suspend tag and end QEMU."""
    v = await get(ctx, name)
    require(v, Verb.SUSPEND, hint=f"'ketch start {name}' first")
    if v.state is State.SUSPENDED:
        return NameResult(name=name)
    native = [m.target for m in v.record.spec.mounts if m.type is MountType.NATIVE]
    if native:
        # QEMU cannot save a guest with a vhost-user-fs device (a migration blocker).
        raise InvalidState(
            name,
            v.state.value,
            [],
            message=f'cannot suspend "{name}": it has a native mount ({", ".join(native)}), '
            "and QEMU cannot save the state of a guest with a virtiofs device; it keeps running",
            hint=f"'ketch umount {name}:{native[0]}' and restart it, or 'ketch stop {name}'",
        )
    rss = procs.resident(v.obs.pid) if v.obs.pid else None
    memory = min(v.record.spec.memory, rss) if rss else v.record.spec.memory
    space.require(
        "suspend", ctx.root.instance(name).path, memory=memory, note="the instance keeps running"
    )
    async with journal(ctx, name, OperationKind.SUSPEND, reporter=reporter):
        ctx.store.set_shutdown_at(name, None)
        # Classic mounts ride on an ssh session that a saved state cannot keep: unmounted
        # in the guest first, mounted again after the resume.
        await mounts.deactivate_all(ctx, v.record.spec, reporter, guest=True)
        await guestlink.end_master(ctx.root, name)  # the saved guest keeps no session of it
        idir = ctx.root.instance(name)
        ready = guestlink.ready_now(idir)
        try:
            await ctx.driver_for(v.record.spec).suspend(
                v.record.spec, idir, reporter=reporter, timeout=300.0
            )
        except KetchError as exc:
            await mounts.activate_all(ctx, v.record.spec, reporter)
            raise suspend_failed(ctx, v, exc) from exc
        guestlink.mark_saved(idir, ready)
        ctx.store.set_intent(name, Intent.SUSPEND)
    return NameResult(name=name)


def suspend_failed(ctx: Context, v: View, exc: KetchError) -> KetchError:
    """Say why a suspend failed, naming a full filesystem when that is the cause.

    (QEMU reports ENOSPC while writing the VM state as an I/O error.)
    """
    import shutil

    free = shutil.disk_usage(ctx.root.instance(v.name).path).free
    message = f'"{v.name}" was not suspended: {exc.message}; it keeps running'
    if free < v.record.spec.memory:
        return KetchError(
            message,
            hint=f"the storage root's filesystem has {free // 2**20} MiB free; saving the "
            f"guest's state needs up to its memory ({v.record.spec.memory // 2**20} MiB): "
            "free some space and retry",
        )
    return KetchError(message, hint=f"see 'ketch info {v.name}' and its qemu.log")


async def restart(
    ctx: Context, name: str, reporter: Reporter, *, timeout: float | None = None
) -> StartResult:
    v = await get(ctx, name)
    require(v, Verb.RESTART, hint=f"'ketch start {name}'")
    if v.state in RUNNING:
        await stop(ctx, name, reporter)
    return await start(ctx, name, reporter, timeout=timeout, waiting_to="restart")
