"""``ketch doctor``: find, explain and (with ``--fix``) repair inconsistent state.

Without ``fix`` nothing is changed.  What cannot be repaired safely is
quarantined: the instance is kept, shown as Unknown with the reason, and
accepts only ``info``, ``doctor``, ``stop --force`` and ``delete --purge``.
ketch never deletes an instance, its disk or its record because something
looked wrong.

This module holds :func:`run` (examine, then repair); the rest of the package:

- :mod:`.finding`: a :class:`Finding` and the :data:`Repair` it carries;
- :mod:`.rules`: :data:`RULES`, what doctor does about each inconsistency code;
- :mod:`.instance`: :func:`examine`, one instance's findings and costlier checks;
- :mod:`.root`: :func:`examine_root`, the storage root (stray directories,
  adoption, orphan QEMUs);
- :mod:`.network`: :func:`examine_network`, the managed network;
- :mod:`.repairs`: the repairs ``--fix`` makes.
"""

from __future__ import annotations

from ketch.api.models import DoctorResult
from ketch.errors import KetchError
from ketch.progress import Reporter
from ketch.service.context import Context
from ketch.service.doctor.finding import Finding, Repair
from ketch.service.doctor.instance import examine
from ketch.service.doctor.network import examine_network
from ketch.service.doctor.repairs import MIN_FREE, POWEROFF_TIMEOUT
from ketch.service.doctor.root import examine_root, orphan_qemus
from ketch.service.doctor.rules import RULES, Fixer, Rule
from ketch.service.inspect import view

__all__ = [
    "MIN_FREE",
    "POWEROFF_TIMEOUT",
    "RULES",
    "Finding",
    "Fixer",
    "Repair",
    "Rule",
    "examine",
    "examine_root",
    "orphan_qemus",
    "run",
]


async def run(ctx: Context, wanted: list[str], *, fix: bool, reporter: Reporter) -> DoctorResult:
    """Examine the named instances (all, and the storage root, when none is named)."""
    records = [ctx.store.get(n) for n in wanted] if wanted else ctx.store.all()
    findings: list[Finding] = []
    for record in records:
        v = await view(ctx, record, inside_op=True)
        findings += await examine(ctx, v)
    if not wanted:
        findings += examine_root(ctx)
        findings += await examine_network(ctx)
    if fix:
        for f in findings:
            if f.repair is None:
                f.fixed, f.outcome = False, "not repaired automatically: " + f.fix
                continue
            try:
                f.outcome = await f.repair()
                f.fixed = True
                reporter.step(f"{f.instance or 'storage'}: {f.outcome}")
            except KetchError as exc:
                f.fixed, f.outcome = False, exc.message
                reporter.warn(
                    f"{f.instance or 'storage'}: could not repair {f.code}: {exc.message}"
                )
    return DoctorResult(findings=[f.to_reply() for f in findings], fixed=fix)
