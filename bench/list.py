"""``ketch list --format json`` (0, 1 running, 100 stopped instances) vs ``python -c pass``.

The baseline is the interpreter ketch runs on (this venv's python) doing
nothing: ``python -c pass``.  The subject is the ``ketch`` console script,
``ketch list --format json``, against a daemon that is already running.
Baseline and subject alternate (A B, B A ...).

Cases, one storage root:

1. no instances;
2. one running tiny instance (``ketch launch``; the daemon asks its QEMU
   for its status over QMP);
3. 100 stopped instances: 100 records inserted with ketch's own
   ``Store.add`` (realistic specs: the tiny image, 1 CPU, 1 GiB, 5 GiB disk,
   own port, MAC, instance-id), each with an instance directory holding a
   qcow2 overlay of the tiny image, so the daemon reads 100 real disk headers
   (booting 100 VMs is out of reach here).

Goal: under 5x ``python -c pass``.  Also measured: the import cost of
``ketch.cli.main`` (``python -c "import ketch.cli.main"`` vs ``python -c
pass``, with the heaviest modules from ``-X importtime``), and the daemon's
share (the same GET /v1/instances from this process, no CLI start-up).

Usage: .venv/bin/python bench/list.py [--runs N]
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

from common import (
    KETCH,
    PY,
    Bench,
    abab,
    arg_parser,
    emit,
    fresh_bench,
    log,
    median,
    print_table,
    summary,
)

GOAL = 5.0


def run_time(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def daemon_share(b: Bench, runs: int) -> float:
    """Median seconds of GET /v1/instances from this process (no CLI start-up)."""
    client = b.client()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        client.get("/v1/instances")
        times.append(time.perf_counter() - t0)
    return round(median(times), 4)


def case(b: Bench, label: str, runs: int, expect: int) -> tuple[dict[str, Any], float]:
    listing = b.ketch_json("list")["list"]  # warms the daemon up
    if len(listing) != expect:
        log(f"warning: ketch list shows {len(listing)} instances, expected {expect}")
    base, subj = abab(
        lambda: run_time([PY, "-c", "pass"], b.env),
        lambda: run_time([*KETCH, "list", "--format", "json"], b.env),
        runs,
        label=label,
        warmup=1,
    )
    return summary(base, subj, GOAL), daemon_share(b, runs)


def import_top(env: dict[str, str], n: int = 8) -> list[tuple[str, float]]:
    """The ``n`` heaviest top-level imports of ``ketch list`` (cumulative ms)."""
    script = KETCH[1:] if KETCH[0] == PY else KETCH
    done = subprocess.run(
        [PY, "-X", "importtime", *script, "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) <= 1:  # top level only
            rows.append((m.group(4), int(m.group(2)) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:n]


def main() -> None:
    args = arg_parser(__doc__, runs=20).parse_args()
    results: dict[str, Any] = {}
    daemon: dict[str, float] = {}
    with fresh_bench("kbi-") as b:
        b.prime_accel()
        b.ensure_image()

        results["list_0"], daemon["list_0"] = case(b, "list, 0 instances", args.runs, 0)

        log("launching one instance (untimed)")
        b.ketch("launch", "tiny", "--name", "run1", timeout=900)
        results["list_1_running"], daemon["list_1_running"] = case(
            b, "list, 1 running", args.runs, 1
        )
        b.ketch("delete", "--purge", "run1", timeout=300)

        log("inserting 100 stopped instances (untimed)")
        b.stop_daemon()
        b.add_stopped(100)
        results["list_100_stopped"], daemon["list_100_stopped"] = case(
            b, "list, 100 stopped", args.runs, 100
        )

        base, subj = abab(
            lambda: run_time([PY, "-c", "pass"], b.env),
            lambda: run_time([PY, "-c", "import ketch.cli.main"], b.env),
            args.runs,
            label="import ketch.cli.main",
            warmup=1,
        )
        results["import_cli_main"] = summary(base, subj, None)
        top = import_top(b.env)

    rows = [
        ("list --format json, 0 instances", results["list_0"]),
        ("list --format json, 1 running", results["list_1_running"]),
        ("list --format json, 100 stopped", results["list_100_stopped"]),
        ("python -c 'import ketch.cli.main'", results["import_cli_main"]),
    ]
    print_table(rows)
    print(
        "daemon share (GET /v1/instances in-process, median): "
        + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in daemon.items())
    )
    print(
        "heaviest top-level imports of ketch list (cumulative): "
        + ", ".join(f"{m} {ms:.1f} ms" for m, ms in top)
    )
    emit(
        "list",
        results,
        daemon_request_median_s=daemon,
        import_top_ms=dict(top),
    )


if __name__ == "__main__":
    main()
