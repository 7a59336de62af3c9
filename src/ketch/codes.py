"""Every inconsistency code and doctor finding: what it means, what ``doctor --fix`` does.

State derivation (``runtime/derive.py``) produces the
:class:`~ketch.model.InconsistencyCode` s, ``ketch doctor`` adds the
:class:`~ketch.model.FindingCode` s; ``service/doctor/`` dispatches on them
through a table whose every entry this one explains (a unit test holds the
two together), and ``ketch.docgen`` writes the documents' tables from it.  Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from ketch.model import FindingCode, InconsistencyCode


@dataclass(frozen=True)
class Code:
    """What an inconsistency or finding means, and what ``ketch doctor --fix`` does."""

    meaning: str
    fix: str  # doctor's word for its repair; "none: ..." when it repairs nothing
    repairs: bool = True  # ``doctor --fix`` repairs it (False: reported only)
    reported: bool = True  # doctor reports it as a finding (False: shown by ``info`` only)


IC, FC = InconsistencyCode, FindingCode
CODES: dict[InconsistencyCode | FindingCode, Code] = {
    IC.QUARANTINED: Code(
        "ketch could not make sense of the instance (the reason is shown)",
        "none: `doctor --fix` releases it once nothing else is wrong (`quarantine-cleared`)",
        repairs=False,
        reported=False,
    ),
    IC.STALE_PID_FILE: Code("the pid file names a dead process", "remove the pid file and socket"),
    IC.FOREIGN_PID: Code(
        "the pid file names a live process that is not this instance's QEMU (never signalled)",
        "remove the pid file and socket",
    ),
    IC.PID_FILE_MISMATCH: Code(
        "the pid file names another process, but /proc found this instance's QEMU",
        "rewrite the pid file with the real pid",
    ),
    IC.DISK_ONLY_SUSPEND_TAG: Code(
        "a `suspend` tag without saved VM state (made by `qemu-img snapshot -c`); never loaded",
        "remove the stale 'suspend' tag",
    ),
    IC.INTERRUPTED_OPERATION: Code(
        "the journal shows an operation ketchd did not finish", "finish or roll back the operation"
    ),
    IC.MISSING_DISK: Code("the instance's disk is missing", "quarantine the instance"),
    IC.DELETED_BUT_RUNNING: Code(
        "the instance is deleted but its QEMU still runs", "end QEMU (the guest is not running)"
    ),
    IC.STRAY_SUSPEND_TAG: Code(
        "a `suspend` tag on an instance that is not suspended; never loaded",
        "remove the stale 'suspend' tag",
    ),
    IC.QMP_UNRESPONSIVE: Code(
        "QEMU runs but its monitor does not answer (e.g. its socket was deleted)",
        "ask the guest to power off over SSH (its disk is kept)",
    ),
    IC.PAUSED: Code("QEMU runs but the guest's vCPUs are stopped", "resume the guest's vCPUs"),
    IC.PAUSED_IO_ERROR: Code(
        "QEMU paused the guest because a disk write failed (a full filesystem)",
        "resume the guest once there is space again",
    ),
    IC.GUEST_HALTED: Code(
        "QEMU runs but the guest is halted (shut down, panicked, internal error)",
        "end QEMU (the guest is not running)",
    ),
    IC.UNEXPECTED_QMP_STATUS: Code(
        "QEMU reports a run state ketch never leaves a guest in",
        "none: 'stop --force' ends QEMU",
        repairs=False,
    ),
    IC.UNREADABLE_TAGS: Code(
        "the disk's snapshot tags could not be read", "quarantine the instance"
    ),
    IC.MISSING_SUSPEND_TAG: Code(
        "recorded as suspended, but the disk has no `suspend` tag (nothing on the disk is lost)",
        "record the instance as stopped",
    ),
    IC.MOUNT_DEAD: Code(
        "a mount of a running instance is not in place: its host side died (the SFTP server "
        "of a classic mount, or serving a source since replaced; a native mount's virtiofsd) "
        "or its guest side is gone (`list` looks at the host side only, `info` at both)",
        "mount it again (classic: a new host side and sshfs; native: mount the device in the "
        "guest; a native mount whose virtiofsd died needs 'ketch restart', which it says)",
    ),
    IC.MOUNT_SOURCE_MISSING: Code(
        "a mount of a running instance whose host directory no longer exists",
        "none: recreate the directory (then `doctor --fix` mounts it again), or 'ketch umount' it",
        repairs=False,
    ),
    IC.NETWORK_TAP_MISSING: Code(
        "the TAP of a running instance on the managed network is gone (deleted by hand, or by "
        "another tool): its managed address does not reach it, ketch's SSH port still does",
        "suspend and resume it, which gives its QEMU the TAP again (the guest's processes are "
        "kept; a running QEMU cannot be given a new TAP)",
    ),
    IC.EXITED_UNEXPECTEDLY: Code(
        "the instance should run but its QEMU does not (crashed, killed, host rebooted)",
        "record the instance as stopped",
    ),
    IC.HOST_UNREACHABLE: Code(
        "the instance's libvirt host did not answer in time (libvirtd stopped, the machine or "
        "its network down): its state is not known; `stop --force` and `delete --purge` of it "
        "are queued and run when the host answers",
        "none: it clears when the host answers again ('ketch host list' says why it does not)",
        repairs=False,
    ),
    FC.DISK_LEAKS: Code(
        "leaked clusters in the disk (`qemu-img check`)", "repair them (qemu-img check -r leaks)"
    ),
    FC.DISK_CORRUPT: Code("the disk is corrupted (`qemu-img check`)", "quarantine the instance"),
    FC.DISK_CHECK_FAILED: Code("`qemu-img check` failed", "quarantine the instance"),
    FC.MISSING_BASE_IMAGE: Code(
        "the base image in the vault is missing", "fetch the same image again, else quarantine"
    ),
    FC.EFIVARS_DAMAGED: Code(
        "a UEFI variable store not of the firmware's size (QEMU would refuse it)",
        "move it aside as `efivars.fd.damaged-<time>`; the next start makes a fresh one",
    ),
    FC.SNAPSHOT_WITHOUT_METADATA: Code(
        "a snapshot tag in the disk that ketch has no record of",
        "record it as a snapshot (its data is kept)",
    ),
    FC.SNAPSHOT_WITHOUT_TAG: Code(
        "a recorded snapshot whose tag is not in the disk",
        "forget the record (nothing is left to restore)",
    ),
    FC.PORT_TAKEN: Code("another program took the instance's SSH port", "pick another free port"),
    FC.LEFTOVER_SOCKET: Code("a QMP socket left from a QEMU that is gone", "remove it"),
    FC.QUARANTINE_CLEARED: Code(
        "quarantined, but nothing is wrong any more", "release the quarantine"
    ),
    FC.STRAY_DIRECTORY: Code(
        "a directory under `instances/` with no record and no disk",
        "none: remove it by hand if unneeded",
        repairs=False,
    ),
    FC.DIRECTORY_WITHOUT_RECORD: Code(
        "a directory holding a disk ketch has no record of (not while a launch or clone makes it)",
        "adopt it as a quarantined instance (never deleted)",
    ),
    FC.ORPHAN_QEMU: Code(
        "a QEMU runs a disk under `instances/` without a record",
        "none: adopt its directory; then 'stop --force' ends it",
        repairs=False,
    ),
    FC.NETWORK_BRIDGE_MISSING: Code(
        "the managed network's bridge is gone (a reboot, or removed by hand)",
        "make the bridge again, then NAT and dnsmasq",
    ),
    FC.NETWORK_DNSMASQ_DEAD: Code(
        "the managed network's dnsmasq (DHCP, DNS) does not run",
        "start dnsmasq again (the leases are kept)",
    ),
    FC.NETWORK_STALE_TAP: Code(
        "a TAP of ketch's on the bridge that no running instance uses", "remove the TAP"
    ),
    FC.DATABASE_REPAIRED: Code(
        "ketchd found `ketch.db` damaged or gone at start-up and rebuilt it (the damaged file "
        "is kept as `ketch.db.damaged-<time>`; instances come back from their `instance.json`)",
        "acknowledge it (the note is removed; the damaged copy is kept)",
    ),
}
