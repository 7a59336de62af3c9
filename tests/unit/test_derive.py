"""The state-derivation truth table: intent + observation -> state + inconsistencies.

``TABLE`` below is the truth table of :func:`ketch.runtime.derive.derive`, one
row per branch of the module, written so that it reads like the table in the
documentation: what was recorded (intent, deleted, live or interrupted
operation, delayed shutdown), what was observed (pid file, QMP status, suspend
tag, disk), and what ketch derives (state and inconsistency codes, in order).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.model import Derived, Intent, Observation, PidStatus, State
from ketch.runtime.derive import OP_STATES, derive

RUN, STOP, SUSPEND = Intent.RUN, Intent.STOP, Intent.SUSPEND

# -- observations -----------------------------------------------------------------

NOTHING = Observation(
    pid=None,
    pid_status=PidStatus.NONE,
    qmp_status=None,
    qmp_error=None,
    suspend_tag=False,
    tag_error=None,
    disk_exists=True,
)


def ours(qmp: str | None = "running", *, err: str | None = None, **kw: Any) -> Observation:
    """Our QEMU runs; QMP answered ``qmp`` (None: no answer, ``err`` says why)."""
    return replace(
        NOTHING, pid=4242, pid_status=PidStatus.OURS, qmp_status=qmp, qmp_error=err, **kw
    )


def down(**kw: Any) -> Observation:
    """No QEMU of ours runs."""
    return replace(NOTHING, **kw)


STALE: dict[str, Any] = {"pid": 777, "pid_status": PidStatus.STALE}
FOREIGN: dict[str, Any] = {
    "pid": 1,
    "pid_status": PidStatus.FOREIGN,
    "pid_cmdline": "/sbin/init splash",
}
TAG: dict[str, Any] = {"suspend_tag": True}
NO_TAGS: dict[str, Any] = {"suspend_tag": None, "tag_error": "qemu-img exited 1: Could not open"}
NO_DISK: dict[str, Any] = {"disk_exists": False}
UNREACHABLE: dict[str, Any] = {
    "suspend_tag": None,
    "host_error": 'host "lv" could not be asked: did not answer within 5 s',
}


@dataclass(frozen=True)
class Row:
    """One row: recorded + observed -> derived."""

    intent: Intent
    obs: Observation
    state: State
    codes: tuple[str, ...] = ()
    deleted: bool = False
    active_op: str | None = None
    interrupted_op: str | None = None
    delayed: bool = False


def row(id_: str, *args: Any, **kw: Any) -> Any:
    return pytest.param(Row(*args, **kw), id=id_)


# fmt: off
TABLE = [
    # -- deleted: always Deleted; a live QEMU is flagged ----------------------------------
    row("deleted/no-process", STOP, down(), State.DELETED, deleted=True),
    row("deleted/intent-run-no-process", RUN, down(), State.DELETED, deleted=True),
    row("deleted/live-process", RUN, ours(), State.DELETED, ("deleted-but-running",), deleted=True),
    row("deleted/beats-active-op", RUN, ours(), State.DELETED, ("deleted-but-running",),
        deleted=True, active_op="launch"),
    row("deleted/stale-pid", STOP, down(**STALE), State.DELETED, ("stale-pid-file",),
        deleted=True),
    row("deleted/missing-disk", STOP, down(**NO_DISK), State.DELETED, ("missing-disk",),
        deleted=True),
    # -- a live operation shows its transitional state -------------------------------------
    row("active/launch", RUN, down(), State.STARTING, active_op="launch"),
    row("active/start", STOP, down(), State.STARTING, active_op="start"),
    row("active/start-process-up", RUN, ours("prelaunch"), State.STARTING, active_op="start"),
    row("active/restart", RUN, ours(), State.RESTARTING, active_op="restart"),
    row("active/suspend", RUN, ours("paused"), State.SUSPENDING, active_op="suspend"),
    row("active/suspend-no-qmp-answer", RUN, ours(None), State.SUSPENDING, active_op="suspend"),
    row("active/launch-stale-pid", RUN, down(**STALE), State.STARTING, ("stale-pid-file",),
        active_op="launch"),
    row("active/other-op-falls-through", STOP, down(), State.STOPPED, active_op="purge"),
    row("active/stop-op-falls-through", RUN, ours(), State.RUNNING, active_op="stop"),
    # -- running: QMP decides -----------------------------------------------------------
    row("running/qmp-running", RUN, ours("running"), State.RUNNING),
    row("running/qmp-debug", RUN, ours("debug"), State.RUNNING),
    row("running/intent-stop-still-running", STOP, ours("running"), State.RUNNING),
    row("running/qmp-paused", RUN, ours("paused"), State.UNKNOWN, ("paused",)),
    # ACPI S3: QMP cont does not wake it (a no-op), so start does not claim to resume it
    row("running/qmp-suspended", RUN, ours("suspended"), State.UNKNOWN,
        ("unexpected-qmp-status",)),
    row("running/qmp-prelaunch", RUN, ours("prelaunch"), State.UNKNOWN, ("paused",)),
    # QMP refuses cont while a migration finishes ("Migration is not finalized yet")
    row("running/qmp-finish-migrate", RUN, ours("finish-migrate"), State.UNKNOWN,
        ("unexpected-qmp-status",)),
    row("running/qmp-postmigrate", RUN, ours("postmigrate"), State.UNKNOWN, ("paused",)),
    row("running/qmp-watchdog", RUN, ours("watchdog"), State.UNKNOWN, ("paused",)),
    row("running/qmp-save-vm", RUN, ours("save-vm"), State.UNKNOWN, ("unexpected-qmp-status",)),
    row("running/qmp-not-a-run-state", RUN, ours("frobnicated"), State.UNKNOWN,
        ("unexpected-qmp-status",)),
    row("running/qmp-shutdown", RUN, ours("shutdown"), State.UNKNOWN, ("guest-halted",)),
    row("running/qmp-guest-panicked", RUN, ours("guest-panicked"), State.UNKNOWN,
        ("guest-halted",)),
    row("running/qmp-internal-error", RUN, ours("internal-error"), State.UNKNOWN,
        ("guest-halted",)),
    row("running/qmp-io-error", RUN, ours("io-error"), State.UNKNOWN, ("paused-io-error",)),
    # -- the pid file named another process, but /proc found our QEMU -----------------------
    row("running/pid-file-clobbered", RUN, ours("running", pid_file=1), State.RUNNING,
        ("pid-file-mismatch",)),
    # -- a "suspend" tag without VM state (disk-only, e.g. qemu-img snapshot -c) ------------
    row("stopped/suspend-disk-only-tag", SUSPEND, down(suspend_tag_disk_only=True),
        State.STOPPED, ("disk-only-suspend-tag", "missing-suspend-tag")),
    row("stopped/stop-disk-only-tag", STOP, down(suspend_tag_disk_only=True), State.STOPPED,
        ("disk-only-suspend-tag",)),
    row("running/qmp-unknown-status", RUN, ours("inmigrate"), State.UNKNOWN,
        ("unexpected-qmp-status",)),
    row("running/qmp-no-answer", RUN, ours(None, err="timed out"), State.UNKNOWN,
        ("qmp-unresponsive",)),
    # no status and no error: the monitor was not asked (an operation owns it)
    row("running/qmp-not-asked", RUN, ours(None), State.RUNNING),
    # -- delayed shutdown ---------------------------------------------------------------
    row("delayed/running", RUN, ours("running"), State.DELAYED_SHUTDOWN, delayed=True),
    row("delayed/paused-is-unknown", RUN, ours("paused"), State.UNKNOWN, ("paused",),
        delayed=True),
    row("delayed/stopped-ignores-schedule", STOP, down(), State.STOPPED, delayed=True),
    # -- stray suspend tag while running -------------------------------------------------
    row("running/stray-tag", RUN, ours("running", **TAG), State.RUNNING, ("stray-suspend-tag",)),
    row("running/stray-tag-qmp-not-asked", RUN, ours(None, **TAG), State.RUNNING,
        ("stray-suspend-tag",)),
    row("running/stray-tag-no-qmp-answer", RUN, ours(None, err="refused", **TAG), State.UNKNOWN,
        ("stray-suspend-tag", "qmp-unresponsive")),
    row("running/unreadable-tags-not-flagged", RUN, ours("running", **NO_TAGS), State.RUNNING),
    # -- stopped, intent suspend: the tag decides ---------------------------------------------
    row("stopped/suspend-tag-present", SUSPEND, down(**TAG), State.SUSPENDED),
    row("stopped/suspend-tag-missing", SUSPEND, down(), State.STOPPED, ("missing-suspend-tag",)),
    row("stopped/suspend-tags-unreadable", SUSPEND, down(**NO_TAGS), State.UNKNOWN,
        ("unreadable-tags",)),
    # -- stopped, intent stop / run ---------------------------------------------------------
    row("stopped/intent-stop", STOP, down(), State.STOPPED),
    row("stopped/intent-stop-stray-tag", STOP, down(**TAG), State.STOPPED, ("stray-suspend-tag",)),
    row("stopped/intent-stop-tags-unreadable", STOP, down(**NO_TAGS), State.STOPPED,
        ("unreadable-tags",)),
    row("stopped/exited-unexpectedly", RUN, down(), State.STOPPED, ("exited-unexpectedly",)),
    row("stopped/intent-run-stray-tag", RUN, down(**TAG), State.STOPPED,
        ("stray-suspend-tag", "exited-unexpectedly")),
    row("stopped/intent-run-tags-unreadable", RUN, down(**NO_TAGS), State.STOPPED,
        ("unreadable-tags",)),
    # -- pid file trouble --------------------------------------------------------------------
    row("pid/stale-intent-stop", STOP, down(**STALE), State.STOPPED, ("stale-pid-file",)),
    row("pid/stale-intent-run", RUN, down(**STALE), State.STOPPED,
        ("stale-pid-file", "exited-unexpectedly")),
    row("pid/stale-intent-suspend-tag", SUSPEND, down(**STALE, **TAG), State.SUSPENDED,
        ("stale-pid-file",)),
    row("pid/foreign-intent-stop", STOP, down(**FOREIGN), State.STOPPED, ("foreign-pid",)),
    row("pid/foreign-intent-run", RUN, down(**FOREIGN), State.STOPPED,
        ("foreign-pid", "exited-unexpectedly")),
    row("pid/foreign-intent-suspend-tag", SUSPEND, down(**FOREIGN, **TAG), State.SUSPENDED,
        ("foreign-pid",)),
    # -- missing disk -------------------------------------------------------------------------
    row("disk/missing-intent-stop", STOP, down(**NO_DISK), State.STOPPED, ("missing-disk",)),
    row("disk/missing-intent-suspend", SUSPEND, down(**NO_DISK), State.STOPPED,
        ("missing-disk", "missing-suspend-tag")),
    row("disk/missing-while-running", RUN, ours("running", **NO_DISK), State.RUNNING,
        ("missing-disk",)),
    # -- interrupted operation --------------------------------------------------------------
    row("interrupted/start-nothing-runs", RUN, down(), State.STOPPED,
        ("interrupted-operation", "exited-unexpectedly"), interrupted_op="start"),
    row("interrupted/launch-it-runs", RUN, ours("running"), State.RUNNING,
        ("interrupted-operation",), interrupted_op="launch"),
    row("interrupted/suspend-tag-saved", SUSPEND, down(**TAG), State.SUSPENDED,
        ("interrupted-operation",), interrupted_op="suspend"),
    row("interrupted/stop-intent-stop", STOP, down(), State.STOPPED, ("interrupted-operation",),
        interrupted_op="stop"),
    # -- the instance's libvirt host could not be asked: nothing else is known ---------------
    row("host/unreachable-intent-run", RUN, down(**UNREACHABLE), State.UNKNOWN,
        ("host-unreachable",)),
    row("host/unreachable-intent-suspend", SUSPEND, down(**UNREACHABLE), State.UNKNOWN,
        ("host-unreachable",)),
    row("host/unreachable-deleted", STOP, down(**UNREACHABLE), State.DELETED,
        ("host-unreachable",), deleted=True),
    row("host/unreachable-during-an-op", RUN, down(**UNREACHABLE), State.STARTING,
        ("host-unreachable",), active_op="start"),
    row("host/unreachable-interrupted", RUN, down(**UNREACHABLE), State.UNKNOWN,
        ("interrupted-operation", "host-unreachable"), interrupted_op="stop"),
    # -- several at once: pid, interrupted, disk come first, in that order ---------------
    row("combined/stale-interrupted-no-disk", RUN, down(**STALE, **NO_DISK), State.STOPPED,
        ("stale-pid-file", "interrupted-operation", "missing-disk", "exited-unexpectedly"),
        interrupted_op="start"),
]
# fmt: on


@pytest.mark.parametrize("r", TABLE)
def test_truth_table(r: Row) -> None:
    got = derive(
        intent=r.intent,
        deleted=r.deleted,
        obs=r.obs,
        active_op=r.active_op,
        interrupted_op=r.interrupted_op,
        delayed_shutdown=r.delayed,
    )
    assert got.state is r.state
    assert tuple(i.code for i in got.inconsistencies) == r.codes
    assert got.running is (r.obs.pid_status is PidStatus.OURS)


def test_every_transitional_op_is_in_the_table() -> None:
    """A new entry in OP_STATES needs a row above."""
    covered = {p.values[0].active_op for p in TABLE if p.values[0].active_op}
    assert set(OP_STATES) <= covered


# -- what the inconsistencies say --------------------------------------------------------


def _one(**kw: Any) -> Derived:
    kw.setdefault("intent", RUN)
    kw.setdefault("deleted", False)
    return derive(**kw)


def test_stale_pid_message_names_the_pid() -> None:
    (inc, _) = _one(obs=down(**STALE)).inconsistencies
    assert "777" in inc.message


def test_foreign_pid_message_names_the_process_and_promises_no_signal() -> None:
    inc = _one(intent=STOP, obs=down(**FOREIGN)).inconsistencies[0]
    assert "process 1 (/sbin/init splash)" in inc.message
    assert "never signalled" in inc.action


def test_foreign_pid_without_cmdline_is_shown_as_question_mark() -> None:
    obs = down(pid=1, pid_status=PidStatus.FOREIGN)
    inc = _one(intent=STOP, obs=obs).inconsistencies[0]
    assert "(?)" in inc.message


def test_qmp_unresponsive_message_carries_the_reason() -> None:
    inc = _one(obs=ours(None, err="connection refused")).inconsistencies[0]
    assert "connection refused" in inc.message
    assert "stop --force" in inc.action


def test_qmp_status_is_quoted_in_paused_and_halted() -> None:
    assert "'prelaunch'" in _one(obs=ours("prelaunch")).inconsistencies[0].message
    assert "'guest-panicked'" in _one(obs=ours("guest-panicked")).inconsistencies[0].message
    assert "'inmigrate'" in _one(obs=ours("inmigrate")).inconsistencies[0].message


def test_host_unreachable_message_is_the_reason_and_the_queue_is_said() -> None:
    got = derive(intent=RUN, deleted=False, obs=down(**UNREACHABLE))
    (inc,) = got.inconsistencies
    assert inc.message == UNREACHABLE["host_error"]
    assert "queued" in inc.action and not got.running


def test_unreadable_tags_carries_the_error() -> None:
    inc = _one(intent=SUSPEND, obs=down(**NO_TAGS)).inconsistencies[0]
    assert "Could not open" in inc.message


def test_unreadable_tags_without_error_text() -> None:
    inc = _one(intent=STOP, obs=down(suspend_tag=None)).inconsistencies[0]
    assert "unknown error" in inc.message


def test_interrupted_message_names_the_operation() -> None:
    inc = _one(intent=STOP, obs=down(), interrupted_op="restart").inconsistencies[0]
    assert "'restart'" in inc.message


# -- properties over every observation --------------------------------------------------

_OBS = st.builds(
    Observation,
    pid=st.one_of(st.none(), st.integers(1, 1 << 22)),
    pid_status=st.sampled_from(PidStatus),
    qmp_status=st.one_of(
        st.none(),
        st.sampled_from(["running", "paused", "shutdown", "debug", "inmigrate", "io-error"]),
        st.text(max_size=8),
    ),
    qmp_error=st.one_of(st.none(), st.text(max_size=10)),
    suspend_tag=st.one_of(st.none(), st.booleans()),
    tag_error=st.one_of(st.none(), st.text(max_size=10)),
    disk_exists=st.booleans(),
    pid_cmdline=st.one_of(st.none(), st.text(max_size=10)),
)


@settings(max_examples=200, deadline=None)
@given(
    intent=st.sampled_from(Intent),
    deleted=st.booleans(),
    obs=_OBS,
    active_op=st.one_of(st.none(), st.sampled_from([*OP_STATES, "stop", "delete"])),
    interrupted_op=st.one_of(st.none(), st.sampled_from(["start", "stop", "suspend"])),
    delayed=st.booleans(),
)
def test_property_never_raises_and_is_coherent(
    intent: Intent,
    deleted: bool,
    obs: Observation,
    active_op: str | None,
    interrupted_op: str | None,
    delayed: bool,
) -> None:
    got = derive(
        intent=intent,
        deleted=deleted,
        obs=obs,
        active_op=active_op,
        interrupted_op=interrupted_op,
        delayed_shutdown=delayed,
    )
    codes = [i.code for i in got.inconsistencies]
    assert len(codes) == len(set(codes))
    assert all(i.message and i.action for i in got.inconsistencies)
    assert got.running is (obs.pid_status is PidStatus.OURS)
    assert (got.state is State.DELETED) is deleted
    if not deleted and active_op in OP_STATES:
        assert got.state is OP_STATES[active_op]
    if got.state in (State.RUNNING, State.DELAYED_SHUTDOWN):
        assert got.running
    if got.state is State.SUSPENDED:
        assert obs.suspend_tag is True and intent is Intent.SUSPEND
    if got.state is State.DELAYED_SHUTDOWN:
        assert delayed
    assert ("interrupted-operation" in codes) is bool(interrupted_op)
    assert ("missing-disk" in codes) is (not obs.disk_exists)


def test_derive_is_pure() -> None:
    obs = ours("paused", **TAG)
    first = derive(intent=RUN, deleted=False, obs=obs)
    assert derive(intent=RUN, deleted=False, obs=obs) == first
    assert obs == ours("paused", **TAG)
