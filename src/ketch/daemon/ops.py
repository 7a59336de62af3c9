"""Operations as a resource: ids, locks, what each waits for, event streams, cancellation.

Every state-changing request becomes an :class:`Operation` with an id, sent
as the first event of its stream (``{"type": "operation", "id": ...}``).
Operations on one instance are serialized by a per-instance lock; a second
caller waits and is told what it waits for (the lock, and which operation
holds it).  Different instances proceed in parallel.  An operation runs in
its own task, so a client that goes away does not cancel it half-way.

The rules:

* **waiting for a lock** (not begun): ``DELETE /v1/operations/ID`` cancels it,
  and it is *dropped* when no client follows it any more (its requester went
  away, nobody re-attached): it never runs later.
* **waiting for the guest's readiness** (``service/waits.py``): ``DELETE``
  cuts the wait short (the instance is kept, as after a launch timeout), and a
  ``stop --force`` or ``delete --purge`` of the instance does so itself
  before it acts (pre-emption), instead of queueing behind it.
* **running** anything else: past the point of no return; it runs to its end
  (or, if the daemon dies, the journal finishes or rolls it back).

Events are broadcast to every listener; each operation keeps its last
:data:`REPLAY` events for a client that re-attaches, and a finished one stays
listed for :data:`KEEP_DONE` seconds with its final event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from ketch.daemon.operation import (
    GONE_POLL,
    PREEMPTIBLE,
    PREEMPTORS,
    REPLAY,
    AlreadyEnded,
    Event,
    Follow,
    Listener,
    NotCancellable,
    Operation,
    QueueReporter,
    Work,
    cancel_reply,
)
from ketch.errors import KetchError, NotFound
from ketch.model import OperationKind
from ketch.service import waits
from ketch.service.context import Context

__all__ = [
    "GONE_POLL",
    "KEEP_DONE",
    "PREEMPTIBLE",
    "PREEMPTORS",
    "REPLAY",
    "AlreadyEnded",
    "Event",
    "Follow",
    "NotCancellable",
    "Operation",
    "Operations",
    "QueueReporter",
    "cancel_reply",
    "ndjson",
]

log = logging.getLogger("ketchd")

KEEP_DONE = 300.0  # seconds a finished operation stays available (its final event)
MAX_DONE = 100  # and at most this many finished operations
CANCEL_WAIT = 30.0  # how long DELETE waits for a cancelled operation to end


class _Watch:
    """Tells the table when an operation enters or leaves a cancellable wait."""

    def __init__(self, ops: Operations, op: Operation) -> None:
        self.ops, self.op = ops, op

    def wait_began(self, wait: waits.Wait) -> None:
        op = self.op
        op.wait, op.state = wait, "waiting"
        op.waits_for = {"type": wait.what, "instance": wait.instance}
        op.emit(
            {
                "type": "waiting",
                "message": f'waiting for "{wait.instance}" to be ready (operation {op.id}; '
                f"'ketch stop --force {wait.instance}' stops waiting and keeps the instance)",
            }
        )
        for other in self.ops.queued_on(wait.instance):
            if other.preempts and op.kind in PREEMPTIBLE:
                self.ops.preempt(op, other)
                break

    def wait_ended(self, wait: waits.Wait) -> None:
        if self.op.wait is wait:
            self.op.wait, self.op.waits_for = None, None
            if self.op.state == "waiting":
                self.op.state = "running"


class Operations:
    """The daemon's table of locks and operations."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, Operation] = {}  # instance -> the operation holding its lock
        self._live: dict[str, Operation] = {}
        self._done: dict[str, Operation] = {}  # insertion order = order of finishing
        self._tasks: set[asyncio.Task[Any]] = set()
        # Told when an operation begins and when it ends (the events hub: daemon/events.py).
        self.observers: list[Callable[[Operation], None]] = []
        # Set once operations a previous daemon left half-done are recovered;
        # reads wait for it (bounded) so nobody sees a state mid-recovery.
        self.recovered = asyncio.Event()
        self.recovered.set()

    async def settled(self, timeout: float = 60.0) -> None:
        """Wait (bounded) until start-up recovery is over."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.recovered.wait(), timeout)

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # -- the table ---------------------------------------------------------------

    def in_flight(self) -> list[Operation]:
        return sorted(self._live.values(), key=lambda o: o.started)

    def get(self, op_id: str) -> Operation:
        self._prune()
        op = self._live.get(op_id) or self._done.get(op_id)
        if op is None:
            raise NotFound(
                f'no operation "{op_id}"',
                hint="GET /v1/operations lists those in flight; a finished one is kept "
                f"for {KEEP_DONE:g} s",
            )
        return op

    def queued_on(self, name: str) -> list[Operation]:
        """Operations waiting for the lock of ``name``."""
        return [
            o
            for o in self._live.values()
            if o.waits_for and o.waits_for.get("type") == "lock" and o.waits_for["instance"] == name
        ]

    def _prune(self) -> None:
        now = time.time()
        for op_id, op in list(self._done.items()):
            if len(self._done) > MAX_DONE or now - (op.finished or now) > KEEP_DONE:
                del self._done[op_id]

    def _new_id(self) -> str:
        while (op_id := secrets.token_hex(4)) in self._live or op_id in self._done:
            pass
        return op_id

    # -- locks -------------------------------------------------------------------

    async def acquire(
        self,
        names: Iterable[str],
        kind: OperationKind,
        reporter: QueueReporter | None = None,
        op: Operation | None = None,
    ) -> list[str]:
        """Take the locks of ``names`` (in one global order: no deadlock) for ``kind``."""
        held: list[str] = []
        try:
            for name in sorted(set(names)):
                lock = self.lock(name)
                if lock.locked():
                    holder = self._holders.get(name)
                    busy = self.ctx.active.get(name, "another operation")
                    if op is not None:
                        op.waits_for = {
                            "type": "lock",
                            "instance": name,
                            "operation": holder.id if holder else None,
                            "kind": busy,
                        }
                    if reporter is not None:
                        by = f" (operation {holder.id})" if holder else ""
                        reporter.waiting(f'waiting for "{busy}" on "{name}" to finish{by}')
                    if op is not None and holder is not None and op.preempts:
                        self.preempt(holder, op)
                await lock.acquire()
                held.append(name)
                self.ctx.active[name] = kind
                if op is not None:
                    self._holders[name] = op
                    op.waits_for = None
        except BaseException:
            self.release(held)
            raise
        return held

    def release(self, held: list[str]) -> None:
        """Give back what :meth:`acquire` took (only that)."""
        for name in held:
            self.ctx.active.pop(name, None)
            self._holders.pop(name, None)
            self.lock(name).release()

    def preempt(self, holder: Operation, by: Operation) -> None:
        """Cut ``holder``'s readiness wait short for the force stop or purge ``by``."""
        wait = holder.wait if holder.kind in PREEMPTIBLE else None
        if wait is not None and wait.cancel(f"{by.kind} (operation {by.id}) cancelled the wait"):
            by.emit(
                {
                    "type": "waiting",
                    "message": f"cancelled the wait of {holder.label()} for its guest to be ready",
                }
            )

    # -- running -----------------------------------------------------------------

    def begin(
        self, names: Iterable[str], kind: OperationKind, work: Work
    ) -> tuple[Operation, Listener]:
        """Start an operation; returns it and a listener attached before it runs."""
        self._prune()
        op = Operation(self._new_id(), kind, list(dict.fromkeys(names)))
        listener = op.attach(replay=False)
        self._live[op.id] = op
        op.task = asyncio.create_task(self._body(op, work), name=f"{kind}:{op.id}")
        self._tasks.add(op.task)
        op.task.add_done_callback(self._tasks.discard)
        self._tell(op)
        return op, listener

    async def _body(self, op: Operation, work: Work) -> None:
        waits.WATCHER.set(_Watch(self, op))  # this task's own context
        reporter = QueueReporter(op.emit)
        final: Event
        try:
            held = await self.acquire(op.instances, op.kind, reporter, op)
            op.began, op.state, op.waits_for = True, "running", None
            try:
                result = await work(reporter)
            finally:
                self.release(held)
            final, outcome = {"type": "result", "result": result}, "ok"
        except KetchError as exc:
            final, outcome = {"type": "error", "error": exc.to_dict()}, "failed"
        except waits.WaitCancelled as exc:  # a use case that did not say more about it
            error = waits.Cancelled(f"stopped waiting: {exc.reason}")
            final, outcome = {"type": "error", "error": error.to_dict()}, "failed"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if op.cancel_reason is None or op.began or task is None or task.uncancel() > 0:
                op.end({"type": "error", "error": _internal("cancelled")}, "failed")
                self._finish(op)
                raise
            error = waits.Cancelled(op.cancel_reason, hint="nothing was done")
            final, outcome = {"type": "error", "error": error.to_dict()}, op.cancel_outcome
        except Exception as exc:
            log.exception("operation %s %s on %s failed", op.id, op.kind, op.instances)
            final, outcome = {"type": "error", "error": _internal(repr(exc))}, "failed"
        op.end(final, outcome)
        self._finish(op)

    def _finish(self, op: Operation) -> None:
        self._live.pop(op.id, None)
        self._done[op.id] = op
        self._prune()
        self._tell(op)

    def _tell(self, op: Operation) -> None:
        for observer in self.observers:
            try:
                observer(op)
            except Exception:  # an observer's fault is never the operation's
                log.exception("an observer of operation %s failed", op.id)

    def detach(self, op: Operation, listener: Listener) -> None:
        """A client stopped following ``op``; one nobody follows before it began is dropped."""
        with contextlib.suppress(ValueError):
            op.listeners.remove(listener)
        if not op.listeners and not op.began and op.final is None:
            log.info("dropping %s: its client went away before it began", op.label())
            reason = f"{op.label()} was dropped: its client went away before it began"
            self._cancel_waiting(op, reason, "dropped")

    def _cancel_waiting(self, op: Operation, reason: str, outcome: str = "cancelled") -> None:
        if op.cancel_reason is None and op.task is not None:
            op.cancel_reason, op.cancel_outcome = reason, outcome
            op.task.cancel()

    async def cancel(self, op_id: str) -> dict[str, Any]:
        """Cancel an operation that is waiting; NotCancellable when it is past that."""
        op = self.get(op_id)
        if op.final is not None and not cancel_reply(op)["cancelled"]:
            raise AlreadyEnded(
                f"{op.label()} cannot be cancelled: it has already ended ({op.outcome})",
                hint=f"GET /v1/operations/{op.id} shows how it ended",
            )
        if op.final is None and not op.began:
            self._cancel_waiting(op, f"{op.label()} was cancelled before it began")
        elif op.final is None and op.wait is not None:
            op.wait.cancel(f"DELETE /v1/operations/{op.id} cancelled the wait")
        elif op.final is None:
            raise NotCancellable(
                f"{op.label()} cannot be cancelled: it is running"
                + (f" ({op.step})" if op.step else "")
                + " and past the point of no return; it goes on in the daemon",
                hint=f"follow it with GET /v1/operations/{op.id}; see 'ketch list'",
            )
        if op.task is not None and not op.task.done():
            await asyncio.wait([op.task], timeout=CANCEL_WAIT)
        return cancel_reply(op)

    async def run(self, names: Iterable[str], kind: OperationKind, work: Work) -> Event:
        """Run an operation to its end; returns its final event (no stream)."""
        _, listener = self.begin(names, kind, work)
        last: Event = {}
        while (event := await listener.get()) is not None:
            last = event
        return last

    def submit(self, names: Iterable[str], kind: OperationKind, work: Work) -> Follow:
        """Start an operation; its requester's stream (the operation event first)."""
        op, listener = self.begin(names, kind, work)
        return Follow(op, listener, op.intro(), lambda: self.detach(op, listener))

    def follow(self, op_id: str, *, replay: bool) -> Follow:
        """Re-attach to an operation: with ``replay``, what it kept so far, then on."""
        op = self.get(op_id)
        listener = op.attach(replay=replay)
        return Follow(op, listener, op.intro(replay=replay), lambda: self.detach(op, listener))

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _internal(detail: str) -> dict[str, Any]:
    return {
        "code": "internal",
        "message": f"internal error in ketchd: {detail}",
        "hint": "see ketchd.log in the storage root",
        "exit_code": 2,
    }


def ndjson(event: Event) -> bytes:
    return (json.dumps(event) + "\n").encode()
