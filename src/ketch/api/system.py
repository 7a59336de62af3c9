"""The API's models for the storage root as a whole: version, images, settings, doctor.

Part of :mod:`ketch.api.models`, which re-exports every name here; import
them from there (it imports msgspec first, lightly: see its docstring).
"""

from __future__ import annotations

import builtins
from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from ketch.api.common import MAX_DAYS, Body, Name, Reply, Size, Text


class DoctorBody(Body):
    names: Annotated[list[Name], Meta(max_length=10_000)] = []  # noqa: RUF012  (a Struct: msgspec copies it)
    fix: bool = False


class BuildBody(Body):
    name: Literal["tiny", "debian-12"] = "tiny"
    force: bool = False


class PruneBody(Body):
    days: Annotated[float, Meta(ge=0, le=MAX_DAYS)] = 14.0


class SettingBody(Body):
    value: Text


class FindQuery(Body):
    query: Annotated[str, Meta(max_length=1024)] = ""
    show_unsupported: bool = False  # also images the remote marks unsupported
    force_update: bool = False  # read every catalogue afresh, not conditionally


class VersionReply(Reply):
    ketchd: str
    started: float


class FindRow(Reply):
    remote: str
    aliases: list[str] = []  # noqa: RUF012  (a Struct: msgspec copies it)
    release: str = ""
    version: str = ""
    description: str = ""
    os: str = ""
    product: str = ""
    error: str | None = None


class FindReply(Reply):
    images: list[FindRow]


class CachedImage(Reply):
    digest: str
    path: str
    size: int
    source: str
    added: float
    last_used: float
    owners: list[str]


class TemplateInfo(Reply):
    """A warm-launch template (``ketch image warm``)."""

    key: str  # its directory under templates/
    image: str
    cpus: int
    memory: int
    firmware: str  # how its guest booted: "kernel" (its own), "bios" or "uefi"
    size: int  # bytes on disk
    current: bool  # made by this QEMU and guest agent (a stale one is never used)
    created: float
    build_seconds: float


class ImagesReply(Reply):
    images: list[CachedImage]
    templates: list[TemplateInfo] = []  # noqa: RUF012


class PruneReply(Reply):
    removed: list[CachedImage]
    templates: list[TemplateInfo] = []  # noqa: RUF012


class WarmBody(Body):
    image: Annotated[str, Meta(min_length=1, max_length=4096)] = "tiny"
    cpus: Annotated[int, Meta(ge=1, le=64)] = 1
    memory: Size = "1G"
    firmware: Literal["bios", "uefi"] | None = None  # None: what the image needs (as launch)


class NetworkRow(Reply):
    """One host interface an instance can be bridged to, as ``multipass networks`` shows it."""

    name: str
    type: str  # "bridge", "ethernet", "wifi"
    description: str


class NetworksReply(Reply):
    list: builtins.list[NetworkRow]


class SettingReply(Reply):
    key: str
    value: str


class SettingKeysReply(Reply):
    keys: list[str]  # every key that can be set today, as ``get --keys`` lists them


class SetReply(Reply, omit_defaults=True):
    key: str
    value: str | UnsetType = UNSET
    changed: bool | UnsetType = UNSET


class Finding(Reply):
    instance: str
    code: str
    message: str
    fix: str
    fixed: bool | None
    outcome: str | None


class DoctorResult(Reply):
    findings: list[Finding]
    fixed: bool


class BuildResult(Reply):
    id: str
    release: str
    disk: str
