"""The API's models for mounts: ``mount``, ``umount`` and ``launch --mount``.

Part of :mod:`ketch.api.models`, which re-exports every name here; import
them from there (it imports msgspec first, lightly: see its docstring).
A mount's target is an absolute guest path; the CLI fills in the default
(SOURCE's absolute path, as Multipass) before sending.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ketch.api.common import Body, Reply

MAX_MOUNTS = 64  # mounts in one request
Path = Annotated[str, Meta(min_length=1, max_length=4096, description="an absolute path")]
IdMapText = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]{1,10}:([0-9]{1,10}|default)$",
        description="HOST:GUEST ids; GUEST 'default' is the guest's default user (as Multipass)",
    ),
]


class MountRequest(Body):
    source: Path  # host directory
    target: Path  # guest path
    type: Literal["classic", "native"] = "classic"
    uid_maps: Annotated[list[IdMapText], Meta(max_length=64)] = msgspec.field(default_factory=list)
    gid_maps: Annotated[list[IdMapText], Meta(max_length=64)] = msgspec.field(default_factory=list)


class MountBody(Body):
    mounts: Annotated[list[MountRequest], Meta(max_length=MAX_MOUNTS)]


class UmountBody(Body):
    targets: Annotated[list[Path], Meta(max_length=MAX_MOUNTS)] = msgspec.field(
        default_factory=list
    )  # none: every mount


class MountResult(Reply):
    name: str
    targets: list[str]  # the guest paths mounted (or unmounted)
