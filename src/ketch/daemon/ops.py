"""Running operations: per-instance locks, live-operation bookkeeping, event streams.

Operations on one instance are serialized by a per-instance lock; a second
caller waits and is told what it waits for.  Different instances proceed in
parallel.  An operation runs in its own task, so a client that goes away
does not cancel it half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from ketch.errors import KetchError
from ketch.service.context import Context

log = logging.getLogger("ketchd")

Event = dict[str, Any]


class QueueReporter:
    """A Reporter that turns steps, progress and warnings into stream events."""

    def __init__(self, queue: asyncio.Queue[Event | None]) -> None:
        self._queue = queue

    def step(self, message: str) -> None:
        self._queue.put_nowait({"type": "step", "message": message})

    def progress(self, label: str, done: int, total: int | None) -> None:
        self._queue.put_nowait({"type": "progress", "label": label, "done": done, "total": total})

    def warn(self, message: str) -> None:
        self._queue.put_nowait({"type": "warning", "message": message})

    def waiting(self, message: str) -> None:
        self._queue.put_nowait({"type": "waiting", "message": message})


Operation = Callable[[QueueReporter], Awaitable[dict[str, Any]]]


class Operations:
    """The daemon's table of locks and live operations."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
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

    async def acquire(
        self, names: Iterable[str], op: str, reporter: QueueReporter | None = None
    ) -> list[str]:
        """Take the locks of ``names`` (in one global order: no deadlock) for ``op``."""
        held: list[str] = []
        try:
            for name in sorted(set(names)):
                lock = self.lock(name)
                if lock.locked() and reporter is not None:
                    busy = self.ctx.active.get(name, "another operation")
                    reporter.waiting(f'waiting for "{busy}" on "{name}" to finish')
                await lock.acquire()
                held.append(name)
                self.ctx.active[name] = op
        except BaseException:
            self.release(held)
            raise
        return held

    def release(self, held: list[str]) -> None:
        """Give back what :meth:`acquire` took (only that)."""
        for name in held:
            self.ctx.active.pop(name, None)
            self.lock(name).release()

    async def _run(
        self, names: Iterable[str], op: str, fn: Operation, reporter: QueueReporter
    ) -> dict[str, Any]:
        held = await self.acquire(names, op, reporter)
        try:
            return await fn(reporter)
        finally:
            self.release(held)

    def submit(self, names: Iterable[str], op: str, fn: Operation) -> AsyncIterator[Event]:
        """Start an operation; iterate its events, ending with a result or an error."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        reporter = QueueReporter(queue)
        names = list(names)

        async def body() -> None:
            try:
                result = await self._run(names, op, fn, reporter)
                queue.put_nowait({"type": "result", "result": result})
            except KetchError as exc:
                queue.put_nowait({"type": "error", "error": exc.to_dict()})
            except asyncio.CancelledError:
                queue.put_nowait({"type": "error", "error": _internal("cancelled")})
                raise
            except Exception as exc:
                log.exception("operation %s on %s failed", op, names)
                queue.put_nowait({"type": "error", "error": _internal(repr(exc))})
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(body(), name=f"{op}:{','.join(names)}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        async def events() -> AsyncIterator[Event]:
            while (event := await queue.get()) is not None:
                yield event

        return events()

    async def run(self, names: Iterable[str], op: str, fn: Operation) -> Event:
        """Run an operation to its end; returns its final event (no stream)."""
        last: Event = {}
        async for event in self.submit(names, op, fn):
            last = event
        return last

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
