"""The repairs ``ketch doctor --fix`` makes: each builds a :data:`Repair`, run only with ``--fix``.

Building one changes nothing; awaiting it makes the repair and returns what
was done (or raises :class:`~ketch.errors.KetchError` saying why not).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from pathlib import Path

from ketch.errors import KetchError
from ketch.host import procs, ssh
from ketch.layout import InstanceDir
from ketch.model import InstanceSpec, Intent
from ketch.progress import Reporter
from ketch.runtime.driver import SUSPEND_TAG
from ketch.service import guestlink, journal, recovery
from ketch.service.context import Context
from ketch.service.doctor.finding import Repair

POWEROFF_TIMEOUT = 60.0
POWEROFF_RETRY = 5.0  # seconds between two asks while the guest does not power off
MIN_FREE = 64 * 1024 * 1024  # below this, a guest paused by ENOSPC would pause again


def remove(*paths: Path) -> Repair:
    async def repair() -> str:
        procs.remove_quietly(*paths)
        return "removed " + ", ".join(p.name for p in paths)

    return repair


def write_pid(idir: InstanceDir, pid: int) -> Repair:
    async def repair() -> str:
        tmp = idir.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(idir.pidfile)
        return f"the pid file names {pid} again"

    return repair


def record_intent(ctx: Context, name: str, intent: Intent) -> Repair:
    async def repair() -> str:
        ctx.store.set_intent(name, intent)
        return f"recorded as {intent.value}"

    return repair


def drop_tag(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    async def repair() -> str:
        await ctx.driver.delete_tag(spec, idir, SUSPEND_TAG)
        return "removed the stale 'suspend' tag"

    return repair


def recover(ctx: Context, name: str, reporter: Reporter | None) -> Repair:
    async def repair() -> str:
        from ketch.progress import NULL

        done = []
        for entry in ctx.store.unfinished():
            if entry.instance == name:
                done.append(await recovery.recover(ctx, entry, reporter or NULL))
                journal.close(ctx, entry.id, "recovered", reporter or NULL)
        return "; ".join(done) or "nothing left to recover"

    return repair


def suspend_resume(ctx: Context, name: str) -> Repair:
    """Suspend the instance and resume it: a new QEMU, given its TAP (made again) at start."""

    async def repair() -> str:
        from ketch.progress import NULL
        from ketch.service import lifecycle

        await lifecycle.suspend(ctx, name, NULL)
        await lifecycle.start(ctx, name, NULL)
        return "suspended and resumed it: its QEMU has its TAP again"

    return repair


def cont(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    async def repair() -> str:
        await ctx.driver.cont(spec, idir)
        ctx.store.set_intent(spec.name, Intent.RUN)
        return "resumed the guest"

    return repair


def cont_if_space(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    resume = cont(ctx, spec, idir)

    async def repair() -> str:
        import shutil

        free = shutil.disk_usage(idir.path).free
        if free < MIN_FREE:
            raise KetchError(f"only {free // 2**20} MiB free in the storage root: free some first")
        return await resume()

    return repair


def kill(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    async def repair() -> str:
        await ctx.driver.kill(spec, idir)
        return "ended QEMU"

    return repair


def poweroff(ctx: Context, spec: InstanceSpec, idir: InstanceDir) -> Repair:
    """Power the guest off over SSH (its monitor does not answer); asked again every
    :data:`POWEROFF_RETRY` seconds while QEMU lives: a guest still booting has no SSH yet,
    and one try would leave it running (the chaos walk, seed 1807 step 559)."""

    async def repair() -> str:
        target = guestlink.target(ctx.root, spec)
        pid = procs.read_pidfile(idir.pidfile)
        deadline = time.monotonic() + POWEROFF_TIMEOUT
        asked = 0.0  # when poweroff was last asked for
        while pid and procs.alive(pid) and time.monotonic() < deadline:
            if time.monotonic() - asked >= POWEROFF_RETRY:
                asked = time.monotonic()
                left = max(1.0, deadline - asked)
                with contextlib.suppress(KetchError):  # (a timeout: tried again)
                    await ssh.run_in_guest(
                        target, ["sudo", "-n", "poweroff"], timeout=min(30.0, left)
                    )
            await asyncio.sleep(0.2)
        if pid and procs.alive(pid):
            raise KetchError("the guest did not power off; 'ketch stop --force' ends it")
        procs.remove_quietly(idir.pidfile, idir.qmp_socket)
        ctx.store.set_intent(spec.name, Intent.STOP)
        return "the guest powered off; the instance is Stopped"

    return repair


def quarantine(ctx: Context, name: str, reason: str) -> Repair:
    async def repair() -> str:
        ctx.store.set_quarantine(name, reason)
        return f"quarantined: {reason}"

    return repair


def release(ctx: Context, name: str) -> Repair:
    async def repair() -> str:
        ctx.store.set_quarantine(name, None)
        return "quarantine released"

    return repair


def new_port(ctx: Context, spec: InstanceSpec) -> Repair:
    async def repair() -> str:
        port = guestlink.free_port(ctx.store.used_ports())
        ctx.store.set_spec(replace(spec, ssh_port=port))
        return f"SSH port is now {port}"

    return repair
