"""State derivation: what the user asked for + what is there -> observed state.

This is the pure heart of "store intent, derive reality".  The full truth
table is in docs/internals.md; every row has a unit test.  The function never
raises: whatever it finds becomes a state plus a list of inconsistencies, each
saying what ketch (or the user) does about it.  What each QEMU run state
means, and which state a live operation shows, are tables in
:mod:`ketch.vocabulary`.
"""

from __future__ import annotations

from ketch.model import Derived, Inconsistency, Intent, Observation, PidStatus, State
from ketch.model import InconsistencyCode as Code
from ketch.vocabulary import OP_STATES, QUARANTINE_ALLOWS, Guest, guest, meaning, quoted

__all__ = ["OP_STATES", "derive"]


def derive(
    *,
    intent: Intent,
    deleted: bool,
    obs: Observation,
    active_op: str | None = None,
    interrupted_op: str | None = None,
    delayed_shutdown: bool = False,
    quarantine: str | None = None,
) -> Derived:
    """Compute the observed state of one instance.  Pure."""
    found: list[Inconsistency] = []
    if quarantine:
        found.append(
            Inconsistency(
                Code.QUARANTINED,
                f"quarantined: {quarantine}",
                f"only {quoted(QUARANTINE_ALLOWS)} are allowed; "
                "'ketch doctor --fix' releases it once the cause is repaired",
            )
        )
    running = obs.pid_status is PidStatus.OURS

    if obs.pid_status is PidStatus.STALE:
        found.append(
            Inconsistency(
                Code.STALE_PID_FILE,
                f"the pid file names process {obs.pid}, which is not running",
                "ketch removes the pid file at the next operation",
            )
        )
    elif obs.pid_status is PidStatus.FOREIGN:
        found.append(
            Inconsistency(
                Code.FOREIGN_PID,
                f"the pid file names process {obs.pid} ({obs.pid_cmdline or '?'}), "
                "which is not this instance's QEMU",
                "ketch ignores that process (it is never signalled) and removes the pid file",
            )
        )
    if obs.pid_file is not None and running:
        found.append(
            Inconsistency(
                Code.PID_FILE_MISMATCH,
                f"the pid file names process {obs.pid_file}, but this instance's QEMU is "
                f"process {obs.pid}",
                "ketch follows the real QEMU (found through /proc) and never signals the "
                "other process; 'ketch doctor --fix' rewrites the pid file",
            )
        )
    if obs.suspend_tag_disk_only:
        found.append(
            Inconsistency(
                Code.DISK_ONLY_SUSPEND_TAG,
                "the disk holds a 'suspend' tag without saved VM state "
                "(a disk-only snapshot, e.g. made by hand)",
                "it is never loaded: 'start' removes it and boots afresh; so does 'stop --force'",
            )
        )
    if interrupted_op:
        found.append(
            Inconsistency(
                Code.INTERRUPTED_OPERATION,
                f"a '{interrupted_op}' operation did not finish (ketchd stopped during it, "
                "or could not record its end)",
                "the state below is what is there now; repeat the command, or 'stop --force'",
            )
        )
    if obs.host_error is not None:
        found.append(
            Inconsistency(
                Code.HOST_UNREACHABLE,
                obs.host_error,
                "its state is not known until the host answers; 'stop --force' and "
                "'delete --purge' are queued and run then",
            )
        )
    if not obs.disk_exists:
        found.append(
            Inconsistency(
                Code.MISSING_DISK,
                "the instance's disk is missing",
                "the instance is kept for inspection; 'delete --purge' removes its record",
            )
        )

    if deleted:
        if running:
            found.append(
                Inconsistency(
                    Code.DELETED_BUT_RUNNING,
                    "the instance is deleted but its QEMU still runs",
                    "'stop --force' or 'purge' ends it",
                )
            )
        return Derived(State.DELETED, tuple(found), running)

    if active_op in OP_STATES:
        return Derived(OP_STATES[active_op], tuple(found), running)

    if quarantine or obs.host_error is not None:
        return Derived(State.UNKNOWN, tuple(found), running)

    if running:
        return _derive_running(intent, obs, found, delayed_shutdown)
    return _derive_stopped(intent, obs, found)


def _derive_running(
    intent: Intent, obs: Observation, found: list[Inconsistency], delayed: bool
) -> Derived:
    if obs.suspend_tag:
        found.append(
            Inconsistency(
                Code.STRAY_SUSPEND_TAG,
                "the disk holds a 'suspend' tag although the instance runs",
                "the tag is stale and is never loaded; 'stop' or 'stop --force' removes it",
            )
        )
    if obs.qmp_status is None and obs.qmp_error is None:
        # The monitor was not asked (an operation owns it right now): the
        # process is ours and alive, which is all that is known.
        return Derived(State.DELAYED_SHUTDOWN if delayed else State.RUNNING, tuple(found), True)
    if obs.qmp_status is None:
        found.append(
            Inconsistency(
                Code.QMP_UNRESPONSIVE,
                f"QEMU runs but its monitor does not answer ({obs.qmp_error or 'no reply'})",
                "'stop --force' ends the process",
            )
        )
        return Derived(State.UNKNOWN, tuple(found), True)
    return _derive_qmp(obs.qmp_status, found, delayed)


def _derive_qmp(status: str, found: list[Inconsistency], delayed: bool) -> Derived:
    """QEMU runs and its monitor answered ``status``: the run-state table decides."""
    kind = guest(status)
    if kind is Guest.RUNNING:
        return Derived(State.DELAYED_SHUTDOWN if delayed else State.RUNNING, tuple(found), True)
    if kind is Guest.PAUSED_IO_ERROR:
        found.append(
            Inconsistency(
                Code.PAUSED_IO_ERROR,
                "QEMU paused the guest because a disk write failed "
                "(is the storage root's filesystem full?)",
                "free some space, then 'start' resumes the guest with nothing lost",
            )
        )
    elif kind is Guest.PAUSED:
        found.append(
            Inconsistency(
                Code.PAUSED,
                f"QEMU runs but the guest's vCPUs are stopped (status '{status}')",
                "'start' resumes the guest; 'stop --force' ends it",
            )
        )
    elif kind is Guest.HALTED:
        found.append(
            Inconsistency(
                Code.GUEST_HALTED,
                f"QEMU runs but the guest is halted (status '{status}')",
                "'stop --force' ends QEMU; 'start' then boots the guest afresh",
            )
        )
    else:
        found.append(
            Inconsistency(
                Code.UNEXPECTED_QMP_STATUS,
                f"QEMU reports status '{status}' ({meaning(status)})",
                "'stop --force' ends it",
            )
        )
    return Derived(State.UNKNOWN, tuple(found), True)


def _derive_stopped(intent: Intent, obs: Observation, found: list[Inconsistency]) -> Derived:
    if obs.suspend_tag is None:
        found.append(
            Inconsistency(
                Code.UNREADABLE_TAGS,
                f"the disk's snapshot tags could not be read ({obs.tag_error or 'unknown error'})",
                "'stop --force' and 'delete --purge' still work; 'ketch doctor' explains more",
            )
        )
        state = State.UNKNOWN if intent is Intent.SUSPEND else State.STOPPED
        return Derived(state, tuple(found), False)
    if intent is Intent.SUSPEND:
        if obs.suspend_tag:
            return Derived(State.SUSPENDED, tuple(found), False)
        found.append(
            Inconsistency(
                Code.MISSING_SUSPEND_TAG,
                "recorded as suspended, but the disk has no 'suspend' tag: "
                "the saved memory state is gone",
                "'start' boots the guest afresh from its disk; nothing on the disk is lost",
            )
        )
        return Derived(State.STOPPED, tuple(found), False)
    if obs.suspend_tag:
        found.append(
            Inconsistency(
                Code.STRAY_SUSPEND_TAG,
                "the disk holds a 'suspend' tag although the instance was not suspended",
                "the tag is never loaded (its memory may be older than the disk): "
                "'start' boots afresh and removes it; so does 'stop --force'",
            )
        )
    if intent is Intent.RUN:
        found.append(
            Inconsistency(
                Code.EXITED_UNEXPECTEDLY,
                "the instance should be running but its QEMU is not "
                "(it crashed, was killed, or the host rebooted)",
                "'start' boots it again",
            )
        )
    return Derived(State.STOPPED, tuple(found), False)
