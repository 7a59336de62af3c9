"""The bodies, query parameters, replies and stream events of ketchd's API, as msgspec Structs.

Request bodies and query parameters forbid unknown fields and bound every
value (``msgspec.Meta``); replies accept unknown fields (a newer daemon may
add some) but not missing or mistyped ones.  Shapes are Multipass's where
Multipass has one (``list``, ``info``, ``find``), so ``--format json``
prints exactly what the daemon sent.

msgspec imports ``typing_extensions`` when it is installed, only for
``get_type_hints`` (and TypedDict's ``Required``), which Python 3.11's own
:mod:`typing` has; that import (with :mod:`inspect`, :mod:`ast`, :mod:`dis`
behind it) costs ``ketch list`` about 8 ms, a sixth of its budget.  So msgspec
is first imported here with ``typing_extensions`` hidden, and falls back to
:mod:`typing` as it is written to; the module stays importable for everyone
else afterwards.
"""

from __future__ import annotations

import sys

if "msgspec" not in sys.modules and "typing_extensions" not in sys.modules:
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # "not installed"
    try:
        import msgspec
    finally:
        del sys.modules["typing_extensions"]

# (after msgspec's first import, above)
import builtins
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

# -- limits ----------------------------------------------------------------------------

MAX_BODY = 8 * 1024 * 1024  # bytes in one request body (a NoCloud seed holds far more)
MAX_TIMEOUT = 3600.0  # seconds a launch may wait for its guest
MAX_DELAY = 525_600.0  # minutes a delayed stop may wait (a year)
MAX_DAYS = 36_500.0  # days for image prune (a century)
MAX_TEXT = 64 * 1024  # characters of a comment or setting value

Name = Annotated[str, Meta(min_length=1, max_length=63, description="an instance name")]
SnapshotName = Annotated[str, Meta(min_length=1, max_length=63, description="a snapshot name")]
Size = Annotated[
    str, Meta(min_length=1, max_length=32, description="a size: bytes, or with K, M, G, T")
]
Timeout = Annotated[float, Meta(gt=0, le=MAX_TIMEOUT, description="seconds")]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies and query parameters: unknown fields are refused."""


class Reply(Struct, kw_only=True):
    """Base of replies: unknown fields are ignored, missing ones are an error."""


# -- errors ----------------------------------------------------------------------------


class ErrorDetail(Reply):
    code: str
    message: str
    hint: str | None = None
    exit_code: int = 2


class ErrorReply(Reply):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail


# -- request bodies --------------------------------------------------------------------


class Empty(Body):
    """A body with nothing in it (``{}``; no body at all is the same)."""


class LaunchBody(Body):
    image: Annotated[str, Meta(min_length=1, max_length=4096)] = "tiny"
    name: Name | None = None
    cpus: Annotated[int, Meta(ge=1, le=64)] = 1
    memory: Size = "1G"
    disk: Size = "5G"
    cloud_init: str | None = None
    timeout: Timeout | None = None
    firmware: Literal["bios", "uefi"] | None = None


class StopBody(Body):
    force: bool = False
    cancel: bool = False
    time: Annotated[float, Meta(ge=0, le=MAX_DELAY, description="minutes")] | None = None


class DeleteBody(Body):
    purge: bool = False


class SnapshotBody(Body):
    name: SnapshotName | None = None
    comment: Text = ""


class RestoreBody(Body):
    destructive: bool = False
    snapshot_first: bool = False


class CloneBody(Body):
    name: Name | None = None


class DoctorBody(Body):
    names: Annotated[list[Name], Meta(max_length=10_000)] = []
    fix: bool = False


class BuildBody(Body):
    name: Literal["tiny", "debian-12"] = "tiny"
    force: bool = False


class PruneBody(Body):
    days: Annotated[float, Meta(ge=0, le=MAX_DAYS)] = 14.0


class SettingBody(Body):
    value: Text


# -- query parameters ------------------------------------------------------------------


class NoQuery(Body):
    """A route that takes no query parameters."""


class NamesQuery(Body):
    names: Annotated[str, Meta(max_length=MAX_TEXT, description="comma-separated")] = ""


class FindQuery(Body):
    query: Annotated[str, Meta(max_length=1024)] = ""


# -- replies ---------------------------------------------------------------------------


class VersionReply(Reply):
    ketchd: str
    started: float


class ListEntry(Reply):
    name: str
    state: str
    ipv4: list[str]
    release: str
    ssh_port: int
    inconsistencies: int


class ListReply(Reply):
    list: builtins.list[ListEntry]


class Inconsistency(Reply):
    code: str
    message: str
    action: str


class Memory(Reply, omit_defaults=True):
    total: int
    used: int | UnsetType = UNSET


class Disk(Reply, omit_defaults=True):
    total: str
    used: str | UnsetType = UNSET


class SshAddress(Reply):
    host: str
    port: int
    user: str


class SnapshotInfo(Reply):
    cpu_count: str
    disk_space: str
    memory_size: str
    mounts: dict[str, Any]
    created: str
    parent: str
    children: list[str]
    comment: str
    tag: str


_INSTANCE_FIELDS = (
    "state", "image_release", "image_hash", "release", "cpu_count", "memory", "disks",
    "load", "ipv4", "mounts", "snapshot_count", "created", "ssh", "accel", "image", "pid",
    "quarantine", "inconsistencies",
)  # fmt: skip


class InfoEntry(Reply, omit_defaults=True):
    """One value of ``info``: an instance (``state`` … ``inconsistencies``), its snapshots, or both.

    Multipass puts ``INSTANCE.SNAPSHOT`` details under ``info[INSTANCE]["snapshots"]``,
    so an entry may hold snapshots only; otherwise every instance field is there.
    """

    state: str | UnsetType = UNSET
    image_release: str | UnsetType = UNSET
    image_hash: str | UnsetType = UNSET
    release: str | UnsetType = UNSET
    cpu_count: str | UnsetType = UNSET
    memory: Memory | UnsetType = UNSET
    disks: dict[str, Disk] | UnsetType = UNSET
    load: list[float] | UnsetType = UNSET
    ipv4: list[str] | UnsetType = UNSET
    mounts: dict[str, Any] | UnsetType = UNSET
    snapshot_count: str | UnsetType = UNSET
    created: str | UnsetType = UNSET
    ssh: SshAddress | UnsetType = UNSET
    accel: str | UnsetType = UNSET
    image: str | UnsetType = UNSET
    pid: int | UnsetType | None = UNSET
    quarantine: str | UnsetType | None = UNSET
    inconsistencies: list[Inconsistency] | UnsetType = UNSET
    shutdown_at: str | UnsetType = UNSET
    snapshots: dict[str, SnapshotInfo] | UnsetType = UNSET

    def __post_init__(self) -> None:
        present = [f for f in _INSTANCE_FIELDS if getattr(self, f) is not UNSET]
        if present and len(present) != len(_INSTANCE_FIELDS):
            missing = [f for f in _INSTANCE_FIELDS if f not in present]
            raise ValueError(f"instance entry without {', '.join(missing)}")

    @property
    def is_instance(self) -> bool:
        return self.state is not UNSET


class InfoReply(Reply):
    errors: list[str]
    info: dict[str, InfoEntry]


class SnapshotListEntry(Reply):
    parent: str
    comment: str


class SnapshotListReply(Reply):
    errors: list[str]
    info: dict[str, dict[str, SnapshotListEntry]]


class SshTargetReply(Reply):
    """What ``exec``, ``shell`` and ``transfer`` need to reach a guest (host key pinned)."""

    name: str
    host: str
    port: int
    user: str
    identity: str
    known_hosts: str


class FindRow(Reply):
    remote: str
    aliases: list[str] = []
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


class ImagesReply(Reply):
    images: list[CachedImage]


class PruneReply(Reply):
    removed: list[CachedImage]


class SettingReply(Reply):
    key: str
    value: str


class SetReply(Reply, omit_defaults=True):
    key: str
    value: str | UnsetType = UNSET
    changed: bool | UnsetType = UNSET


# -- operation results (the "result" of a stream) --------------------------------------


class NameResult(Reply, omit_defaults=True):
    """stop, suspend, restart, recover, launch: the instance acted on."""

    name: str
    shutdown_at: float | UnsetType = UNSET  # stop --time


class StartResult(Reply):
    name: str
    resumed: bool


class DeleteResult(Reply):
    name: str
    purged: bool


class PurgeResult(Reply):
    purged: list[str]


class SnapshotResult(Reply):
    name: str
    snapshot: str


class RestoreResult(Reply):
    name: str
    snapshot: str
    saved: str | None


class CloneResult(Reply):
    name: str
    source: str


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


# -- stream events (NDJSON, one per line; the last is "result" or "error") --------------


class Event(Struct, tag_field="type", kw_only=True):
    """Base of the stream events: ``type`` says which."""


class OperationEvent(Event, tag="operation", omit_defaults=True):
    """First event of a stream: the operation's id (``/v1/operations/{id}``).

    A re-attached stream also says how many kept events it replays and how many
    fell out of the bounded buffer before (both 0 with ``replay=false``).
    """

    id: str
    replayed: int | None = None
    dropped: int | None = None


class StepEvent(Event, tag="step"):
    message: str


class ProgressEvent(Event, tag="progress"):
    label: str
    done: int
    total: int | None


class WarningEvent(Event, tag="warning"):
    message: str


class WaitingEvent(Event, tag="waiting"):
    message: str


class ResultEvent(Event, tag="result"):
    """The operation's result; its shape is the route's result model."""

    result: dict[str, Any]


class ErrorEvent(Event, tag="error"):
    error: ErrorDetail


AnyEvent = (
    OperationEvent | StepEvent | ProgressEvent | WarningEvent | WaitingEvent | ResultEvent
    | ErrorEvent
)  # fmt: skip


def decode_event(line: bytes) -> AnyEvent:
    """One NDJSON line as an event (msgspec errors propagate)."""
    event: AnyEvent = msgspec.json.decode(line, type=AnyEvent)
    return event
