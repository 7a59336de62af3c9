"""Three ways to damage a ketch database, as a full disk or a bad restore leaves one.

Shared by the unit tests of the store's repair, the integration tests of a
daemon starting on a damaged database, and the chaos walk's ``damage-db``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def garbage_at_100(path: Path) -> None:
    """7 bytes of garbage at offset 100 (inside SQLite's header page)."""
    with path.open("r+b") as f:
        f.seek(100)
        f.write(b"garbage")


def truncated_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def deleted(path: Path) -> None:
    """The database gone, with its -wal and -shm."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "garbage-at-100": garbage_at_100,
    "truncated-to-half": truncated_to_half,
    "deleted": deleted,
}
