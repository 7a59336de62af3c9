"""The vocabulary tables: every word classified once, and everyone using the same table.

``LEGACY`` below is what each service accepted before the verbs became one
table (``ketch.vocabulary.ACCEPTS``), written out as the services wrote it;
:func:`ketch.vocabulary.require` must refuse exactly what they refused, with
the same errors and messages.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from ketch import vocabulary
from ketch.errors import Deleted, InvalidState, KetchError, Quarantined
from ketch.model import (
    InconsistencyCode,
    Intent,
    Observation,
    OperationKind,
    PidStatus,
    RunState,
    State,
    Verb,
)
from ketch.runtime.derive import derive
from ketch.vocabulary import (
    ACCEPTS,
    GUEST,
    OPERATIONS,
    QUARANTINE_ALLOWS,
    RUN_STATES,
    Guest,
    accepted_states,
    blocks_readiness,
    guest,
    require,
    resumable,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "ketch"

# -- QEMU run states ------------------------------------------------------------------------


def test_every_qmp_run_state_is_classified_once() -> None:
    assert set(RUN_STATES) == set(RunState)
    assert len(RunState) == 17  # QMP's RunState enum (qapi/run-state.json), preconfig included
    assert all(meaning for _, meaning in RUN_STATES.values())


def test_every_class_has_a_rule_and_is_used() -> None:
    assert set(GUEST) == set(Guest)
    assert {g for g, _ in RUN_STATES.values()} == set(Guest)


def test_a_status_ketch_does_not_know_needs_force() -> None:
    assert guest("frobnicated") is Guest.NEEDS_FORCE
    assert not resumable("frobnicated") and blocks_readiness("frobnicated")
    assert not resumable(None) and not blocks_readiness(None)


def test_what_start_resumes() -> None:
    """QMP ``cont`` resumes these; it is refused in finish-migrate and a no-op in ACPI S3."""
    resumed = {s for s in RunState if resumable(s)}
    assert resumed == {
        RunState.PAUSED,
        RunState.PRELAUNCH,
        RunState.POSTMIGRATE,
        RunState.WATCHDOG,
        RunState.IO_ERROR,
    }


def test_what_stops_a_readiness_wait() -> None:
    """A guest that cannot get ready by itself; running and busy states are waited for."""
    blocked = {s for s in RunState if blocks_readiness(s)}
    waited = {s for s in RunState if guest(s) in (Guest.RUNNING, Guest.BUSY)}
    assert blocked == set(RunState) - waited
    assert {RunState.SHUTDOWN, RunState.IO_ERROR, RunState.SUSPENDED} <= blocked


OURS = Observation(
    pid=4242,
    pid_status=PidStatus.OURS,
    qmp_status="running",
    qmp_error=None,
    suspend_tag=False,
    tag_error=None,
    disk_exists=True,
)


@pytest.mark.parametrize("status", list(RunState))
def test_derive_follows_the_run_state_table(status: RunState) -> None:
    rule = GUEST[RUN_STATES[status][0]]
    got = derive(intent=Intent.RUN, deleted=False, obs=replace(OURS, qmp_status=status.value))
    assert got.state is rule.state
    assert [i.code for i in got.inconsistencies] == ([rule.code] if rule.code else [])


# -- operation kinds --------------------------------------------------------------------------


def test_every_operation_kind_has_a_row() -> None:
    assert set(OPERATIONS) == set(OperationKind)
    assert vocabulary.OP_STATES == {
        "launch": State.STARTING,
        "start": State.STARTING,
        "restart": State.RESTARTING,
        "suspend": State.SUSPENDING,
    }


# The journal guard takes an OperationKind (mypy holds every caller to the enum); the
# table's ``journaled`` column must name exactly the kinds the services journal.
_JOURNALED = re.compile(r"journal\(\s*ctx,\s*name,\s*OperationKind\.([A-Z_]+)")


def test_the_journaled_kinds_are_the_ones_the_services_journal() -> None:
    begun = {
        OperationKind[m.group(1)]
        for p in (SRC / "service").rglob("*.py")
        for m in _JOURNALED.finditer(p.read_text())
    }
    assert {OperationKind.LAUNCH, OperationKind.FORCE_STOP, OperationKind.CLONE} <= begun
    assert begun == {k for k, op in OPERATIONS.items() if op.journaled}


# -- verbs per state --------------------------------------------------------------------------

RUNNING = {State.RUNNING, State.DELAYED_SHUTDOWN}
# verb -> (the states its service accepted, the phrase its message used)
LEGACY: dict[Verb, tuple[set[State], str]] = {
    Verb.START: (RUNNING | {State.STOPPED, State.SUSPENDED, State.UNKNOWN}, "start"),
    Verb.STOP: (RUNNING | {State.STOPPED}, "stop"),
    Verb.DELAYED_STOP: (RUNNING, "schedule a shutdown of"),
    Verb.SUSPEND: (RUNNING | {State.SUSPENDED}, "suspend"),
    Verb.RESTART: (RUNNING | {State.STOPPED}, "restart"),
    Verb.SNAPSHOT: ({State.STOPPED}, "snapshot"),
    Verb.RESTORE: ({State.STOPPED}, "restore"),
    Verb.DELETE_SNAPSHOT: (RUNNING | {State.STOPPED, State.SUSPENDED}, "delete a snapshot of"),
    Verb.CLONE: ({State.STOPPED}, "clone"),
    Verb.CONNECT: (RUNNING, "connect to"),
    Verb.DELETE: (set(State), "delete"),
}


def legacy_require(
    name: str, state: State, op: str, accepted: set[State], quarantine: str | None, deleted: bool
) -> None:
    """``service/inspect.require`` as it was, verbatim but for the View."""
    if quarantine and not deleted:
        raise Quarantined(
            name,
            "quarantined",
            ["not quarantined"],
            message=f'cannot {op} "{name}": it is quarantined ({quarantine})',
            hint=f"see 'ketch doctor {name}'; 'ketch stop --force' and "
            "'ketch delete --purge' still work",
        )
    if state is State.DELETED and State.DELETED not in accepted:
        raise Deleted(name)
    if state not in accepted:
        raise InvalidState(
            name,
            state.value,
            sorted(s.value for s in accepted),
            message=f'cannot {op} "{name}": it is {state.value}',
            hint="the hint",
        )


def _outcome(call: object) -> tuple[type, str, str | None, tuple[str, ...]] | None:
    assert callable(call)
    try:
        call()
    except InvalidState as exc:
        return type(exc), exc.message, exc.hint, exc.accepted
    return None


@pytest.mark.parametrize("verb", list(LEGACY))
@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("quarantine", [None, "disk corrupted"])
def test_require_refuses_what_the_services_refused(
    verb: Verb, state: State, quarantine: str | None
) -> None:
    accepted, phrase = LEGACY[verb]
    deleted = state is State.DELETED
    before = _outcome(lambda: legacy_require("vm", state, phrase, accepted, quarantine, deleted))
    now = _outcome(
        lambda: require("vm", state, verb, quarantine=quarantine, deleted=deleted, hint="the hint")
    )
    assert now == before


def test_every_state_has_a_row_and_every_verb_a_state() -> None:
    assert set(ACCEPTS) == set(State)
    for verb in Verb:
        assert accepted_states(verb), verb
    assert set(QUARANTINE_ALLOWS) <= vocabulary.ALWAYS
    assert set(vocabulary.PHRASES) == set(Verb)


def test_require_messages() -> None:
    with pytest.raises(InvalidState) as err:
        require("vm", State.RUNNING, Verb.SNAPSHOT)
    assert err.value.message == 'cannot snapshot "vm": it is Running'
    assert err.value.accepted == ("Stopped",)
    with pytest.raises(InvalidState) as err:
        require("vm", State.SUSPENDED, Verb.SET, phrase="change the memory of")
    assert err.value.message == 'cannot change the memory of "vm": it is Suspended'
    with pytest.raises(Deleted):
        require("vm", State.DELETED, Verb.START, deleted=True)
    require("vm", State.DELETED, Verb.RECOVER, deleted=True)


@pytest.mark.parametrize("verb", list(Verb))
def test_quarantine_allows_only_info_doctor_force_stop_and_purge(verb: Verb) -> None:
    def call() -> None:
        require("vm", State.UNKNOWN, verb, quarantine="why")

    if verb in QUARANTINE_ALLOWS:
        call()
    else:
        with pytest.raises(KetchError) as err:
            call()
        assert isinstance(err.value, Quarantined) and "quarantined (why)" in err.value.message


def test_the_quarantine_inconsistency_names_what_is_allowed() -> None:
    got = derive(intent=Intent.STOP, deleted=False, obs=replace(OURS), quarantine="why")
    (inc,) = [i for i in got.inconsistencies if i.code is InconsistencyCode.QUARANTINED]
    assert inc.action.startswith(
        "only 'info', 'doctor', 'stop --force' and 'delete --purge' are allowed; "
    )


def test_a_suspended_instances_hint_says_where_its_state_is() -> None:
    from ketch.vocabulary import suspended_hint

    here = suspended_hint("vm1")
    assert "saved in its disk" in here and "'ketch stop --force vm1'" in here
    assert "discards the suspended state" in here
    there = suspended_hint("vm1", managed_save=True)
    assert "saved by libvirt (a managed save)" in there and "'ketch start vm1'" in there
