"""Native (virtiofs) mounts in place: a placeholder on this branch.

The ``native`` work provides the real module with these signatures; until it
is merged every call says native mounts are not available.
"""

from __future__ import annotations

from ketch.errors import KetchError
from ketch.model import InstanceSpec, MountSpec
from ketch.progress import Reporter
from ketch.service.context import Context


async def activate(ctx: Context, spec: InstanceSpec, mount: MountSpec, reporter: Reporter) -> None:
    raise KetchError("native mounts are not available yet")


async def deactivate(
    ctx: Context, spec: InstanceSpec, mount: MountSpec, reporter: Reporter
) -> None:
    raise KetchError("native mounts are not available yet")


def active(ctx: Context, spec: InstanceSpec, mount: MountSpec) -> bool | None:
    raise KetchError("native mounts are not available yet")
