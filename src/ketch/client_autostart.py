"""Starting ketchd for a client that found none answering (the CLI's autostart).

:func:`start` runs ``python -P -m ketch.daemon.main`` detached, its output
appended to the storage root's ``ketchd.log``, and waits until the socket
answers; a daemon that refuses to start (exit 2) or exits before answering is
reported at once with what it logged, never after waiting out the deadline.
Client side (imported by :mod:`ketch.client` only when it must start one).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from ketch.errors import DaemonUnreachable, KetchError
from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import NoReturn

START_TIMEOUT = 20.0


def daemon_argv() -> list[str]:
    """How the CLI starts ketchd: ``-P`` keeps the working directory off ``sys.path``, so a
    ``ketch/`` planted where the user runs ``ketch`` is never imported (ketchd may be root)."""
    return [sys.executable, "-P", "-m", "ketch.daemon.main"]


def start(storage: str, daemon_log: str, ping: Callable[[], bool]) -> None:
    """Start ketchd for ``storage`` in the background; return once ``ping()`` is true."""
    import subprocess

    os.makedirs(storage, mode=0o700, exist_ok=True)
    log = os.fdopen(os.open(daemon_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    begin = os.fstat(log.fileno()).st_size
    env = dict(os.environ, KETCH_STORAGE=storage)
    proc = subprocess.Popen(
        daemon_argv(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env=env,
        close_fds=True,
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if ping():
            return
        code = proc.poll()
        if code == 2:  # refused to start (another daemon that won a race exits 1)
            _refused(daemon_log, begin)
        elif code is not None and code != 1:
            _exited(daemon_log, begin, code)
        time.sleep(0.05)
    raise DaemonUnreachable(
        f"started ketchd but it did not answer within {START_TIMEOUT:g} s",
        hint=f"see {daemon_log}",
    )


def _said(daemon_log: str, begin: int, size: int) -> list[str]:
    with open(daemon_log, "rb") as f:
        f.seek(begin)
        return f.read(size).decode(errors="replace").splitlines()


def _refused(daemon_log: str, begin: int) -> NoReturn:
    """ketchd refused to start (exit 2): say what it said (its ``ketchd: ...`` lines)."""
    said = _said(daemon_log, begin, 8192)
    lines = [line.removeprefix("ketchd: ") for line in said if line.startswith("ketchd: ")]
    raise KetchError(
        lines[0] if lines else "ketchd refused to start",
        hint=" ".join(lines[1:]) or f"see {daemon_log}",
    )


def _exited(daemon_log: str, begin: int, code: int) -> NoReturn:
    """ketchd exited before answering: say so at once, with the last line it logged."""
    said = _said(daemon_log, begin, 65536)
    last = next((line.strip() for line in reversed(said) if line.strip()), "")
    raise DaemonUnreachable(
        f"ketchd exited (status {code}) before answering" + (f": {last[:300]}" if last else ""),
        hint=f"its log is {daemon_log}",
    )
