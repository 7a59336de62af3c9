"""The API's models for instances: launch, list, info, stop, delete, clone and their results.

Part of :mod:`ketch.api.models`, which re-exports every name here; import
them from there (it imports msgspec first, lightly: see its docstring).
Shapes are Multipass's where Multipass has one (``list``, ``info``).
"""

from __future__ import annotations

import builtins
from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType, field

from ketch.api.common import MAX_DELAY, MAX_TEXT, Body, MountInfo, Name, Reply, Size, Timeout
from ketch.api.forwards import MAX_RULES, ForwardInfo, Rule
from ketch.api.mounts import MAX_MOUNTS, MountRequest
from ketch.api.snapshots import SnapshotInfo


class LaunchBody(Body):
    image: Annotated[str, Meta(min_length=1, max_length=4096)] = "tiny"
    name: Name | None = None
    cpus: Annotated[int, Meta(ge=1, le=64)] = 1
    memory: Size = "1G"
    disk: Size = "5G"
    cloud_init: str | None = None
    timeout: Timeout | None = None
    firmware: Literal["bios", "uefi"] | None = None
    forwards: Annotated[list[Rule], Meta(max_length=MAX_RULES)] = field(default_factory=list)
    # each as --network takes it: name=BRIDGE[,mode=auto|manual][,mac=MAC], or BRIDGE
    networks: Annotated[list[Annotated[str, Meta(max_length=80)]], Meta(max_length=8)] = []  # noqa: RUF012
    bridged: bool = False  # one more NIC on local.bridged-network
    cold: bool = False  # boot, even when a warm-launch template fits
    mounts: Annotated[list[MountRequest], Meta(max_length=MAX_MOUNTS)] = field(default_factory=list)
    # the host it runs on: 'local' (QEMU) or a libvirt host's name; not given: placed on
    # the one with the most free memory when libvirt hosts are configured, else 'local'
    host: Name | None = None


class StartBody(Body):
    timeout: Timeout | None = None  # seconds to wait for readiness (default: ketchd's)


class StopBody(Body):
    force: bool = False
    cancel: bool = False
    time: Annotated[float, Meta(ge=0, le=MAX_DELAY, description="minutes")] | None = None


class DeleteBody(Body):
    purge: bool = False


class CloneBody(Body):
    name: Name | None = None
    mounts: bool = False  # also copy the source's mounts (Multipass does not)
    host: Name | None = None  # the clone's host: the source's (another one is refused)


class NamesQuery(Body):
    names: Annotated[str, Meta(max_length=MAX_TEXT, description="comma-separated")] = ""


class InfoQuery(NamesQuery):
    """``info``'s: with ``no_runtime_information``, nothing is asked of the guests (Multipass's
    ``--no-runtime-information``): no load, disk or memory use, mounts' ``active`` unknown."""

    no_runtime_information: bool = False


class ListEntry(Reply):
    name: str
    state: str
    ipv4: list[str]
    release: str
    ssh_port: int
    inconsistencies: int
    forwards: builtins.list[ForwardInfo] = field(default_factory=builtins.list)
    host: str = "local"  # the host it runs on ('local': ketch's QEMU driver)


class ListReply(Reply):
    list: builtins.list[ListEntry]
    # how many hosts are configured ('local' included): the table and csv have a Host
    # column when there are more than one (the JSON and yaml have each entry's "host")
    hosts: int = 1


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


_INSTANCE_FIELDS = (
    "state", "image_release", "image_hash", "release", "cpu_count", "memory", "disks",
    "load", "ipv4", "mounts", "snapshot_count", "created", "ssh", "accel", "image", "pid",
    "quarantine", "inconsistencies", "forwards",
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
    mounts: dict[str, MountInfo] | UnsetType = UNSET
    snapshot_count: str | UnsetType = UNSET
    created: str | UnsetType = UNSET
    ssh: SshAddress | UnsetType = UNSET
    accel: str | UnsetType = UNSET
    image: str | UnsetType = UNSET
    pid: int | UnsetType | None = UNSET
    quarantine: str | UnsetType | None = UNSET
    inconsistencies: list[Inconsistency] | UnsetType = UNSET
    forwards: list[ForwardInfo] | UnsetType = UNSET
    shutdown_at: str | UnsetType = UNSET
    launched: str | UnsetType = UNSET  # "cold", or "warm (template KEY)"
    host: str | UnsetType = UNSET  # the host it runs on (ketchd always says; unset: local)
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
    hosts: int = 1  # hosts configured ('local' included): see ListReply.hosts


class MountPath(Reply):
    """One of an instance's mounts as ``exec`` maps the working directory: host and guest path."""

    source: str  # absolute host path
    target: str  # absolute guest path


class SshTargetReply(Reply):
    """What ``exec``, ``shell`` and ``transfer`` need to reach a guest (host key pinned).

    ``mounts`` rides along so that ``exec`` can map the host's working
    directory into the guest without a second request.
    """

    name: str
    host: str
    port: int
    user: str
    identity: str
    known_hosts: str
    mounts: list[MountPath]
    # The instance's multiplexed connection's socket while ketchd's master is on it, else "".
    control_path: str = ""


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


class CloneResult(Reply):
    name: str
    source: str
