"""ketch suspend / ketch start (resume) vs the same QMP calls on a raw QEMU.

Two running tiny VMs (1 CPU, 1 GiB) of the same image: one launched by
ketch, one started by hand with ketch's QEMU argv (``bench/common.RawVm``).
Each run suspends and resumes both, the order alternating between runs:

* suspend, ``ketch``: ``ketch suspend NAME`` (command to exit).
* suspend, ``raw``: over QMP: ``stop``, the ``snapshot-save`` job (tag
  ``suspend``, state in ``disk0``) polled with ``query-jobs`` to its end,
  ``quit``, then wait for the process to exit.
* resume, ``ketch``: ``ketch start NAME`` (returns when SSH answers).
* resume, ``raw``: QEMU with ``-loadvm suspend``, the ``snapshot-delete`` job
  for the tag (ketch does it too: a tag left behind would make the next
  ``snapshot-save`` refuse), then ``ssh ... test -f boot-finished`` with
  ketch's ssh argv and key until it succeeds.

Goal: ketch / raw <= 1.10 for both.

Usage: .venv/bin/python bench/suspend.py [--runs N]
"""

from __future__ import annotations

import contextlib
import time

from common import (
    Bench,
    Qmp,
    RawVm,
    arg_parser,
    emit,
    fresh_bench,
    log,
    print_table,
    summary,
)

GOAL = 1.10
TAG = "suspend"
NAME = "s1"


def raw_suspend(vm: RawVm) -> float:
    t0 = time.perf_counter()
    pid = vm.pid()
    assert pid is not None
    mon = Qmp(vm.qmp_socket)
    try:
        mon.execute("stop")
        mon.run_job(
            "snapshot-save",
            {"job-id": "bench-save", "tag": TAG, "vmstate": "disk0", "devices": ["disk0"]},
        )
        with contextlib.suppress(EOFError, OSError):  # QEMU may close before answering
            mon.execute("quit")
    finally:
        mon.close()
    vm.wait_exit(pid, timeout=60)
    return time.perf_counter() - t0


def raw_resume(vm: RawVm) -> float:
    t0 = time.perf_counter()
    vm.start(loadvm=TAG)
    mon = Qmp(vm.qmp_socket)
    try:
        mon.run_job("snapshot-delete", {"job-id": "bench-del", "tag": TAG, "devices": ["disk0"]})
    finally:
        mon.close()
    vm.wait_ssh(connect_timeout=1)
    return time.perf_counter() - t0


def ketch_suspend(b: Bench) -> float:
    return b.time_ketch("suspend", NAME)


def ketch_resume(b: Bench) -> float:
    return b.time_ketch("start", NAME)


def main() -> None:
    args = arg_parser(__doc__, runs=5).parse_args()
    times: dict[str, list[float]] = {k: [] for k in ("rs", "ks", "rr", "kr")}
    with fresh_bench("kbs-") as b:
        accel = b.prime_accel()
        b.ensure_image()
        log("launching the ketch VM and booting the raw VM (untimed)")
        b.ketch("launch", "tiny", "--name", NAME, timeout=900)
        vm = RawVm(b, "raw", accel=accel)
        vm.create()
        vm.start()
        vm.wait_ssh()
        # One untimed cycle each: the first snapshot of a disk allocates its
        # snapshot tables; the daemon imports its QMP client on first use.
        raw_suspend(vm), raw_resume(vm), ketch_suspend(b), ketch_resume(b)
        for i in range(args.runs):
            first_raw = i % 2 == 0
            order = ("raw", "ketch") if first_raw else ("ketch", "raw")
            for side in order:
                if side == "raw":
                    times["rs"].append(raw_suspend(vm))
                else:
                    times["ks"].append(ketch_suspend(b))
            for side in order:
                if side == "raw":
                    times["rr"].append(raw_resume(vm))
                else:
                    times["kr"].append(ketch_resume(b))
            log(
                f"suspend run {i + 1}/{args.runs}: suspend raw {times['rs'][-1]:.3f} s, "
                f"ketch {times['ks'][-1]:.3f} s; resume raw {times['rr'][-1]:.3f} s, "
                f"ketch {times['kr'][-1]:.3f} s"
            )
        state = b.ketch_json("info", NAME)["info"][NAME]["state"]
        if state != "Running":
            log(f"warning: {NAME} is {state} after the runs")

    results = {
        "suspend": summary(times["rs"], times["ks"], GOAL),
        "resume": summary(times["rr"], times["kr"], GOAL),
    }
    print_table(
        [
            ("ketch suspend vs QMP save+quit", results["suspend"]),
            ("ketch start vs -loadvm + SSH", results["resume"]),
        ]
    )
    emit("suspend", results, accel=accel)


if __name__ == "__main__":
    main()
