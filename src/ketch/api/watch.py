"""The events of ``GET /v1/events`` (``ketch watch``, the dashboard): NDJSON, one per line.

Part of :mod:`ketch.api.models`, which re-exports every name here.  The stream
starts with a ``snapshot`` (every instance as ``list`` sees it, and the
operations in flight), then sends what changes: an ``instance`` whose state,
addresses, resources, forwards, mounts or inconsistencies changed, a
``removed`` one, an ``inconsistency`` newly found, an operation ``started`` or
``ended``.  A client that reads too slowly for its bounded buffer gets one
``lagged`` event (how many events it missed) followed by a fresh ``snapshot``.
The stream never ends by itself.
"""

from __future__ import annotations

import builtins
from typing import Annotated

import msgspec
from msgspec import Meta

from ketch.api.common import Body, ErrorDetail, Reply
from ketch.api.events import Event
from ketch.api.forwards import ForwardInfo
from ketch.api.instances import Inconsistency


class WatchInstance(Reply):
    """One instance as the dashboard shows it: what ``list`` and ``info`` observe, no guest call."""

    name: str
    state: str
    ipv4: builtins.list[str]
    image: str
    release: str
    cpus: int
    memory: int  # bytes
    disk: int  # bytes
    ssh_port: int
    forwards: builtins.list[ForwardInfo]
    mounts: builtins.list[str]  # "SOURCE => TARGET"
    inconsistencies: builtins.list[Inconsistency]
    deleted: bool
    quarantine: str | None


class WatchOperation(Reply):
    """An operation in flight (or just ended: ``outcome`` and ``error`` then)."""

    id: str
    kind: str
    instances: builtins.list[str]
    started: float
    outcome: str | None = None
    error: ErrorDetail | None = None


class WatchEvent(Event, kw_only=True):
    """Base of the watch events; ``time`` is when the daemon saw the change (epoch seconds)."""

    time: float


class SnapshotEvent(WatchEvent, tag="snapshot"):
    instances: builtins.list[WatchInstance]
    operations: builtins.list[WatchOperation]


class InstanceEvent(WatchEvent, tag="instance"):
    """An instance that is new (``previous`` null) or changed (``previous``: its state before)."""

    instance: WatchInstance
    previous: str | None


class RemovedEvent(WatchEvent, tag="removed"):
    name: str


class InconsistencyEvent(WatchEvent, tag="inconsistency"):
    name: str
    inconsistency: Inconsistency


class StartedEvent(WatchEvent, tag="started"):
    operation: WatchOperation


class EndedEvent(WatchEvent, tag="ended"):
    operation: WatchOperation


class LaggedEvent(WatchEvent, tag="lagged"):
    """The client read too slowly: ``dropped`` events were dropped; a snapshot follows."""

    dropped: int


AnyWatchEvent = (
    SnapshotEvent | InstanceEvent | RemovedEvent | InconsistencyEvent | StartedEvent
    | EndedEvent | LaggedEvent
)  # fmt: skip


class WatchResult(Reply):
    """The watch stream has no result (it never ends by itself); for the route table only."""


def decode_watch_event(line: bytes) -> AnyWatchEvent:
    """One NDJSON line of ``/v1/events`` (msgspec errors propagate)."""
    event: AnyWatchEvent = msgspec.json.decode(line, type=AnyWatchEvent)
    return event


class DashboardBody(Body):
    """``ketch dashboard``: how long the login token is good for, and which port (0: any)."""

    ttl: Annotated[float, Meta(ge=1, le=3600, description="seconds")] = 120.0
    port: Annotated[int, Meta(ge=0, le=65535)] = 0


class DashboardReply(Reply):
    """Where the dashboard listens and the URL that logs in once (the token in it)."""

    url: str
    port: int
    expires: float  # the token's expiry, epoch seconds
