"""The store's rows as Python values: instances, journal entries, snapshots; specs as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ketch.model import (
    BootSpec,
    ForwardSpec,
    IdMap,
    InstanceSpec,
    Intent,
    MountSpec,
    MountType,
    NetworkMode,
    NetworkSpec,
    Protocol,
)


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


def _mount_from_json(data: dict[str, Any]) -> MountSpec:
    return MountSpec(
        source=data["source"],
        target=data["target"],
        type=MountType(data.get("type", MountType.CLASSIC)),
        uid_maps=tuple(IdMap(**m) for m in data.get("uid_maps", ())),
        gid_maps=tuple(IdMap(**m) for m in data.get("gid_maps", ())),
    )


def _forward_from_json(data: dict[str, Any]) -> ForwardSpec:
    return ForwardSpec(
        host_ip=data["host_ip"],
        host_port=data["host_port"],
        guest_port=data["guest_port"],
        protocol=Protocol(data.get("protocol", Protocol.TCP)),
    )


def _network_from_json(data: dict[str, Any]) -> NetworkSpec:
    return NetworkSpec(
        name=data["name"], mac=data["mac"], mode=NetworkMode(data.get("mode", NetworkMode.AUTO))
    )


def spec_from_json(text: str) -> InstanceSpec:
    data: dict[str, Any] = json.loads(text)
    data["boot"] = BootSpec(**data.get("boot", {}))
    data["mounts"] = tuple(_mount_from_json(m) for m in data.get("mounts", ()))
    data["forwards"] = tuple(_forward_from_json(f) for f in data.get("forwards", ()))
    data["networks"] = tuple(_network_from_json(n) for n in data.get("networks", ()))
    fields = set(InstanceSpec.__dataclass_fields__)
    return InstanceSpec(**{k: v for k, v in data.items() if k in fields})
