"""The one clock the use cases and the daemon's scheduler read: wall time and monotonic time.

:class:`Clock` is the seam (``Context.clock``); :data:`SYSTEM` is the real
one, and the test suite's ``FakeClock`` (``tests/fakes.py``) is moved by hand,
so a delayed shutdown, an image's age or a snapshot's time is tested without
waiting.  Lower layers (the store's bookkeeping columns, host timeouts) keep
the system clock: nothing a user sees depends on them.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where "now" comes from."""

    def time(self) -> float:
        """Seconds since the epoch (a timestamp that is stored or shown)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for deadlines)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM: Clock = SystemClock()
