"""``GET /v1/events``: the daemon's live events, one hub, a bounded buffer per client.

What is reported comes from the same observations as ``list``
(:func:`ketch.service.inspect.all_views`, the same driver probes, the same
derivation), taken again every :data:`PERIOD` seconds while anyone watches
and at once when an operation begins or ends; an instance is reported when
what ``list``/``info`` would show of it changed.  Operations starting and
ending come from the operation table (``Operations.observers``), as
``/v1/operations`` shows them.  Nobody watching: no polling at all.

Each client has a buffer of at most :data:`BUFFER` events.  A client that
reads too slowly to keep it from filling loses it: its buffer is emptied, it
is sent one ``lagged`` event (how many it missed) and a fresh ``snapshot``,
and goes on from there.  The daemon's memory does not grow with a slow reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ketch.api import models as m
from ketch.daemon.ops import Operation, Operations
from ketch.daemon.wire import Call, Events
from ketch.service import forwards as forwards_uc
from ketch.service import inspect as inspect_uc

log = logging.getLogger("ketchd")

PERIOD = 1.0  # seconds between two looks while someone watches
BUFFER = 256  # events a client may have unread before it is lagged
GONE_POLL = 0.25  # how often an idle stream looks whether its client left


def watch_instance(v: inspect_uc.View, forwards: list[m.ForwardInfo]) -> m.WatchInstance:
    """One instance as ``list`` and ``info`` show it (without asking the guest anything)."""
    spec = v.record.spec
    return m.WatchInstance(
        name=spec.name,
        state=v.state.value,
        ipv4=v.ipv4,
        image=spec.image,
        release=spec.release,
        cpus=spec.cpus,
        memory=spec.memory,
        disk=spec.disk,
        ssh_port=spec.ssh_port,
        forwards=forwards,
        mounts=[f"{x.source} => {x.target}" for x in spec.mounts],
        inconsistencies=inspect_uc.inconsistencies(v),
        deleted=v.record.deleted,
        quarantine=v.record.quarantine,
    )


def watch_operation(op: Operation) -> m.WatchOperation:
    error = None
    if op.final is not None and op.final.get("type") == "error":
        import msgspec

        error = msgspec.convert(op.final["error"], m.ErrorDetail)
    return m.WatchOperation(
        id=op.id,
        kind=str(op.kind),
        instances=list(op.instances),
        started=op.started,
        outcome=op.outcome,
        error=error,
    )


class Subscriber:
    """One client's bounded buffer of events."""

    def __init__(self, hub: Hub, size: int) -> None:
        self.hub, self.size = hub, size
        self.queue: deque[m.WatchEvent] = deque()
        self.lagged = 0  # events dropped since the buffer overflowed (0: not lagged)
        self.ready = asyncio.Event()

    def put(self, event: m.WatchEvent) -> None:
        if self.lagged:
            self.lagged += 1  # the resync snapshot will say it
        elif len(self.queue) >= self.size:
            self.lagged = len(self.queue) + 1
            self.queue.clear()
        else:
            self.queue.append(event)
        self.ready.set()

    def take(self) -> list[m.WatchEvent]:
        """What is there to send now (a lagged client: ``lagged``, then a fresh snapshot)."""
        self.ready.clear()
        if self.lagged:
            dropped, self.lagged = self.lagged, 0
            return [m.LaggedEvent(time=time.time(), dropped=dropped), self.hub.snapshot()]
        events = list(self.queue)
        self.queue.clear()
        return events


class Hub:
    """The daemon's event source: observes while anyone watches, fans out to each client."""

    def __init__(self, ops: Operations, *, period: float = PERIOD, buffer: int = BUFFER) -> None:
        self.ops, self.ctx = ops, ops.ctx
        self.period, self.buffer = period, buffer
        self.current: dict[str, m.WatchInstance] = {}
        self.announced: dict[str, set[str]] = {}  # inconsistency codes already told, by name
        self.subscribers: set[Subscriber] = set()
        self._kick = asyncio.Event()
        self._look = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.closed = False  # the daemon stops: every stream ends
        ops.observers.append(self._operation)

    # -- observing ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """Look at every instance (as ``list`` does); publish what changed."""
        async with self._look:
            await self.ops.settled()
            views = await inspect_uc.all_views(self.ctx)
            now = time.time()
            seen: dict[str, m.WatchInstance] = {}
            for v in views:
                seen[v.name] = watch_instance(v, forwards_uc.rows(self.ctx, v))
            for name, new in seen.items():
                old = self.current.get(name)
                if old == new:
                    continue
                self.current[name] = new
                self.publish(
                    m.InstanceEvent(time=now, instance=new, previous=old.state if old else None)
                )
            for name, new in seen.items():
                # Each announced once, and not while an operation works on the instance (a
                # launch's disk is "missing" until it is made): at the operation's end then.
                if name in self.ctx.active:
                    continue
                known = self.announced.get(name, set())
                for found in new.inconsistencies:
                    if found.code not in known:
                        self.publish(m.InconsistencyEvent(time=now, name=name, inconsistency=found))
                self.announced[name] = {i.code for i in new.inconsistencies}
            for name in [n for n in self.current if n not in seen]:
                del self.current[name]
                self.announced.pop(name, None)
                self.publish(m.RemovedEvent(time=now, name=name))

    def _operation(self, op: Operation) -> None:
        """The operation table's observer: an operation began (no final event yet) or ended."""
        if not self.subscribers:
            return
        event: m.WatchEvent
        if op.final is None:
            event = m.StartedEvent(time=time.time(), operation=watch_operation(op))
        else:
            event = m.EndedEvent(time=time.time(), operation=watch_operation(op))
        self.publish(event)
        self._kick.set()  # what it changed is seen now, not at the next period

    async def _run(self) -> None:
        """Look every period (or when kicked) while anyone watches; then stop."""
        try:
            while self.subscribers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self.period)
                self._kick.clear()
                try:
                    await self.refresh()
                except Exception:  # one failed look must not end everyone's stream
                    log.exception("events: looking at the instances failed")
        finally:
            self._task = None

    # -- clients ------------------------------------------------------------------------

    def publish(self, event: m.WatchEvent) -> None:
        for sub in self.subscribers:
            sub.put(event)

    def snapshot(self) -> m.SnapshotEvent:
        return m.SnapshotEvent(
            time=time.time(),
            instances=sorted(self.current.values(), key=lambda i: i.name),
            operations=[watch_operation(op) for op in self.ops.in_flight()],
        )

    async def subscribe(self) -> Subscriber:
        """A new client: a fresh look first, so its snapshot is what ``list`` says now."""
        await self.refresh()
        sub = Subscriber(self, self.buffer)
        sub.queue.append(self.snapshot())
        sub.ready.set()
        self.subscribers.add(sub)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="events")
        return sub

    def close(self) -> None:
        """End every stream (the daemon stops; they would hold its shutdown up)."""
        self.closed = True
        for sub in self.subscribers:
            sub.ready.set()

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._kick.set()  # the loop ends at once when nobody is left

    async def stream(self, gone: Callable[[], bool]) -> AsyncIterator[m.WatchEvent]:
        """One client's events until it goes (``gone()``, or its generator is closed)."""
        sub = await self.subscribe()
        try:
            while not gone() and not self.closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.ready.wait(), GONE_POLL)
                for event in sub.take():
                    yield event
        finally:
            self.unsubscribe(sub)


class WatchRoutes:
    """The ``/v1/events`` handler, mixed into :class:`ketch.daemon.api.Api` (one hub each)."""

    ops: Operations
    _hub: Hub | None = None

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            self._hub = Hub(self.ops)
        return self._hub

    async def close_watchers(self, app: web.Application) -> None:
        """``on_shutdown``: the streams end before aiohttp waits for its handlers."""
        if self._hub is not None:
            self._hub.close()

    async def watch(self, call: Call[None]) -> Events:
        request = call.request

        def gone() -> bool:
            transport = request.transport
            return transport is None or transport.is_closing()

        return Events(self.hub.stream(gone))
