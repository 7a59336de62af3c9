"""One operation of ketchd: what it is, where it stands, its events and who follows them.

The table that runs operations, their locks and waits is :mod:`ketch.daemon.ops`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import KetchError
from ketch.model import OperationKind
from ketch.service import waits

Event = dict[str, Any]
Listener = asyncio.Queue[Event | None]

REPLAY = 200  # events an operation keeps for a client that re-attaches
GONE_POLL = 0.25  # how often a stream with nothing to send looks whether its client left
# while waiting for readiness
PREEMPTIBLE = frozenset({OperationKind.LAUNCH, OperationKind.START, OperationKind.RESTART})
PREEMPTORS = frozenset({OperationKind.FORCE_STOP, OperationKind.PURGE})


class NotCancellable(KetchError):
    """The operation is past the point where it can be cancelled."""

    code = "not-cancellable"


class AlreadyEnded(NotCancellable):
    """The operation has ended (it is kept a while, with its final event)."""

    code = "operation-ended"


class QueueReporter:
    """A Reporter that turns steps, progress and warnings into an operation's events."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._emit = emit

    def step(self, message: str) -> None:
        self._emit({"type": "step", "message": message})

    def progress(self, label: str, done: int, total: int | None) -> None:
        self._emit({"type": "progress", "label": label, "done": done, "total": total})

    def warn(self, message: str) -> None:
        self._emit({"type": "warning", "message": message})

    def waiting(self, message: str) -> None:
        self._emit({"type": "waiting", "message": message})


Work = Callable[[QueueReporter], Awaitable[dict[str, Any]]]


@dataclass(eq=False)
class Operation:
    """One request's operation: what it is, where it stands, its events and listeners."""

    id: str
    kind: OperationKind
    instances: list[str]
    started: float = field(default_factory=time.time)
    state: str = "waiting"  # waiting (a lock, or readiness) | running | done
    waits_for: dict[str, Any] | None = None
    began: bool = False  # has taken its locks: past "dropped if abandoned"
    step: str | None = None  # its last step message
    outcome: str | None = None  # when done: ok | failed | cancelled | dropped
    final: Event | None = None
    finished: float | None = None
    history: deque[Event] = field(default_factory=lambda: deque(maxlen=REPLAY))
    emitted: int = 0
    listeners: list[Listener] = field(default_factory=list)
    wait: waits.Wait | None = None  # its cancellable wait now
    cancel_reason: str | None = None  # set when cancelled or dropped before it began
    cancel_outcome: str = "cancelled"  # or "dropped" (nobody followed it)
    task: asyncio.Task[None] | None = None

    @property
    def preempts(self) -> bool:
        return self.kind in PREEMPTORS

    def emit(self, event: Event) -> None:
        if event.get("type") == "step":
            self.step = str(event.get("message"))
        self.history.append(event)
        self.emitted += 1
        for queue in self.listeners:
            queue.put_nowait(event)

    def end(self, final: Event, outcome: str) -> None:
        self.final, self.outcome = final, outcome
        self.state, self.finished = "done", time.time()
        self.waits_for, self.wait = None, None
        for queue in self.listeners:
            queue.put_nowait(final)
            queue.put_nowait(None)

    def attach(self, *, replay: bool) -> Listener:
        """A new listener: with ``replay``, first what is kept of the events so far."""
        queue: Listener = asyncio.Queue()
        if replay:
            for event in self.history:
                queue.put_nowait(event)
        if self.final is not None:
            queue.put_nowait(self.final)
            queue.put_nowait(None)
        else:
            self.listeners.append(queue)
        return queue

    def intro(self, *, replay: bool | None = None) -> Event:
        """The first event of a stream; a re-attached one says what it replays."""
        event: Event = {"type": "operation", "id": self.id}
        if replay is not None:
            kept = len(self.history) if replay else 0
            event.update(replayed=kept, dropped=self.emitted - kept if replay else 0)
        return event

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "instances": list(self.instances),
            "started": self.started,
            "state": self.state,
            "waits_for": self.waits_for,
            "step": self.step,
            "outcome": self.outcome,
        }

    def label(self) -> str:
        on = ", ".join(f'"{n}"' for n in self.instances)
        return f"{self.kind} (operation {self.id}) on {on}" if on else f"{self.kind} ({self.id})"


class Follow:
    """One client's stream of an operation: the operation event, then its events.

    :meth:`close` must be called when the client goes (the HTTP stream helper
    does): an operation nobody follows before it began is dropped.
    """

    def __init__(
        self, op: Operation, listener: Listener, intro: Event, on_close: Callable[[], None]
    ) -> None:
        self.op, self.listener, self.intro = op, listener, intro
        self._on_close = on_close
        self._sent_intro = False

    async def next(self, gone: Callable[[], bool] | None = None) -> Event | None:
        """The next event (None at the end, or once ``gone()`` says the client left)."""
        if not self._sent_intro:
            self._sent_intro = True
            return self.intro
        while True:
            if gone is None:
                return await self.listener.get()
            try:
                return await asyncio.wait_for(self.listener.get(), GONE_POLL)
            except TimeoutError:
                if gone():
                    return None

    def close(self) -> None:
        self._on_close()

    def __aiter__(self) -> Follow:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event


def cancel_reply(op: Operation) -> dict[str, Any]:
    """What ``DELETE /v1/operations/ID`` answers once the operation has ended (or not)."""
    cancelled = op.outcome in ("cancelled", "dropped")
    if cancelled:
        message = f"{op.cancel_reason or 'cancelled'}; nothing was done"
    elif op.outcome is None:
        message = f"{op.label()} was asked to stop waiting; it has not ended yet"
    else:
        error = (op.final or {}).get("error") or {}
        message = error.get("message") or f"{op.label()} had already ended ({op.outcome})"
        cancelled = error.get("code") == "cancelled"
    return {"id": op.id, "cancelled": cancelled, "outcome": op.outcome, "message": message}
