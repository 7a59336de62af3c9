"""Plain data shared by every layer: states, specs, observations, images.

Nothing here does I/O.  The store persists :class:`InstanceSpec` and
:class:`Intent`; the runtime produces :class:`Observation`; the state
derivation turns both into a :class:`State` plus :class:`Inconsistency` list.

Every word ketch uses for a state, a QEMU run state, an inconsistency, an
operation or a verb is an enum defined once here (a ``StrEnum``: on the wire
and in the journal it is the same string as before); what each one means for
ketch (which verbs a state accepts, what a run state means, what doctor does
about a code) is in :mod:`ketch.vocabulary`.
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


class RunState(enum.StrEnum):
    """QEMU's run states (QMP ``query-status``), all of them, as QMP spells them."""

    DEBUG = "debug"
    INMIGRATE = "inmigrate"
    INTERNAL_ERROR = "internal-error"
    IO_ERROR = "io-error"
    PAUSED = "paused"
    POSTMIGRATE = "postmigrate"
    PRELAUNCH = "prelaunch"
    FINISH_MIGRATE = "finish-migrate"
    RESTORE_VM = "restore-vm"
    RUNNING = "running"
    SAVE_VM = "save-vm"
    SHUTDOWN = "shutdown"
    SUSPENDED = "suspended"
    WATCHDOG = "watchdog"
    GUEST_PANICKED = "guest-panicked"
    COLO = "colo"
    PRECONFIG = "preconfig"


class InconsistencyCode(enum.StrEnum):
    """What state derivation can find wrong with an instance (``ketch info`` shows them)."""

    QUARANTINED = "quarantined"
    STALE_PID_FILE = "stale-pid-file"
    FOREIGN_PID = "foreign-pid"
    PID_FILE_MISMATCH = "pid-file-mismatch"
    DISK_ONLY_SUSPEND_TAG = "disk-only-suspend-tag"
    INTERRUPTED_OPERATION = "interrupted-operation"
    MISSING_DISK = "missing-disk"
    DELETED_BUT_RUNNING = "deleted-but-running"
    STRAY_SUSPEND_TAG = "stray-suspend-tag"
    QMP_UNRESPONSIVE = "qmp-unresponsive"
    PAUSED = "paused"
    PAUSED_IO_ERROR = "paused-io-error"
    GUEST_HALTED = "guest-halted"
    UNEXPECTED_QMP_STATUS = "unexpected-qmp-status"
    UNREADABLE_TAGS = "unreadable-tags"
    MISSING_SUSPEND_TAG = "missing-suspend-tag"
    EXITED_UNEXPECTEDLY = "exited-unexpectedly"
    MOUNT_DEAD = "mount-dead"  # not from derivation: service/mounts_health.py
    MOUNT_SOURCE_MISSING = "mount-source-missing"
    NETWORK_TAP_MISSING = "network-tap-missing"  # not from derivation: service/network.py
    HOST_UNREACHABLE = "host-unreachable"  # its libvirt host could not be asked in time


class FindingCode(enum.StrEnum):
    """What ``ketch doctor`` finds beyond the inconsistencies (checks ``list`` cannot afford)."""

    DISK_LEAKS = "disk-leaks"
    DISK_CORRUPT = "disk-corrupt"
    DISK_CHECK_FAILED = "disk-check-failed"
    MISSING_BASE_IMAGE = "missing-base-image"
    EFIVARS_DAMAGED = "efivars-damaged"
    SNAPSHOT_WITHOUT_METADATA = "snapshot-without-metadata"
    SNAPSHOT_WITHOUT_TAG = "snapshot-without-tag"
    PORT_TAKEN = "port-taken"
    LEFTOVER_SOCKET = "leftover-socket"
    QUARANTINE_CLEARED = "quarantine-cleared"
    STRAY_DIRECTORY = "stray-directory"
    DIRECTORY_WITHOUT_RECORD = "directory-without-record"
    ORPHAN_QEMU = "orphan-qemu"
    NETWORK_BRIDGE_MISSING = "network-bridge-missing"
    NETWORK_DNSMASQ_DEAD = "network-dnsmasq-dead"
    NETWORK_STALE_TAP = "network-stale-tap"
    DATABASE_REPAIRED = "database-repaired"


class OperationKind(enum.StrEnum):
    """What ketchd runs under an instance's lock; the journal's ``op`` column."""

    LAUNCH = "launch"
    START = "start"
    STOP = "stop"
    FORCE_STOP = "force-stop"
    SUSPEND = "suspend"
    RESTART = "restart"
    DELETE = "delete"
    RECOVER = "recover"
    PURGE = "purge"
    SNAPSHOT = "snapshot"
    RESTORE = "restore"
    DELETE_SNAPSHOT = "delete-snapshot"
    CLONE = "clone"
    SET = "set"
    DOCTOR = "doctor"
    BUILD = "build"
    WARM = "warm"  # making a warm-launch template (service/templates.py)
    MOUNT = "mount"
    UMOUNT = "umount"


class Verb(enum.StrEnum):
    """What a user can ask of one instance, spelled as the CLI spells it."""

    INFO = "info"
    DOCTOR = "doctor"
    START = "start"
    STOP = "stop"
    FORCE_STOP = "stop --force"
    DELAYED_STOP = "stop --time"
    SUSPEND = "suspend"
    RESTART = "restart"
    DELETE = "delete"
    PURGE = "delete --purge"
    RECOVER = "recover"
    SNAPSHOT = "snapshot"
    RESTORE = "restore"
    DELETE_SNAPSHOT = "delete NAME.SNAPSHOT"
    CLONE = "clone"
    SET = "set local.NAME.*"
    CONNECT = "exec, shell, transfer"


class HostDriver(enum.StrEnum):
    """What runs a host's instances (``ketch host list``'s Driver column)."""

    QEMU = "qemu"  # ketch's own QEMU driver: the built-in host ``local``
    LIBVIRT = "libvirt"  # a libvirtd, local or remote, reached by its URI


class HostState(enum.StrEnum):
    """What the last probe of a host found (never stored)."""

    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"  # with the reason the probe gives


#: The built-in host: ketch's own QEMU driver, on the daemon's machine; cannot be removed.
LOCAL_HOST = "local"


@dataclass(frozen=True)
class HostSpec:
    """A libvirt host the user added (``ketch host add``): stored, never probed here."""

    name: str
    uri: str  # as the user gave it: qemu:///system, qemu+ssh://user@host[:port]/system
    ssh_key: str | None = None  # absolute path of the private key ssh uses (daemon's machine)
    known_hosts: str | None = None  # the host keys to trust (known_hosts lines), ketch's copy
    created: float = 0.0


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


class MountType(enum.StrEnum):
    """How a host directory reaches the guest (Multipass's ``mount --type``)."""

    CLASSIC = "classic"  # reverse SSHFS: guest sshfs, ketch's confined SFTP server on the host
    NATIVE = "native"  # virtiofs: QEMU's virtiofsd on the host, a vhost-user-fs device in the guest


class Protocol(enum.StrEnum):
    """A forwarded port's transport."""

    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True)
class IdMap:
    """One ``HOST:GUEST`` id mapping of a mount; ``guest`` None is the guest's default user."""

    host: int
    guest: int | None = None


@dataclass(frozen=True)
class MountSpec:
    """One host directory mounted into an instance: part of the instance's spec."""

    source: str  # absolute host path, resolved when the mount was added
    target: str  # absolute guest path
    type: MountType = MountType.CLASSIC
    uid_maps: tuple[IdMap, ...] = ()
    gid_maps: tuple[IdMap, ...] = ()


@dataclass(frozen=True)
class ForwardSpec:
    """An explicit port forward the user asked for (automatic ones are derived, not stored)."""

    host_ip: str
    host_port: int
    guest_port: int
    protocol: Protocol = Protocol.TCP


class NetworkMode(enum.StrEnum):
    """How the guest treats an extra NIC (Multipass's ``--network ...,mode=``)."""

    AUTO = "auto"  # configured by cloud-init (DHCP)
    MANUAL = "manual"  # left unconfigured


@dataclass(frozen=True)
class NetworkSpec:
    """An extra NIC bridged to a host bridge (``launch --network``): part of the spec."""

    name: str  # the host bridge
    mac: str
    mode: NetworkMode = NetworkMode.AUTO


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
    mounts: tuple[MountSpec, ...] = ()
    forwards: tuple[ForwardSpec, ...] = ()
    networks: tuple[NetworkSpec, ...] = ()
    nics_added: int = 0  # NICs added after launch (set bridged=true): the seed's new instance-ids
    host: str = LOCAL_HOST  # the host it runs on (``ketch host``): ketch's own QEMU driver
    # On a remote libvirt host: the port there QEMU forwards the guest's SSH from (its
    # loopback), brought to 127.0.0.1:ssh_port here by the jump (host/ssh/jump.py); else 0.
    host_ssh_port: int = 0


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
    host_error: str | None = None  # its host could not be asked (why): nothing else is known


@dataclass(frozen=True)
class Inconsistency:
    """A mismatch between what was recorded and what is there, and the way out."""

    code: InconsistencyCode  # stable, e.g. "missing-suspend-tag"
    message: str  # what is wrong
    action: str  # what ketch does, or what the user can do
    mount: str | None = None  # the guest path of the mount it is about (mount-* codes)


@dataclass(frozen=True)
class Derived:
    """The outcome of state derivation."""

    state: State
    inconsistencies: tuple[Inconsistency, ...] = field(default_factory=tuple)
    running: bool = False  # a live QEMU process of ours exists


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
