"""Event latency of ``GET /v1/events``: a state change to its event on the stream.

One storage root with 10 stopped instances (records and real qcow2 overlays,
as ``bench/list.py`` makes them), one client reading ``/v1/events`` in a
thread, stamping each event as it arrives.  Two kinds of change:

1. **through an operation**: ``PUT /v1/settings/local.st000.cpus`` (1, 2, 1 ...);
   the time from sending the request to the ``instance`` event that shows the
   new CPU count (the operation table's observer makes the hub look at once),
   next to the request's own round trip;
2. **behind ketchd's back**: the instance's disk renamed away (and back); the
   time from the rename to the ``inconsistency`` event (``missing-disk``) and
   back to the clean ``instance`` event.  Nobody tells the daemon: it is seen at
   its next look, every ``PERIOD`` (1 s) while someone watches; each change
   here is made just after a look (its event has just arrived), so this is the
   worst case, about one period.

Usage: .venv/bin/python bench/events.py [--runs N]
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

from common import Bench, arg_parser, emit, fresh_bench, log, median

from ketch.api import models as m
from ketch.api.routes import WATCH
from ketch.client import request

WAIT = 30.0


class Watcher:
    """The event stream in a thread: (perf_counter at arrival, event)."""

    def __init__(self, b: Bench) -> None:
        self.got: queue.Queue[tuple[float, m.AnyWatchEvent]] = queue.Queue()
        self.resp = request(str(b.root / "ketchd.sock"), "GET", WATCH.path, None, None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.resp.lines():
            if line.strip():
                self.got.put((time.perf_counter(), m.decode_watch_event(line)))

    def until(self, wanted: Any) -> float:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            at, event = self.got.get(timeout=WAIT)
            if wanted(event):
                return at
        raise TimeoutError("no such event")


def through_an_operation(b: Bench, w: Watcher, runs: int) -> dict[str, Any]:
    client = b.client()
    latency, reply = [], []
    for i in range(runs):
        cpus = 2 if i % 2 == 0 else 1
        t0 = time.perf_counter()
        client.put("/v1/settings/local.st000.cpus", {"value": str(cpus)})
        t1 = time.perf_counter()
        at = w.until(
            lambda e, c=cpus: (
                isinstance(e, m.InstanceEvent)
                and e.instance.name == "st000"
                and e.instance.cpus == c
            )
        )
        latency.append(at - t0)
        reply.append(t1 - t0)
    return {
        "event_s": round(median(latency), 4),
        "event_max_s": round(max(latency), 4),
        "request_s": round(median(reply), 4),
        "runs": runs,
    }


def behind_its_back(b: Bench, w: Watcher, runs: int) -> dict[str, Any]:
    disk = Path(b.root) / "instances" / "st001" / "disk.qcow2"
    away = disk.with_suffix(".away")
    found, cleared = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        disk.rename(away)
        at = w.until(lambda e: isinstance(e, m.InconsistencyEvent) and e.name == "st001")
        found.append(at - t0)
        t0 = time.perf_counter()
        away.rename(disk)
        at = w.until(
            lambda e: (
                isinstance(e, m.InstanceEvent)
                and e.instance.name == "st001"
                and not e.instance.inconsistencies
            )
        )
        cleared.append(at - t0)
    return {
        "found_s": round(median(found), 4),
        "found_max_s": round(max(found), 4),
        "cleared_s": round(median(cleared), 4),
        "runs": runs,
    }


def main() -> None:
    args = arg_parser(__doc__, runs=20).parse_args()
    with fresh_bench("kbe-") as b:
        b.ensure_image()
        b.add_stopped(10)
        b.ketch_json("list")  # the daemon up and warm
        w = Watcher(b)
        w.until(lambda e: isinstance(e, m.SnapshotEvent))
        log("a setting changed through the API (an operation)")
        op = through_an_operation(b, w, args.runs)
        ms = {k: v * 1000 for k, v in op.items() if k.endswith("_s")}
        log(f"  event after {ms['event_s']:.1f} ms (the request: {ms['request_s']:.1f} ms)")
        log("a disk renamed behind ketchd's back (seen at its next look)")
        back = behind_its_back(b, w, max(3, args.runs // 4))
        log(f"  inconsistency after {back['found_s'] * 1000:.0f} ms, cleared after "
            f"{back['cleared_s'] * 1000:.0f} ms (period 1 s)")  # fmt: skip
        w.resp._sock.shutdown(socket.SHUT_RDWR)  # the reader thread sees the end
    emit("events", {"operation": op, "external": back})


if __name__ == "__main__":
    main()
