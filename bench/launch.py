"""ketch launch-to-ready vs a raw QEMU boot-to-SSH of the same image.

Three sides, interleaved (the order rotates every run), each booting the
built-in tiny image with 1 CPU, 1 GiB and a 5 GiB overlay disk under TCG (or
KVM, whatever ketch's cached probe chose):

* ``ketch``: ``ketch launch tiny --name X``, from the command to its exit
  (it returns once SSH answers and ``boot-finished`` exists).  The daemon is
  already running and the image already built (``ketch image build tiny``
  runs untimed before each launch; a launch that rebuilt anyway is redone).
* ``raw``: what ketch launch does, by hand: ``qemu-img create`` an overlay,
  a host key, the seed ISO from ketch's own cloud-init and seed functions,
  QEMU with ``ketch.host.qemu.build_argv``'s argv, then
  ``ssh ... test -f /var/lib/cloud/instance/boot-finished`` (ketch's ssh
  argv and key, ConnectTimeout 1 s) every 0.25 s until it succeeds.  Its
  QEMU-start-to-SSH part is the image's boot-to-SSH time.
* ``raw+wait_ready``: the same raw VM, but readiness is awaited with ketch's
  own ``ketch.host.ssh.wait_ready``; it separates the cost of ketch's
  readiness probe from the rest of ketch (CLI, daemon, image resolution).

Goal: ketch / raw <= 1.10.  Also reported: the tiny image's files and sizes,
and ketch launch's phases (from its progress lines).

Usage: .venv/bin/python bench/launch.py [--runs N]
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from typing import Any

from common import (
    KETCH,
    Bench,
    RawVm,
    arg_parser,
    emit,
    fresh_bench,
    image_files,
    interleave,
    log,
    median,
    print_table,
    summary,
)

GOAL = 1.10
REBUILD_MARKERS = ("Downloading packages", "Building the", "Unpacking packages")


def ketch_launch(b: Bench, name: str, phases: list[dict[str, float]]) -> float:
    """``ketch launch tiny --name NAME``; returns its wall time; deletes it after."""
    for _attempt in range(3):
        b.ensure_image()
        marks: dict[str, float] = {}
        rebuilt = False
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*KETCH, "launch", "tiny", "--name", name],
            env=b.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        lines = []
        for raw in proc.stderr:
            line = raw.decode(errors="replace").strip()
            now = time.perf_counter() - t0
            lines.append(line)
            rebuilt = rebuilt or any(m in line for m in REBUILD_MARKERS)
            for key, prefix in (
                ("disk", "Preparing disk"),
                ("qemu", "Starting "),
                ("banner", "Waiting for cloud-init"),
            ):
                if line.startswith(prefix) and key not in marks:
                    marks[key] = now
        proc.wait()
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"ketch launch exited {proc.returncode}: {lines[-3:]}")
        b.ketch("delete", "--purge", name, timeout=300)
        if not rebuilt:
            marks["ready"] = elapsed
            phases.append(marks)
            return elapsed
        log(f"{name}: the launch rebuilt the tiny image (ketch's sources changed?); redoing it")
    raise RuntimeError("the tiny image was rebuilt on three launches in a row")


def raw_boot(b: Bench, name: str, accel: str, boot_to_ssh: list[float]) -> float:
    """Overlay + seed + QEMU + ssh poll; returns the whole time, notes QEMU-to-SSH."""
    vm = RawVm(b, name, accel=accel)
    try:
        t0 = time.perf_counter()
        vm.create()
        t1 = time.perf_counter()
        vm.start()
        vm.wait_ssh(connect_timeout=1)
        t2 = time.perf_counter()
    finally:
        vm.destroy()
    boot_to_ssh.append(t2 - t1)
    return t2 - t0


def raw_boot_wait_ready(b: Bench, name: str, accel: str) -> float:
    """The raw VM, readiness awaited by ketch's own wait_ready."""
    from ketch.host import ssh
    from ketch.progress import NULL

    vm = RawVm(b, name, accel=accel)
    try:
        t0 = time.perf_counter()
        vm.create()
        vm.start()
        asyncio.run(ssh.wait_ready(vm.target(), timeout=600, reporter=NULL))
        return time.perf_counter() - t0
    finally:
        vm.destroy()


def main() -> None:
    args = arg_parser(__doc__, runs=5).parse_args()
    with fresh_bench("kbl-") as b:
        accel = b.prime_accel()
        b.ketch("wait-ready")  # starts the daemon (version never does)
        n = itertools.count()
        phases: list[dict[str, float]] = []
        boot: list[float] = []
        got = interleave(
            {
                "raw": lambda: raw_boot(b, f"r{next(n)}", accel, boot),
                "raw+wait_ready": lambda: raw_boot_wait_ready(b, f"w{next(n)}", accel),
                "ketch": lambda: ketch_launch(b, f"l{next(n)}", phases),
            },
            args.runs,
            label="launch",
            warmup=1,
        )
        # The warm-up round's figures are not in ``got``; drop them here too.
        phases, boot = phases[1:], boot[1:]
        files = image_files(b.tiny)

    results = {
        "launch_vs_raw": summary(got["raw"], got["ketch"], GOAL),
        "wait_ready_vs_raw_probe": summary(got["raw"], got["raw+wait_ready"], None),
        "launch_vs_raw_wait_ready": summary(got["raw+wait_ready"], got["ketch"], None),
    }
    phase_medians = {
        k: round(median([p[k] for p in phases if k in p]), 3)
        for k in ("disk", "qemu", "banner", "ready")
    }
    image: dict[str, Any] = {
        "files": files,
        "total_bytes": sum(v for k, v in files.items() if k != "manifest.json"),
        "boot_to_ssh_median_s": round(median(boot), 3),
        "boot_to_ssh_s": [round(x, 3) for x in boot],
    }
    print_table(
        [
            ("ketch launch vs raw boot-to-SSH", results["launch_vs_raw"]),
            ("raw + ketch wait_ready vs raw", results["wait_ready_vs_raw_probe"]),
            ("ketch launch vs raw + wait_ready", results["launch_vs_raw_wait_ready"]),
        ]
    )
    print(
        "ketch launch phases (median s from the command): "
        + ", ".join(f"{k} {v:.2f}" for k, v in phase_medians.items())
    )
    print(
        f"tiny image: {image['total_bytes'] / 1e6:.1f} MB "
        + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in files.items())
        + f"; boot-to-SSH {image['boot_to_ssh_median_s']:.2f} s (median, {accel})"
    )
    emit("launch", results, accel=accel, image=image, ketch_phases_s=phase_medians)


if __name__ == "__main__":
    main()
