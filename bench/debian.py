"""debian-12 launch-to-ready, through SeaBIOS and through UEFI, vs raw QEMU doing the same.

Four sides, interleaved (the order rotates every run), each booting the
built-in debian-12 image (real cloud-init, GRUB, firmware boot) with 1 CPU,
1 GiB and a 5 GiB overlay disk, under whatever accelerator ketch's cached
probe chose (TCG here):

* ``ketch-bios``: ``ketch launch debian-12 --name X``, from the command to its
  exit (SSH with the pinned host key answers and cloud-init's
  ``boot-finished`` exists).  The daemon runs and the image is built.
* ``raw-bios``: the same by hand: ``qemu-img create`` an overlay, the seed ISO
  from ketch's own cloud-init and seed functions, QEMU with
  ``ketch.host.qemu.build_argv``'s argv, then ``ssh ... test -f boot-finished``
  every 0.25 s until it succeeds.
* ``ketch-uefi`` and ``raw-uefi``: the same with ``--firmware uefi``; the raw
  side attaches OVMF as ketch finds it, with a copy of its variable template.

Goal: ketch / raw <= 1.10 for each firmware.  With ``--build``, the time of
one forced build of the image (``build_debian(force=True)``) is reported too.

Usage: .venv/bin/python bench/debian.py [--runs N] [--build]
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from pathlib import Path

from common import (
    Bench,
    RawVm,
    arg_parser,
    emit,
    fresh_bench,
    image_cache,
    interleave,
    log,
    print_table,
    summary,
)

from ketch.images import debian
from ketch.model import BootSpec, ImageInfo

GOAL = 1.10


def debian_image(b: Bench) -> ImageInfo:
    """The debian-12 image from the test cache, linked into the bench's root."""
    built = asyncio.run(debian.build_debian(image_cache()))
    src = Path(built.disk).parent
    dst = b.root / "vault" / "built" / debian.NAME / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=os.link)
    return debian.load_debian(dst)


def ketch_launch(b: Bench, name: str, firmware: str) -> float:
    t0 = time.perf_counter()
    b.ketch("launch", debian.NAME, "--name", name, "--firmware", firmware, timeout=1800)
    elapsed = time.perf_counter() - t0
    b.ketch("delete", "--purge", name, timeout=300)
    return elapsed


def raw_boot(b: Bench, name: str, accel: str, image: ImageInfo, firmware: str) -> float:
    vm = RawVm(b, name, accel=accel, image=image, boot=BootSpec(firmware=firmware))
    try:
        t0 = time.perf_counter()
        vm.create()
        vm.start()
        vm.wait_ssh(timeout=1800, connect_timeout=1)
        return time.perf_counter() - t0
    finally:
        vm.destroy()


def timed_build() -> float:
    t0 = time.perf_counter()
    asyncio.run(debian.build_debian(image_cache(), force=True))
    return time.perf_counter() - t0


def main() -> None:
    parser = arg_parser(__doc__, runs=2)
    parser.add_argument("--build", action="store_true", help="also time one forced build")
    args = parser.parse_args()
    build_s = timed_build() if args.build else None
    if build_s is not None:
        log(f"forced build: {build_s:.1f} s")
    with fresh_bench("kbd-") as b:
        accel = b.prime_accel()
        b.ketch("wait-ready")  # starts the daemon (version never does)
        image = debian_image(b)
        n = itertools.count()
        got = interleave(
            {
                "raw-bios": lambda: raw_boot(b, f"rb{next(n)}", accel, image, "bios"),
                "ketch-bios": lambda: ketch_launch(b, f"kb{next(n)}", "bios"),
                "raw-uefi": lambda: raw_boot(b, f"ru{next(n)}", accel, image, "uefi"),
                "ketch-uefi": lambda: ketch_launch(b, f"ku{next(n)}", "uefi"),
            },
            args.runs,
            label="debian-12",
        )
    results = {
        "bios_launch_vs_raw": summary(got["raw-bios"], got["ketch-bios"], GOAL),
        "uefi_launch_vs_raw": summary(got["raw-uefi"], got["ketch-uefi"], GOAL),
        "uefi_vs_bios_raw": summary(got["raw-bios"], got["raw-uefi"], None),
    }
    print_table(
        [
            ("debian-12 launch vs raw, SeaBIOS", results["bios_launch_vs_raw"]),
            ("debian-12 launch vs raw, UEFI", results["uefi_launch_vs_raw"]),
            ("raw UEFI boot vs raw SeaBIOS boot", results["uefi_vs_bios_raw"]),
        ]
    )
    emit("debian", results, accel=accel, build_s=build_s)


if __name__ == "__main__":
    main()
