"""Waits that another request may cut short (today: a guest's readiness).

A use case wraps such a wait in ``async with Wait(instance, "readiness")``.
The daemon installs a :class:`Watcher` for each operation in the context
variable :data:`WATCHER` (so use cases need no extra argument); it is told
when the wait begins and ends, and meanwhile may call :meth:`Wait.cancel`.
That cancels the task at the await it sits in (a running ``ssh`` is killed
by ``host.run``), and at the end of the ``async with`` the cancellation is
turned into :class:`WaitCancelled`, as ``asyncio.timeout`` turns its own
cancellation into ``TimeoutError``.  A cancellation from anywhere else (the
daemon shutting down) passes through as the ``CancelledError`` it is.

Outside the daemon (no watcher) a ``Wait`` changes nothing.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from types import TracebackType
from typing import Protocol

from ketch.errors import KetchError


class Cancelled(KetchError):
    """An operation (or the wait in it) was cancelled on request; says what was kept."""

    code = "cancelled"


class WaitCancelled(Exception):
    """A cancellable wait was cut short on request; ``reason`` says by whom.

    Not a KetchError on purpose: the use case that waited turns it into the
    error its user reads (what was kept, what to do next).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Watcher(Protocol):
    """The daemon's side: told when an operation starts and ends a cancellable wait."""

    def wait_began(self, wait: Wait) -> None:
        """``wait`` has begun; its :meth:`Wait.cancel` may be called from now on."""

    def wait_ended(self, wait: Wait) -> None:
        """``wait`` is over (done, failed or cancelled)."""


WATCHER: ContextVar[Watcher | None] = ContextVar("ketch_wait_watcher", default=None)


class Wait:
    """One cancellable wait of the current task (an async context manager)."""

    def __init__(self, instance: str, what: str) -> None:
        self.instance = instance
        self.what = what  # "readiness"
        self.reason: str | None = None  # set by cancel()
        self._task: asyncio.Task[object] | None = None
        self._watcher: Watcher | None = None

    @property
    def active(self) -> bool:
        return self._task is not None

    def cancel(self, reason: str) -> bool:
        """Cut the wait short; False if it is not waiting (any more) or already cut."""
        if self._task is None or self.reason is not None:
            return False
        self.reason = reason
        self._task.cancel()
        return True

    async def __aenter__(self) -> Wait:
        self._task = asyncio.current_task()
        self._watcher = WATCHER.get()
        if self._watcher is not None:
            self._watcher.wait_began(self)  # may cancel at once (a pre-emptor is queued)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if self._watcher is not None:
            self._watcher.wait_ended(self)
        if self.reason is None or task is None:
            return
        # Our own cancel: take it back; if nobody else cancelled too, say why we stopped.
        if task.uncancel() == 0 and et is asyncio.CancelledError:
            raise WaitCancelled(self.reason) from e
