"""A daemon's life ends with its root: ketchd stops when its root or socket goes away.

A ketchd whose storage root was removed (a test's temporary directory, a
user's ``rm -rf``) or replaced (moved away and another made in its place),
or whose socket file was removed or replaced (another ketchd took over, a
user cleaned up), can never be reached again; left alone it runs for ever.
:func:`watch` looks at both once a second, by device and inode, and says
why it is time to stop; ketchd then stops as on SIGTERM, leaving every QEMU
running.  :func:`identity` and :func:`gone` are pure but for one ``stat``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

WATCH_PERIOD = 1.0

Identity = tuple[int, int]


def identity(path: Path) -> Identity | None:
    """``(st_dev, st_ino)`` of ``path`` (not followed through a symlink), None when absent."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def gone(watched: dict[Path, Identity]) -> str | None:
    """Why the daemon must stop: the first watched path removed or replaced, else None."""
    for path, ident in watched.items():
        now = identity(path)
        if now is None:
            return f"{path} was removed"
        if now != ident:
            return f"{path} was replaced"
    return None


async def watch(
    watched: dict[Path, Identity], on_gone: Callable[[str], None], period: float = WATCH_PERIOD
) -> None:
    """Check ``watched`` every ``period`` seconds; call ``on_gone(reason)`` once, then return."""
    while True:
        await asyncio.sleep(period)
        reason = gone(watched)
        if reason is not None:
            on_gone(reason)
            return
