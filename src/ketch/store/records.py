"""The store's rows as Python values: instances, journal entries, snapshots; specs as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ketch.model import BootSpec, InstanceSpec, Intent


@dataclass(frozen=True)
class Record:
    """One instance row: the spec plus what the user last asked of it."""

    spec: InstanceSpec
    intent: Intent
    deleted: bool
    shutdown_at: float | None
    quarantine: str | None


@dataclass(frozen=True)
class JournalEntry:
    id: int
    instance: str
    op: str
    step: str
    started: float
    finished: float | None
    outcome: str | None


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot's metadata; its data is the internal tag ``tag`` in the instance's disk."""

    instance: str
    name: str  # what the user sees: unique per instance
    tag: str  # the qcow2 internal snapshot tag
    comment: str
    parent: str | None  # the snapshot the disk was at when this one was taken
    created: float
    cpus: int  # the instance's resources when it was taken (restored with it)
    memory: int
    disk: int


def spec_to_json(spec: InstanceSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def spec_from_json(text: str) -> InstanceSpec:
    data: dict[str, Any] = json.loads(text)
    data["boot"] = BootSpec(**data.get("boot", {}))
    fields = set(InstanceSpec.__dataclass_fields__)
    return InstanceSpec(**{k: v for k, v in data.items() if k in fields})
