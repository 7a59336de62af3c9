"""Plain data shared by every layer: states, specs, observations, images.

Nothing here does I/O.  The store persists :class:`InstanceSpec` and
:class:`Intent`; the runtime produces :class:`Observation`; the state
derivation turns both into a :class:`State` plus :class:`Inconsistency` list.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class State(enum.StrEnum):
    """Observed instance states, spelled as Multipass spells them."""

    RUNNING = "Running"
    STOPPED = "Stopped"
    STARTING = "Starting"
    RESTARTING = "Restarting"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    DELAYED_SHUTDOWN = "Delayed Shutdown"
    DELETED = "Deleted"
    UNKNOWN = "Unknown"


class Intent(enum.StrEnum):
    """What the user last asked an instance to be.  Stored; never observed."""

    RUN = "run"
    STOP = "stop"
    SUSPEND = "suspend"


class PidStatus(enum.StrEnum):
    """What the pid file in an instance directory turned out to mean."""

    NONE = "none"  # no pid file
    STALE = "stale"  # pid file names a dead process
    FOREIGN = "foreign"  # pid file names a live process that is not this instance's QEMU
    OURS = "ours"  # pid file names this instance's QEMU, alive


@dataclass(frozen=True)
class BootSpec:
    """How QEMU boots an image: direct kernel boot, or firmware."""

    kernel: str | None = None  # absolute path of the kernel, direct boot
    initrd: str | None = None
    cmdline: str | None = None
    firmware: str = "bios"  # "bios" (SeaBIOS) or "uefi" (OVMF); used without a kernel


@dataclass(frozen=True)
class ImageInfo:
    """A cached, verified base image ready to back instance disks."""

    id: str  # stable id in the vault (e.g. "ketch:tiny@20261126" or a sha256)
    release: str  # human name, e.g. "ketch tiny 2026-11-26" or "Ubuntu 24.04 LTS"
    disk: str  # absolute path of the base qcow2 (or raw) disk
    disk_format: str  # "qcow2" or "raw"
    boot: BootSpec
    aliases: tuple[str, ...] = ()
    remote: str = ""
    version: str = ""


@dataclass(frozen=True)
class InstanceSpec:
    """What the user asked for when launching (and later via ``set``)."""

    name: str
    image: str  # what the user typed, e.g. "tiny", "ketch:tiny", "file:///x.qcow2"
    image_id: str
    release: str
    cpus: int
    memory: int  # bytes
    disk: int  # bytes
    boot: BootSpec
    base_disk: str  # path of the backing image in the vault
    ssh_port: int
    mac: str
    instance_id: str
    user: str = "ubuntu"
    cloud_init: str | None = None  # the user's #cloud-config, as given
    created: float = 0.0


@dataclass(frozen=True)
class Observation:
    """What ketch found when it looked at an instance, this time."""

    pid: int | None
    pid_status: PidStatus
    qmp_status: str | None  # QMP query-status "status", None when not asked or no answer
    qmp_error: str | None  # why QMP gave no answer, when the process is ours
    suspend_tag: bool | None  # None when the tags could not be read
    tag_error: str | None
    disk_exists: bool
    pid_cmdline: str | None = None  # for a FOREIGN pid: what that process is
    pid_file: int | None = None  # what the pid file said, when it is not ``pid``
    suspend_tag_disk_only: bool = False  # a "suspend" tag that holds no VM state


@dataclass(frozen=True)
class Inconsistency:
    """A mismatch between what was recorded and what is there, and the way out."""

    code: str  # stable, e.g. "missing-suspend-tag"
    message: str  # what is wrong
    action: str  # what ketch does, or what the user can do


@dataclass(frozen=True)
class Derived:
    """The outcome of state derivation."""

    state: State
    inconsistencies: tuple[Inconsistency, ...] = field(default_factory=tuple)
    running: bool = False  # a live QEMU process of ours exists


@dataclass(frozen=True)
class SshTarget:
    """Everything a client needs to reach an instance over SSH, host key pinned."""

    name: str  # instance name; also the HostKeyAlias in known_hosts
    host: str  # 127.0.0.1 (user-mode networking forwards a port)
    port: int
    user: str
    identity: str  # path of the client private key
    known_hosts: str  # path of the instance's pinned known_hosts file


# -- disks (what a driver reports about an instance's disk) ---------------------------------


@dataclass(frozen=True)
class SnapshotEntry:
    """One internal snapshot of a disk: its tag and how much VM state (RAM, devices) it holds."""

    name: str
    vm_state_size: int  # 0: a disk-only snapshot, which cannot be resumed


@dataclass(frozen=True)
class DiskInfo:
    """What ketch uses of a disk image's description (``qemu-img info``)."""

    format: str
    virtual_size: int
    actual_size: int
    backing: str | None
    snapshots: tuple[str, ...]
    corrupt: bool = False
    snapshot_states: tuple[SnapshotEntry, ...] = ()
    backing_format: str | None = None


@dataclass(frozen=True)
class DiskCheck:
    """A consistency check of a disk (``qemu-img check``)."""

    leaks: int
    corruptions: int
    check_errors: int

    @property
    def clean(self) -> bool:
        return not (self.leaks or self.corruptions or self.check_errors)
