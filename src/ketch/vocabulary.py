"""What each word of ketch's vocabulary means: one table per vocabulary.

The enums themselves are in :mod:`ketch.model`.  Here, once each:

- ``RUN_STATES``: every QEMU run state, and what it means for ketch
  (:class:`Guest`: running, paused and resumable, paused on a failed write,
  halted, busy, or a state ketch has no way out of but ``stop --force``);
  ``GUEST`` says what ketch does with each of those.
- ``ACCEPTS``: the verbs each instance state accepts, and ``QUARANTINE_ALLOWS``
  the only ones a quarantined instance accepts; :func:`require` raises the
  errors every service raises for a verb the state does not accept (in the
  spirit of qemu.qmp's ``Runstate`` and ``@require``).
- ``OPERATIONS``: every operation kind, whether it is journaled and the
  state it shows while it runs.

``ketch.docgen`` writes the tables of docs/internals.md and docs/reliability.md
from these, and a unit test fails when the documents are stale.  Inconsistency codes
and doctor findings are explained in :mod:`ketch.codes`.  Pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ketch.errors import Deleted, InvalidState, Quarantined
from ketch.model import InconsistencyCode, OperationKind, RunState, State, Verb

# -- QEMU run states ---------------------------------------------------------------------------


class Guest(enum.StrEnum):
    """What a QEMU run state means for ketch."""

    RUNNING = "running"  # the guest runs
    PAUSED = "paused"  # vCPUs stopped; QMP ``cont`` resumes them
    PAUSED_IO_ERROR = (
        "paused-io-error"  # paused by a failed write; ``cont`` resumes once there is room
    )
    HALTED = "halted"  # the guest cannot go on without a reset (``cont`` is refused)
    BUSY = "busy"  # QEMU saves, loads or migrates the VM state
    NEEDS_FORCE = "needs-force"  # no way back ketch knows of but ending QEMU


@dataclass(frozen=True)
class GuestRule:
    """What ketch shows and does for one :class:`Guest` class."""

    state: State  # the instance state shown (while no operation runs)
    code: InconsistencyCode | None  # the inconsistency reported with it
    resumes: bool  # ``start`` (and ``doctor --fix``) resume it with QMP ``cont``
    blocks: bool  # the guest cannot get ready by itself: a readiness wait stops at once
    what: str  # for the docs


GUEST: dict[Guest, GuestRule] = {
    Guest.RUNNING: GuestRule(
        State.RUNNING, None, False, False, "Running (Delayed Shutdown if one is scheduled)"
    ),
    Guest.PAUSED: GuestRule(
        State.UNKNOWN,
        InconsistencyCode.PAUSED,
        True,
        True,
        "`start` resumes the vCPUs (QMP `cont`); `stop --force` ends QEMU",
    ),
    Guest.PAUSED_IO_ERROR: GuestRule(
        State.UNKNOWN,
        InconsistencyCode.PAUSED_IO_ERROR,
        True,
        True,
        "once there is room, `start` resumes the guest (QMP `cont`) with nothing lost",
    ),
    Guest.HALTED: GuestRule(
        State.UNKNOWN,
        InconsistencyCode.GUEST_HALTED,
        False,
        True,
        "`stop --force` ends QEMU, then `start` boots afresh",
    ),
    Guest.BUSY: GuestRule(
        State.UNKNOWN,
        InconsistencyCode.UNEXPECTED_QMP_STATUS,
        False,
        False,
        "nothing started by ketch stays here; `stop --force` ends QEMU",
    ),
    Guest.NEEDS_FORCE: GuestRule(
        State.UNKNOWN,
        InconsistencyCode.UNEXPECTED_QMP_STATUS,
        False,
        True,
        "`stop --force` ends QEMU",
    ),
}

# Every QMP run state: what ketch makes of it, and what QEMU means by it (QMP reference).
RUN_STATES: dict[RunState, tuple[Guest, str]] = {
    RunState.RUNNING: (Guest.RUNNING, "guest is actively running"),
    RunState.DEBUG: (Guest.RUNNING, "QEMU is running on a debugger"),
    RunState.PAUSED: (Guest.PAUSED, "guest has been paused via the 'stop' command"),
    RunState.PRELAUNCH: (Guest.PAUSED, "QEMU was started with -S and guest has not started"),
    RunState.POSTMIGRATE: (Guest.PAUSED, "guest is paused following a successful 'migrate'"),
    RunState.WATCHDOG: (
        Guest.PAUSED,
        "the watchdog action is configured to pause and has been triggered",
    ),
    RunState.IO_ERROR: (
        Guest.PAUSED_IO_ERROR,
        "the last IOP has failed and the device is configured to pause on I/O errors",
    ),
    RunState.SHUTDOWN: (Guest.HALTED, "guest is shut down (and -no-shutdown is in use)"),
    RunState.INTERNAL_ERROR: (
        Guest.HALTED,
        "an internal error that prevents further guest execution has occurred",
    ),
    RunState.GUEST_PANICKED: (
        Guest.HALTED,
        "guest has been panicked as a result of guest OS panic",
    ),
    RunState.SAVE_VM: (Guest.BUSY, "guest is paused to save the VM state"),
    RunState.RESTORE_VM: (Guest.BUSY, "guest is paused to restore VM state"),
    RunState.FINISH_MIGRATE: (
        Guest.BUSY,
        "guest is paused to finish the migration process ('cont' is refused)",
    ),
    RunState.INMIGRATE: (Guest.BUSY, "guest is paused waiting for an incoming migration"),
    RunState.COLO: (Guest.BUSY, "guest is paused to save/restore VM state under colo checkpoint"),
    RunState.PRECONFIG: (Guest.BUSY, "QEMU is paused before board specific init (--preconfig)"),
    RunState.SUSPENDED: (
        Guest.NEEDS_FORCE,
        "guest is suspended (ACPI S3); 'cont' does not wake it",
    ),
}


def guest(status: str) -> Guest:
    """What a QMP ``query-status`` status means; a status ketch does not know needs force."""
    try:
        return RUN_STATES[RunState(status)][0]
    except ValueError:
        return Guest.NEEDS_FORCE


def meaning(status: str) -> str:
    """What QEMU means by a run state (the QMP reference's words)."""
    try:
        return RUN_STATES[RunState(status)][1]
    except ValueError:
        return "a status ketch does not know"


def run_rule(status: str | None) -> GuestRule | None:
    """The rule for a QMP status; None when QMP gave none."""
    return None if status is None else GUEST[guest(status)]


def resumable(status: str | None) -> bool:
    """QMP ``cont`` resumes a guest in this run state."""
    rule = run_rule(status)
    return rule is not None and rule.resumes


def blocks_readiness(status: str | None) -> bool:
    """A guest in this run state cannot get ready by itself."""
    rule = run_rule(status)
    return rule is not None and rule.blocks


# -- operations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One operation kind: is it journaled, what state does it show while it runs."""

    journaled: bool
    shows: State | None  # the transitional state ``list`` shows; None: what is there
    command: str  # the CLI command that runs it


OPERATIONS: dict[OperationKind, Operation] = {
    OperationKind.LAUNCH: Operation(True, State.STARTING, "launch"),
    OperationKind.START: Operation(True, State.STARTING, "start"),
    OperationKind.STOP: Operation(True, None, "stop"),
    OperationKind.FORCE_STOP: Operation(True, None, "stop --force"),
    OperationKind.SUSPEND: Operation(True, State.SUSPENDING, "suspend"),
    OperationKind.RESTART: Operation(
        False, State.RESTARTING, "restart (journals its stop and start)"
    ),
    OperationKind.DELETE: Operation(True, None, "delete"),
    OperationKind.RECOVER: Operation(True, None, "recover"),
    OperationKind.PURGE: Operation(True, None, "delete --purge, purge"),
    OperationKind.SNAPSHOT: Operation(True, None, "snapshot"),
    OperationKind.RESTORE: Operation(True, None, "restore"),
    OperationKind.DELETE_SNAPSHOT: Operation(True, None, "delete NAME.SNAPSHOT"),
    OperationKind.CLONE: Operation(True, None, "clone"),
    OperationKind.SET: Operation(True, None, "set local.NAME.cpus|memory|disk"),
    OperationKind.DOCTOR: Operation(False, None, "doctor (holds every instance's lock)"),
    OperationKind.BUILD: Operation(False, None, "image build (holds the image's lock)"),
    OperationKind.WARM: Operation(False, None, "image warm: a template made (holds its lock)"),
    OperationKind.MOUNT: Operation(True, None, "mount, launch --mount"),
    OperationKind.UMOUNT: Operation(True, None, "umount"),
}

# Live operation -> the transitional state it shows.
OP_STATES: dict[str, State] = {
    kind.value: op.shows for kind, op in OPERATIONS.items() if op.shows is not None
}

# -- verbs per state ---------------------------------------------------------------------------

# Accepted in every state (delete of a Deleted instance does nothing).
ALWAYS = frozenset({Verb.INFO, Verb.DOCTOR, Verb.FORCE_STOP, Verb.DELETE, Verb.PURGE})
_UP = frozenset(
    {
        Verb.START,
        Verb.STOP,
        Verb.DELAYED_STOP,
        Verb.SUSPEND,
        Verb.RESTART,
        Verb.DELETE_SNAPSHOT,
        Verb.CONNECT,
    }
)

ACCEPTS: dict[State, frozenset[Verb]] = {
    State.RUNNING: ALWAYS | _UP,
    State.DELAYED_SHUTDOWN: ALWAYS | _UP,
    State.STOPPED: ALWAYS
    | {
        Verb.START,
        Verb.STOP,
        Verb.RESTART,
        Verb.SNAPSHOT,
        Verb.RESTORE,
        Verb.DELETE_SNAPSHOT,
        Verb.CLONE,
        Verb.SET,
    },
    State.SUSPENDED: ALWAYS | {Verb.START, Verb.SUSPEND, Verb.DELETE_SNAPSHOT},
    State.UNKNOWN: ALWAYS | {Verb.START},
    State.DELETED: ALWAYS | {Verb.RECOVER},
    # Shown only while an operation runs; every verb waits for it (the instance's
    # lock) and is then checked against the state found.
    State.STARTING: ALWAYS,
    State.RESTARTING: ALWAYS,
    State.SUSPENDING: ALWAYS,
}

# What a verb does in a state it accepts, where that is not the obvious.
NOTES: dict[tuple[State, Verb], str] = {
    (State.RUNNING, Verb.START): "nothing to do",
    (State.STOPPED, Verb.STOP): "nothing to do",
    (State.SUSPENDED, Verb.SUSPEND): "nothing to do",
    (State.SUSPENDED, Verb.START): "resumes the saved state",
    (State.DELAYED_SHUTDOWN, Verb.START): "nothing to do",
    (State.UNKNOWN, Verb.START): "only when QEMU's vCPUs are paused: resumes them",
    (State.DELETED, Verb.DELETE): "nothing to do",
}

# A quarantined instance accepts these only, whatever its state (in this order in messages).
QUARANTINE_ALLOWS: tuple[Verb, ...] = (Verb.INFO, Verb.DOCTOR, Verb.FORCE_STOP, Verb.PURGE)

# How messages name a verb: 'cannot <phrase> "NAME": it is <State>'.
PHRASES: dict[Verb, str] = {
    Verb.INFO: "inspect",
    Verb.DOCTOR: "examine",
    Verb.START: "start",
    Verb.STOP: "stop",
    Verb.FORCE_STOP: "force-stop",
    Verb.DELAYED_STOP: "schedule a shutdown of",
    Verb.SUSPEND: "suspend",
    Verb.RESTART: "restart",
    Verb.DELETE: "delete",
    Verb.PURGE: "purge",
    Verb.RECOVER: "recover",
    Verb.SNAPSHOT: "snapshot",
    Verb.RESTORE: "restore",
    Verb.DELETE_SNAPSHOT: "delete a snapshot of",
    Verb.CLONE: "clone",
    Verb.SET: "change the settings of",
    Verb.CONNECT: "connect to",
}


def suspended_hint(name: str, *, managed_save: bool = False) -> str:
    """What to do with a suspended instance a verb needs stopped (one sentence, pure):
    its state is in its disk (the QEMU driver), or libvirt's managed save (a libvirt host)."""
    where = "by libvirt (a managed save)" if managed_save else "in its disk"
    return (
        f"its memory state is saved {where}: 'ketch start {name}' then "
        f"'ketch stop {name}', or 'ketch stop --force {name}' (discards the suspended state)"
    )


def quoted(verbs: tuple[Verb, ...]) -> str:
    """``'a', 'b' and 'c'``."""
    words = [f"'{v.value}'" for v in verbs]
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def accepted_states(verb: Verb) -> frozenset[State]:
    """The states in which ``verb`` is accepted."""
    return frozenset(s for s, verbs in ACCEPTS.items() if verb in verbs)


def require(
    name: str,
    state: State,
    verb: Verb,
    *,
    quarantine: str | None = None,
    deleted: bool = False,
    hint: str | None = None,
    phrase: str | None = None,
) -> None:
    """Raise unless an instance in ``state`` accepts ``verb``.

    A quarantined instance (not deleted) accepts only ``QUARANTINE_ALLOWS``
    (:class:`Quarantined`); a Deleted one refuses what Deleted does not accept
    (:class:`Deleted`, Multipass's wording); any other refusal is
    :class:`InvalidState` naming the accepted states.  ``phrase`` overrides how
    the message names the verb.
    """
    doing = phrase or PHRASES[verb]
    if quarantine and not deleted and verb not in QUARANTINE_ALLOWS:
        acting = [v for v in QUARANTINE_ALLOWS if v not in (Verb.INFO, Verb.DOCTOR)]
        raise Quarantined(
            name,
            "quarantined",
            ["not quarantined"],
            message=f'cannot {doing} "{name}": it is quarantined ({quarantine})',
            hint=f"see 'ketch doctor {name}'; "
            + " and ".join(f"'ketch {v.value}'" for v in acting)
            + " still work",
        )
    if verb in ACCEPTS[state]:
        return
    if state is State.DELETED:
        raise Deleted(name)
    raise InvalidState(
        name,
        state.value,
        sorted(s.value for s in accepted_states(verb)),
        message=f'cannot {doing} "{name}": it is {state.value}',
        hint=hint,
    )
