"""What ``ketch doctor`` does about each inconsistency: the table :data:`RULES`, one per code.

The words (what a code means, what ``--fix`` does) are in :mod:`ketch.codes`;
here is only the repair each code gets, and when a code is not a finding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ketch.layout import InstanceDir
from ketch.model import Inconsistency, Intent
from ketch.model import InconsistencyCode as IC
from ketch.service.context import Context
from ketch.service.doctor import repairs
from ketch.service.doctor.finding import Repair
from ketch.service.doctor.mounts import remount
from ketch.service.inspect import View

Fixer = Callable[[Context, View, Inconsistency], Repair]


def _always(v: View) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """Doctor's handling of one inconsistency code (its words are in ``ketch.codes``)."""

    fix: Fixer | None  # the repair ``--fix`` makes; None: reported, not repaired
    applies: Callable[[View], bool] = _always  # False: not a finding (said elsewhere)


def _idir(ctx: Context, v: View) -> InstanceDir:
    return ctx.root.instance(v.name)


def _not_quarantined(v: View) -> bool:
    return not v.record.quarantine


def _remove_pid(ctx: Context, v: View, _: Inconsistency) -> Repair:
    return repairs.remove(_idir(ctx, v).pidfile, _idir(ctx, v).qmp_socket)


def _record_stopped(ctx: Context, v: View, _: Inconsistency) -> Repair:
    return repairs.record_intent(ctx, v.name, Intent.STOP)


def _drop_stale_tag(ctx: Context, v: View, _: Inconsistency) -> Repair:
    return repairs.drop_tag(ctx, v.record.spec, _idir(ctx, v))


def _end_qemu(ctx: Context, v: View, _: Inconsistency) -> Repair:
    return repairs.kill(ctx, v.record.spec, _idir(ctx, v))


def _quarantine_for(ctx: Context, v: View, inc: Inconsistency) -> Repair:
    return repairs.quarantine(ctx, v.name, inc.message)


RULES: dict[IC, Rule] = {
    IC.QUARANTINED: Rule(None, applies=lambda v: False),  # quarantine-cleared in examine
    IC.STALE_PID_FILE: Rule(_remove_pid),
    IC.FOREIGN_PID: Rule(_remove_pid),
    IC.PID_FILE_MISMATCH: Rule(
        lambda ctx, v, _: repairs.write_pid(_idir(ctx, v), v.obs.pid or 0),
        applies=lambda v: v.obs.pid is not None,
    ),
    IC.DISK_ONLY_SUSPEND_TAG: Rule(_drop_stale_tag),
    IC.STRAY_SUSPEND_TAG: Rule(_drop_stale_tag),
    IC.INTERRUPTED_OPERATION: Rule(lambda ctx, v, _: repairs.recover(ctx, v.name, reporter=None)),
    IC.MISSING_DISK: Rule(_quarantine_for, applies=_not_quarantined),
    IC.UNREADABLE_TAGS: Rule(_quarantine_for, applies=_not_quarantined),
    IC.DELETED_BUT_RUNNING: Rule(_end_qemu),
    IC.GUEST_HALTED: Rule(_end_qemu),
    IC.QMP_UNRESPONSIVE: Rule(
        lambda ctx, v, _: repairs.poweroff(ctx, v.record.spec, _idir(ctx, v))
    ),
    IC.PAUSED: Rule(lambda ctx, v, _: repairs.cont(ctx, v.record.spec, _idir(ctx, v))),
    IC.PAUSED_IO_ERROR: Rule(
        lambda ctx, v, _: repairs.cont_if_space(ctx, v.record.spec, _idir(ctx, v))
    ),
    IC.UNEXPECTED_QMP_STATUS: Rule(None),
    IC.MISSING_SUSPEND_TAG: Rule(_record_stopped),
    IC.EXITED_UNEXPECTEDLY: Rule(_record_stopped),
    IC.MOUNT_DEAD: Rule(lambda ctx, v, inc: remount(ctx, v, inc.mount)),
    IC.MOUNT_SOURCE_MISSING: Rule(None),
    IC.HOST_UNREACHABLE: Rule(None),
    IC.NETWORK_TAP_MISSING: Rule(lambda ctx, v, _: repairs.suspend_resume(ctx, v.name)),
}
