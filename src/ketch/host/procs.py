"""Processes: pid files checked for liveness and for being really ours."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from ketch.model import PidStatus


def read_pidfile(path: Path) -> int | None:
    """The pid in a pid file, or None when absent, empty or garbage."""
    try:
        text = path.read_bytes().decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


def cmdline(pid: int) -> list[str] | None:
    """A live process's argv, or None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None  # zombies and kernel threads have no cmdline
    return [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]


def qemu_processes() -> list[tuple[int, list[str]]]:
    """Every live ``qemu-system-*`` process with its argv (a /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = cmdline(int(entry.name))
        if argv and "qemu-system" in Path(argv[0]).name:
            found.append((int(entry.name), argv))
    return found


def classify(pid: int | None, argv: list[str] | None, ours: bool) -> PidStatus:
    """Pure: what a pid file means, given what /proc said about the pid."""
    if pid is None:
        return PidStatus.NONE
    if argv is None:
        return PidStatus.STALE
    return PidStatus.OURS if ours else PidStatus.FOREIGN


def alive(pid: int) -> bool:
    return cmdline(pid) is not None


def terminate(pid: int, *, grace: float = 3.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; bounded."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.05)


def remove_quietly(*paths: Path) -> None:
    """Remove files that may or may not exist (idempotent cleanup)."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
