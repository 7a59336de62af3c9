"""The journal guard: how every state-changing use case keeps the operation journal.

::

    async with journal(ctx, name, OperationKind.SNAPSHOT, step=f"create-tag {tag}") as j:
        await ctx.driver_for(spec).create_tag(spec, idir, tag)
        j.undo(drop_tag, tag)          # run, in reverse, only if what follows fails
        j.step(f"record {tag}")
        ctx.store.add_snapshot(...)
        j.keep()                       # from here on nothing is rolled back

- The entry is opened before the body runs.  If it cannot be written, the
  operation does not happen (the error is raised: nothing was changed), except
  with ``quiet`` (``stop --force``, purge: operations that must not fail),
  which carry on unjournaled after a warning.
- ``j.step`` records the current step, which recovery reads after a crash.
- A body that ends marks the entry ``ok``.  A body that raises first runs
  the registered undo steps (newest first, each at most once; one that fails
  is a warning), then marks the entry ``timeout`` (a :class:`Timeout`) or
  ``failed`` (anything else, cancellation included), and the body's own
  exception propagates, always: a journal write that fails on the way (a full
  disk) is logged and reported as a warning, never raised instead.
- A successful operation whose ``ok`` cannot be written is reported with a
  warning: the entry stays open, and recovery finds the instance as the
  operation left it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from ketch.errors import KetchError, Timeout
from ketch.model import OperationKind
from ketch.progress import NULL, Reporter
from ketch.service.context import Context
from ketch.service.waits import Cancelled

log = logging.getLogger(__name__)

OK, FAILED, TIMEOUT, CANCELLED = "ok", "failed", "timeout", "cancelled"


def outcome_of(exc: BaseException) -> str:
    """The journal outcome of an operation that raised ``exc``."""
    if isinstance(exc, Timeout):
        return TIMEOUT
    return CANCELLED if isinstance(exc, Cancelled) else FAILED


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, KetchError) else f"{type(exc).__name__}: {exc}"


class Journal:
    """One open journal entry, as the body of :func:`journal` sees it."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        op: OperationKind,
        entry: int | None,
        reporter: Reporter,
        quiet: bool,
    ) -> None:
        self._ctx, self.name, self.op, self.entry = ctx, name, op, entry
        self._reporter, self._quiet = reporter, quiet
        self._undo: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def step(self, step: str) -> None:
        """Record the step the operation is at (what recovery reads after a crash)."""
        if self.entry is None:
            return
        try:
            self._ctx.store.step(self.entry, step)
        except KetchError as exc:
            if not self._quiet:
                raise
            self._warn(f"could not journal the step '{step}' of this {self.op}: {exc.message}")

    def undo(self, fn: Callable[..., Any], *args: Any) -> None:
        """Register a rollback step (a function or coroutine function) for a failure."""
        self._undo.append((fn, args))

    def keep(self) -> None:
        """What was done stays even if the rest fails: forget the undo steps."""
        self._undo.clear()

    async def _roll_back(self) -> None:
        while self._undo:
            fn, args = self._undo.pop()
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # one failed undo step must not stop the others
                self._warn(f"could not undo a step of this {self.op}: {_message(exc)}")

    def _finish(self, outcome: str) -> None:
        if self.entry is None:
            return
        try:
            self._ctx.store.finish(self.entry, outcome)
        except Exception as exc:  # never raised instead of the operation's own outcome
            self._warn(
                f"could not mark this {self.op} as {outcome} in the journal "
                f"({_message(exc)}); it shows as interrupted until ketchd recovers it"
            )

    def _warn(self, message: str) -> None:
        log.warning("%s on %s: %s", self.op, self.name, message)
        try:
            self._reporter.warn(message)
        except Exception:  # a reporter whose client went away
            log.exception("reporting a warning failed")


@asynccontextmanager
async def journal(
    ctx: Context,
    name: str,
    op: OperationKind,
    *,
    step: str = "",
    reporter: Reporter = NULL,
    quiet: bool = False,
) -> AsyncIterator[Journal]:
    """Journal the operation ``op`` on instance ``name`` around the body (see the module)."""
    entry: int | None
    try:
        entry = ctx.store.begin(name, op, step)
    except KetchError as exc:
        if not quiet:
            raise
        entry = None
        reporter.warn(f"{exc.message}; carrying on without journaling this {op}")
    j = Journal(ctx, name, op, entry, reporter, quiet)
    try:
        yield j
    except BaseException as exc:
        await j._roll_back()
        j._finish(outcome_of(exc))
        raise
    j.keep()
    j._finish(OK)


def close(ctx: Context, entry: int, outcome: str, reporter: Reporter = NULL) -> bool:
    """Mark an existing entry (recovery: ``recovered``); a failed write is a warning.

    Returns whether the entry was marked.
    """
    try:
        ctx.store.finish(entry, outcome)
    except KetchError as exc:
        log.warning("could not mark journal entry %d as %s: %s", entry, outcome, exc.message)
        reporter.warn(f"could not mark the journal entry as {outcome}: {exc.message}")
        return False
    return True


def record_quietly(reporter: Reporter, what: str, write: Callable[[], object]) -> None:
    """A store write that must not make a force stop or purge fail: a warning instead."""
    try:
        write()
    except KetchError as exc:
        reporter.warn(f"could not {what}: {exc.message}")
