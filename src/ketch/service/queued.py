"""``stop --force`` and ``delete --purge`` of an instance whose host does not answer: queued.

Both verbs work from any state, but an instance on a libvirt host that cannot be asked
(its observation has ``host_error``: ``host-unreachable``) can be neither ended nor
removed from there now.  So the verb is not done but queued, in the store (the ``queued``
table, :mod:`ketch.store.queued`, so a ketchd started again still has it), and said so
(:class:`~ketch.errors.Queued`, exit 2); ketchd retries every :data:`QUEUE_PERIOD`
seconds (``daemon/main.py``): each queued instance is observed (bounded, all at once)
and those whose host answers again get their operation run, as if asked then, under
the instance's lock.  A force-stop that has run, or the instance purged, takes the row
away; so does a ``start`` asked after a force-stop was queued (it is not wanted now).
While it waits, ``info`` says what is queued in the inconsistency's action.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ketch.errors import NotFound, Queued
from ketch.model import Derived, InconsistencyCode, OperationKind
from ketch.progress import Reporter
from ketch.service.context import Context
from ketch.store.queued import QUEUEABLE, QueuedOp

__all__ = ["QUEUE_PERIOD", "QueuedOp", "annotate", "done", "due", "hold", "superseded"]

if TYPE_CHECKING:
    from ketch.service.inspect import View

QUEUE_PERIOD = 5.0  # seconds between ketchd's looks at the queued instances' hosts

VERBS = {OperationKind.FORCE_STOP: "stop --force", OperationKind.PURGE: "delete --purge"}


def hold(ctx: Context, v: View, kind: OperationKind) -> None:
    """Queue ``kind`` and raise :class:`~ketch.errors.Queued` when the host did not answer."""
    if v.obs.host_error is None:
        return
    name, host = v.name, v.record.spec.host
    q = ctx.store.queue_op(name, kind, ctx.clock.time())
    already = " already" if q.op is not kind else ""
    raise Queued(
        f"host {host} is unreachable: {VERBS[q.op]} of {name} is{already} queued; "
        "it runs when the host answers",
        hint=f"'ketch host list' says why {host} does not answer; 'ketch info {name}' shows "
        "what is queued",
    )


def done(ctx: Context, name: str, kind: OperationKind) -> None:
    """``kind`` has run on ``name``: a queued operation it covers goes (a purge stays queued
    after a force-stop)."""
    q = ctx.store.queued_op(name)
    if q is not None and QUEUEABLE.index(q.op) <= QUEUEABLE.index(kind):
        ctx.store.unqueue(name)


def superseded(ctx: Context, name: str, reporter: Reporter) -> None:
    """``start`` was asked of ``name``: a force-stop queued before it is dropped, and said
    (a queued purge stays: it outranks everything)."""
    q = ctx.store.queued_op(name)
    if q is not None and q.op is OperationKind.FORCE_STOP:
        ctx.store.unqueue(name)
        reporter.warn("the stop --force queued while its host did not answer is dropped")


def annotate(ctx: Context, name: str, derived: Derived) -> Derived:
    """``host-unreachable``'s action, naming the operation queued on ``name`` if there is one."""
    if not any(i.code is InconsistencyCode.HOST_UNREACHABLE for i in derived.inconsistencies):
        return derived
    q = ctx.store.queued_op(name)
    if q is None:
        return derived
    since = time.strftime("%H:%M:%S", time.localtime(q.queued))
    action = f"'{VERBS[q.op]}' is queued (since {since}): it runs when the host answers"
    found = tuple(
        replace(i, action=action) if i.code is InconsistencyCode.HOST_UNREACHABLE else i
        for i in derived.inconsistencies
    )
    return replace(derived, inconsistencies=found)


async def due(ctx: Context, busy: set[str]) -> list[QueuedOp]:
    """The queued operations whose instance's host answers now (``busy``: instances whose
    lock is held, left for the next round); each host is observed within its bound."""
    from ketch.service.inspect import view

    waiting = [q for q in ctx.store.queued_ops() if q.instance not in busy]

    async def answers(q: QueuedOp) -> bool:
        try:
            record = ctx.store.get(q.instance)
        except NotFound:  # purged meanwhile (its row normally goes with it)
            ctx.store.unqueue(q.instance)
            return False
        return (await view(ctx, record)).obs.host_error is None

    ready = await asyncio.gather(*(answers(q) for q in waiting))
    return [q for q, ok in zip(waiting, ready, strict=True) if ok]
