"""``ketch doctor`` on a running instance's mounts: dead ones, and sources that vanished.

What the host can see (a source gone, a classic mount's SFTP side dead or
serving a replaced source, a native mount's virtiofsd dead) is among the
view's inconsistencies (``service/mounts_health.py``) and reaches doctor
through :data:`~ketch.service.doctor.rules.RULES`, whose ``mount-dead`` fix
is :func:`remount`.  :func:`examine` adds what only the guest can say: a
mount whose host side is fine but that the guest no longer has mounted.
``--fix`` puts a mount in place again: a classic one gets a new host side
and sshfs, a native one is mounted in the guest again; a native mount whose
virtiofsd died cannot be attached to a running QEMU (``restart`` does), and
the repair says so.  Nothing can be repaired for a missing source.
"""

from __future__ import annotations

import os

from ketch.codes import CODES
from ketch.errors import KetchError
from ketch.model import InconsistencyCode, MountType, State
from ketch.progress import NULL
from ketch.runtime import virtiofs
from ketch.service import mounts, mounts_classic, mounts_health, mounts_native
from ketch.service.context import Context
from ketch.service.doctor.finding import Finding, Repair
from ketch.service.inspect import View

IC = InconsistencyCode


def remount(ctx: Context, v: View, target: str | None) -> Repair:
    """Put the mount at ``target`` in place again (the repair of ``mount-dead``)."""

    async def repair() -> str:
        spec = ctx.store.get(v.name).spec
        mount = next((m for m in spec.mounts if m.target == target), None)
        if mount is None:
            raise KetchError(f"{v.name} has no mount at {target} any more")
        if not os.path.isdir(mount.source):
            raise KetchError(f"the source {mount.source} of {mount.target} is missing")
        if mount.type is MountType.CLASSIC:
            await mounts_classic.activate(ctx, spec, mount, NULL)
        elif not virtiofs.running(ctx.root.instance(v.name), mount):
            raise KetchError(
                f"the virtiofsd of the native mount {mount.target} is gone, and a native "
                f"mount is attached only as the instance starts: 'ketch restart {v.name}'"
            )
        else:
            await mounts_native.activate(ctx, spec, mount, NULL)
        return f"{mount.source} is mounted at {mount.target} again"

    return repair


async def examine(ctx: Context, v: View) -> list[Finding]:
    """Mounts whose host side is fine but whose guest side is gone (asked of the guest)."""
    spec = v.record.spec
    if v.state not in (State.RUNNING, State.DELAYED_SHUTDOWN) or not spec.mounts:
        return []  # a paused or frozen guest is not asked (its mounts are not expected)
    active = await mounts.entries(ctx, spec, True)
    return [
        Finding(
            v.name, IC.MOUNT_DEAD, i.message, CODES[IC.MOUNT_DEAD].fix, remount(ctx, v, i.mount)
        )
        for i in mounts_health.guest_problems(spec, active, v.derived.inconsistencies)
    ]
