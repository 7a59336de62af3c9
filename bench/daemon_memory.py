"""ketchd's resident memory (VmRSS) with 0 and with 10 instances, vs a bare python.

Two storage roots: one empty, one with 10 stopped instances (records inserted
with ketch's ``Store.add`` and a qcow2 overlay disk each, as in
``bench/list.py``).  Each run, in turn:

* ``bare``: this venv's python doing nothing (``python -c`` waiting on
  stdin), its VmRSS read from ``/proc/PID/status`` once it has started;
* ``aiohttp``: the same python after ``import aiohttp.web`` (the daemon's
  web framework), for reference;
* ``ketchd, 0`` / ``ketchd, 10``: the root's daemon is stopped, ``ketch
  list`` starts a fresh one and is answered; then the daemon's VmRSS.

Reported: medians in MiB and the ratio to ``bare``.  No goal is set; the
ratio is the number to watch.

Usage: .venv/bin/python bench/daemon_memory.py [--runs N]
"""

from __future__ import annotations

import subprocess

from common import (
    PY,
    Bench,
    arg_parser,
    emit,
    fresh_bench,
    interleave,
    log,
    median,
    rss_kib,
)

WAIT = "import sys; print('ready', flush=True); sys.stdin.read()"


def python_rss(b: Bench, code: str = "") -> float:
    """VmRSS (KiB) of this venv's python after running ``code``, then waiting."""
    proc = subprocess.Popen(
        [PY, "-c", f"{code}\n{WAIT}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=b.env,
    )
    b.track(proc)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return float(rss_kib(proc.pid))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


def daemon_rss(b: Bench, expect: int) -> float:
    """VmRSS (KiB) of a freshly started ketchd after one ``ketch list``."""
    b.stop_daemon()
    listing = b.ketch_json("list")["list"]
    if len(listing) != expect:
        log(f"warning: ketch list shows {len(listing)} instances, expected {expect}")
    pid = b.daemon_pid()
    assert pid is not None
    return float(rss_kib(pid))


def main() -> None:
    args = arg_parser(__doc__, runs=5).parse_args()
    with fresh_bench("kbm0-") as b0, fresh_bench("kbm10-") as b10:
        b10.add_stopped(10)
        got = interleave(
            {
                "bare": lambda: python_rss(b0),
                "aiohttp": lambda: python_rss(b0, "import aiohttp.web"),
                "ketchd_0": lambda: daemon_rss(b0, 0),
                "ketchd_10": lambda: daemon_rss(b10, 10),
            },
            args.runs,
            warmup=1,
        )
    mib = {k: round(median(v) / 1024, 1) for k, v in got.items()}
    base = median(got["bare"])
    results = {
        k: {
            "rss_median_mib": mib[k],
            "ratio_to_bare": round(median(v) / base, 2),
            "rss_kib": [int(x) for x in v],
        }
        for k, v in got.items()
    }
    print(f"{'process':<12} {'VmRSS':>9} {'ratio':>7}")
    for k, r in results.items():
        print(f"{k:<12} {r['rss_median_mib']:>7.1f}Mi {r['ratio_to_bare']:>7.2f}")
    emit("daemon_memory", results)


if __name__ == "__main__":
    main()
