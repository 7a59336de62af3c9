"""Chaos run: a long seeded random walk of ketch operations and faults over real VMs.

The walk is ``tests/integration/chaos.py`` (the engine CI runs in short
walks); this runs one long walk and prints a JSON summary on stdout, as one
line (``| python3 -m json.tool`` to read it): steps run, operations per
kind, faults injected per class, invariant violations (each with seed and
step; known ketch bugs labelled), what ``doctor --fix`` and ketchd's
start-up recovery repaired, the exit-code histogram and durations.  The
step log goes to stderr (and to ``--log``).

Needs root (it mounts a tmpfs for its storage root, to fill the disk on
purpose) and QEMU.  A failing walk is replayed with the same ``--seed``,
``--steps``, ``--vms`` and ``--doctor-every``::

    .venv/bin/python bench/chaos.py --seed 1 --steps 200 --vms 3

Exit status: 0 when no unknown violation was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _engine() -> Any:
    """tests/integration/chaos.py, loaded under its own name (this file is also 'chaos')."""
    path = REPO / "tests" / "integration" / "chaos.py"
    # it imports tests/db_damage.py and tests/integration/chaos_*.py, as under pytest
    for where in (REPO / "tests", REPO / "tests" / "integration"):
        if str(where) not in sys.path:
            sys.path.insert(0, str(where))
    spec = importlib.util.spec_from_file_location("ketch_chaos_engine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tiny_image_dir() -> Path:
    """The built tiny image in the test cache ($KETCH_TEST_CACHE or ~/.cache/ketch-test/images)."""
    from ketch.images.tiny import build_tiny

    cache = Path(os.environ.get("KETCH_TEST_CACHE") or "~/.cache/ketch-test/images").expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    return Path(asyncio.run(build_tiny(cache)).disk).parent


# How each fault class's injection is logged (a walk's log, for --count-log).
FAULT_LINES = (
    (re.compile(r"FAULT kill -9 QEMU of "), "kill-qemu"),
    (re.compile(r"FAULT kill -9 ketchd \(pid \d+\) between"), "kill-daemon"),
    (re.compile(r"FAULT kill -9 ketchd \(pid \d+\) [\d.]+s into"), "kill-daemon-mid-op"),
    (re.compile(r"FAULT removed the 'suspend' tag"), "tag-remove"),
    (re.compile(r"FAULT added the 'suspend' tag"), "tag-add"),
    (re.compile(r"FAULT \S+'s qemu\.pid names a live sleep"), "foreign-pid"),
    (re.compile(r"FAULT deleted the QMP socket"), "qmp-socket"),
    (re.compile(r"FAULT kill -9 the forward watcher"), "kill-forward-watcher"),
    (re.compile(r"FAULT filled the storage root"), "disk-full"),
    (re.compile(r"FAULT kill -STOP QEMU"), "freeze-qemu"),
    (re.compile(r"FAULT ketch\.db "), "damage-db"),
    (re.compile(r"FAULT simulated host reboot"), "host-reboot"),
    (re.compile(r"FAULT moved the base image"), "base-image-away"),
    (re.compile(r"FAULT download of .* cut off"), "kill-download"),
    (re.compile(r"FAULT kill -9 the mount supervisor"), "kill-mount-host"),
    (re.compile(r"FAULT removed \S+'s share"), "mount-source-gone"),
    (re.compile(r"FAULT suspend and resume \S+ with its mount"), "suspend-with-mounts"),
    (re.compile(r"FAULT damaged the template "), "template-damage"),
    (re.compile(r"FAULT removed the template "), "template-away"),
)
WARM_TMPFS = "1200M"  # a warm walk's root also holds a template (its memory file: MEMORY)
STEP = re.compile(r"chaos seed=(\d+) step=(-?\d+): ")


def count_log(path: Path) -> dict[str, Any]:
    """What a walk's log says so far (for a walk still running): steps, faults, violations."""
    faults: dict[str, int] = {}
    seeds: set[str] = set()
    last, violations, checkpoints = -1, [], 0
    for line in path.read_text(errors="replace").splitlines():
        m = STEP.search(line)
        if m is None:
            continue
        seeds.add(m.group(1))
        last = max(last, int(m.group(2)))
        rest = line[m.end() :]
        if rest.startswith("VIOLATION "):
            violations.append(rest[len("VIOLATION ") :][:300])
        elif rest.startswith("checkpoint ") and " done (" in rest:
            checkpoints += 1
        elif rest.startswith("FAULT ") and not rest.startswith("FAULT (not done)"):
            kind = next((k for rx, k in FAULT_LINES if rx.match(rest)), None)
            kind = kind or "other: " + " ".join(rest.split()[1:4])
            faults[kind] = faults.get(kind, 0) + 1
    return {
        "log": str(path),
        "seeds": sorted(seeds),
        "last_step_seen": last,
        "faults": dict(sorted(faults.items())),
        "faults_total": sum(faults.values()),
        "checkpoints": checkpoints,
        "violations": violations,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    p.add_argument("--steps", type=int, default=200, help="steps of the walk (default 200)")
    p.add_argument("--vms", type=int, default=3, help="instances kept alive (default 3)")
    p.add_argument(
        "--doctor-every", type=int, default=10, help="run 'doctor --fix' every N steps (10)"
    )
    p.add_argument(
        "--fault-rate", type=float, default=0.4, help="share of steps that inject a fault (0.4)"
    )
    p.add_argument(
        "--boot-on-full-disk",
        action="store_true",
        help="let the step after a disk-full fault boot a guest (it pauses on its first "
        "write and the boot waits its whole timeout: known bugs io-error-is-not-halted, "
        "wait-ready-blind)",
    )
    p.add_argument(
        "--faults",
        type=lambda text: tuple(f for f in text.split(",") if f),
        default=(),
        help="only these fault classes, comma-separated (default: every one)",
    )
    p.add_argument(
        "--count-log",
        type=Path,
        metavar="LOG",
        help="only count what the walk logged in LOG so far (faults per class, last step, "
        "violations) and print it as JSON: for a long walk still running",
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="make a warm-launch template first (launches start warm) and add the "
        "template faults (template-damage, template-away); a larger tmpfs",
    )
    p.add_argument("--log", type=Path, help="also write the step log to this file")
    args = p.parse_args(argv)
    if args.count_log is not None:
        print(json.dumps(count_log(args.count_log)))
        return 0
    if os.geteuid() != 0:
        print("bench/chaos.py needs root (it mounts a tmpfs)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    engine = _engine()
    logfile = args.log.open("a") if args.log else None

    def log(line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, file=sys.stderr, flush=True)
        if logfile is not None:
            print(stamped, file=logfile, flush=True)

    config = engine.Config(
        seed=seed,
        steps=args.steps,
        vms=args.vms,
        doctor_every=args.doctor_every,
        fault_rate=args.fault_rate,
        boot_on_full_disk=args.boot_on_full_disk,
        faults=args.faults,
        warm=args.warm,
        **({"tmpfs_size": WARM_TMPFS} if args.warm else {}),
    )
    unknown = set(config.faults) - set(engine.FAULTS) - set(engine.chaos_warm.FAULTS)
    if unknown:
        print(f"no such fault class: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    try:
        summary = engine.run_walk(config, _tiny_image_dir(), log=log)
    finally:
        if logfile is not None:
            logfile.close()
    summary = {
        "bench": "chaos",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **summary,
    }
    summary["host"] = {
        "cpus": os.cpu_count(),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(summary), flush=True)  # one line, like every bench/ script
    return 0 if summary["unknown_violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
