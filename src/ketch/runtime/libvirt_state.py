"""A libvirt domain's state (``virDomainGetState``) as the QEMU driver's observation: pure.

:func:`ketch.runtime.derive.derive` reads an :class:`~ketch.model.Observation`, which the
QEMU driver fills from the pid file and QMP's ``query-status``.  The libvirt driver fills
the same fields from libvirt's (state, reason) pair, so the instance states, the
inconsistencies and the verbs each state accepts are the same words for both drivers:

- no domain, or ``shutoff``: no process (``PidStatus.NONE``);
- any other state: the domain's QEMU runs (``PidStatus.OURS``) and the state becomes the
  QMP run state QEMU itself would report (:data:`RUN_STATES`'s keys; the table below),
  which ``vocabulary.RUN_STATES`` already classes (running, paused, io-error ...);
- ``nostate`` (libvirt knows nothing yet): the monitor gave no answer (``qmp_error``),
  which ``derive`` shows as Unknown with ``qmp-unresponsive``;
- a domain whose ``<ketch:instance>`` metadata names another instance-id is not ours:
  ``PidStatus.FOREIGN`` (ketch never touches it);
- the suspend tag is libvirt's managed save image (``virDomainHasManagedSaveImage``), the
  disk the instance's volume in the pool.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ketch.model import Observation, PidStatus, RunState

# libvirt's virDomainState values
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)
# virDomainPausedReason values
PAUSED_UNKNOWN, PAUSED_USER, PAUSED_MIGRATION, PAUSED_SAVE, PAUSED_DUMP = range(5)
PAUSED_IOERROR, PAUSED_WATCHDOG, PAUSED_FROM_SNAPSHOT, PAUSED_SHUTTING_DOWN = range(5, 9)
PAUSED_SNAPSHOT, PAUSED_CRASHED, PAUSED_STARTING_UP = range(9, 12)
PAUSED_POSTCOPY, PAUSED_POSTCOPY_FAILED = range(12, 14)

STATE_NAMES = {
    NOSTATE: "nostate",
    RUNNING: "running",
    BLOCKED: "blocked",
    PAUSED: "paused",
    SHUTDOWN: "shutdown",
    SHUTOFF: "shutoff",
    CRASHED: "crashed",
    PMSUSPENDED: "pmsuspended",
}

# A paused domain's reason -> the QMP run state QEMU reports for it.
PAUSED_AS: dict[int, RunState] = {
    PAUSED_UNKNOWN: RunState.PAUSED,
    PAUSED_USER: RunState.PAUSED,
    PAUSED_MIGRATION: RunState.FINISH_MIGRATE,
    PAUSED_SAVE: RunState.SAVE_VM,
    PAUSED_DUMP: RunState.SAVE_VM,
    PAUSED_IOERROR: RunState.IO_ERROR,
    PAUSED_WATCHDOG: RunState.WATCHDOG,
    PAUSED_FROM_SNAPSHOT: RunState.PAUSED,
    PAUSED_SHUTTING_DOWN: RunState.SHUTDOWN,
    PAUSED_SNAPSHOT: RunState.SAVE_VM,
    PAUSED_CRASHED: RunState.GUEST_PANICKED,
    PAUSED_STARTING_UP: RunState.PRELAUNCH,
    PAUSED_POSTCOPY: RunState.POSTMIGRATE,
    PAUSED_POSTCOPY_FAILED: RunState.POSTMIGRATE,
}

# Every other state in which the domain's QEMU runs -> its QMP run state.
ACTIVE_AS: dict[int, RunState] = {
    RUNNING: RunState.RUNNING,
    BLOCKED: RunState.RUNNING,  # a vCPU waits on a resource: the guest runs
    SHUTDOWN: RunState.RUNNING,  # the guest is shutting down, and runs until it is off
    CRASHED: RunState.GUEST_PANICKED,  # kept after a crash (on_crash preserve)
    PMSUSPENDED: RunState.SUSPENDED,  # ACPI S3
}


def run_state(state: int, reason: int) -> RunState | None:
    """The QMP run state of a domain in libvirt's ``state``/``reason``; None: not running,
    or libvirt has no state to tell (``nostate``)."""
    if state == PAUSED:
        return PAUSED_AS.get(reason, RunState.PAUSED)
    return ACTIVE_AS.get(state)


def instance_id(metadata: str | None) -> str | None:
    """The instance-id in a domain's ``<ketch:instance>`` metadata element (None: none)."""
    if not metadata:
        return None
    try:
        el = ET.fromstring(metadata)
    except ET.ParseError:
        return None
    return el.get("instance-id")


def observation(
    state: int | None,
    reason: int,
    *,
    ours: bool,
    managed_save: bool | None,
    disk_exists: bool,
    tag_error: str | None = None,
) -> Observation:
    """The observation of an instance whose domain is in ``state`` (None: not defined).

    ``ours``: the domain's metadata names this instance; ``managed_save``: libvirt holds
    a saved state for it (None: could not be asked, ``tag_error`` says why).
    """
    if state is None or state == SHUTOFF:
        return Observation(None, PidStatus.NONE, None, None, managed_save, tag_error, disk_exists)
    if not ours:
        return Observation(
            None, PidStatus.FOREIGN, None, None, managed_save, tag_error, disk_exists,
            pid_cmdline="a libvirt domain of the same name that is not this instance's",
        )  # fmt: skip
    status = run_state(state, reason)
    error = (
        None if status is not None else f"libvirt reports state '{STATE_NAMES.get(state, state)}'"
    )
    return Observation(
        None,
        PidStatus.OURS,
        None if status is None else str(status),
        error,
        managed_save,
        tag_error,
        disk_exists,
    )
