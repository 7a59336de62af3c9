"""``ketch doctor`` on a running instance's mounts: dead ones, and sources that vanished.

A classic mount is dead when its supervisor is gone or the guest's
/proc/mounts lacks its target; ``--fix`` puts it in place again.  A mount
whose source directory is gone is reported; nothing can be repaired for it.
"""

from __future__ import annotations

import os

from ketch.model import MountSpec, MountType
from ketch.progress import NULL
from ketch.service import mounts_classic
from ketch.service.context import Context
from ketch.service.doctor.finding import Finding, Repair
from ketch.service.inspect import View


def _remount(ctx: Context, v: View, mount: MountSpec) -> Repair:
    async def repair() -> str:
        await mounts_classic.activate(ctx, v.record.spec, mount, NULL)
        return f"{mount.source} is mounted at {mount.target} again"

    return repair


async def examine(ctx: Context, v: View) -> list[Finding]:
    spec = v.record.spec
    if not v.derived.running or not spec.mounts:
        return []
    mounted = await mounts_classic.guest_mounts(ctx, spec)
    out: list[Finding] = []
    for mount in spec.mounts:
        if not os.path.isdir(mount.source):
            out.append(
                Finding(
                    v.name,
                    "mount-source-missing",
                    f"the source {mount.source} of the mount {mount.target} no longer exists",
                    f"recreate it, or 'ketch umount {v.name}:{mount.target}'",
                )
            )
        elif mount.type is MountType.CLASSIC and not mounts_classic.active(
            ctx, spec, mount, mounted
        ):
            out.append(
                Finding(
                    v.name,
                    "mount-dead",
                    f"the mount {mount.source} => {mount.target} is not in place",
                    "mount it again",
                    _remount(ctx, v, mount),
                )
            )
    return out
