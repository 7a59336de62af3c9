"""``ketch wait-ready [NAME] [--timeout SECONDS]``: block until ketchd, or an instance, is ready.

Multipass 1.17's ``wait-ready`` (src/client/cli/cmd/wait_ready.cpp) waits for its
daemon to accept requests, retrying while it is not there yet; ketch does the
same (starting ketchd if none runs, as every verb does), and with ``NAME`` also
waits until that instance is Running (ketch's addition: a launch or start made
by another process may still be booting it).  Exit 5 on timeout.
"""

from __future__ import annotations

import argparse
import time

from ketch.api import routes
from ketch.errors import DaemonUnreachable, InvalidState, Timeout

POLL = 0.5  # seconds between two looks, as Multipass retries
WAITING = ("Starting", "Restarting")  # states that become Running by themselves
READY = ("Running", "Delayed Shutdown")


def cmd_wait_ready(args: argparse.Namespace) -> int:
    from ketch.client import Client
    from ketch.layout import storage_dir

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    autostart = True
    while True:  # the daemon first
        try:
            Client(storage_dir(), autostart=autostart).call(routes.VERSION)
            break
        except DaemonUnreachable:
            autostart = False  # started once; now wait for it
            _check(deadline, "Timed out waiting for the ketch daemon to be ready.")
            time.sleep(POLL)
    if args.name is None:
        return 0
    client = Client(storage_dir())
    while True:
        entry = client.call(routes.INFO, query={"names": args.name}).info[args.name]
        state = str(entry.state)
        if state in READY:
            return 0
        if state not in WAITING:
            raise InvalidState(
                args.name,
                state,
                READY,
                message=f'"{args.name}" is {state}: it will not become ready by itself',
                hint=f"'ketch start {args.name}' starts it and waits until it is ready",
            )
        _check(deadline, f'Timed out waiting for instance "{args.name}" to be ready.')
        time.sleep(POLL)


def _check(deadline: float | None, message: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise Timeout(message, hint="see 'ketch list' and ketchd's log")
