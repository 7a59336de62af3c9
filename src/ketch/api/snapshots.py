"""The API's models for snapshots: take, list, restore, and an instance's snapshot details.

Part of :mod:`ketch.api.models`, which re-exports every name here; import
them from there (it imports msgspec first, lightly: see its docstring).
"""

from __future__ import annotations

from ketch.api.common import Body, MountInfo, Reply, SnapshotName, Text


class SnapshotBody(Body):
    name: SnapshotName | None = None
    comment: Text = ""


class RestoreBody(Body):
    destructive: bool = False
    snapshot_first: bool = False


class SnapshotInfo(Reply):
    cpu_count: str
    disk_space: str
    memory_size: str
    mounts: dict[str, MountInfo]  # snapshots keep no mounts: always empty
    created: str
    parent: str
    children: list[str]
    comment: str
    tag: str


class SnapshotListEntry(Reply):
    parent: str
    comment: str


class SnapshotListReply(Reply):
    errors: list[str]
    info: dict[str, dict[str, SnapshotListEntry]]


class SnapshotResult(Reply):
    name: str
    snapshot: str


class RestoreResult(Reply):
    name: str
    snapshot: str
    saved: str | None
