"""Warm launch vs cold launch of an image (tiny, or debian-12), and vs the runtime's own restore.

Three sides, interleaved (the order rotates every run), each an instance of
``--image`` (default tiny) with 1 CPU and ``--memory`` (default 512M), to ready:

* ``warm``: ``ketch launch IMAGE`` with a template there (``ketch image warm``,
  timed once: the template build time);
* ``cold``: ``ketch launch IMAGE --cold``;
* ``restore``: the prototype of issue 16 done by ketch's runtime alone, no CLI,
  daemon, image resolution or seed: ``QemuDriver.start_warm`` (QEMU, state
  loaded, disk grown, the identity handed over) plus SSH answering with the
  pinned key.

Goals: warm / cold <= 0.25; warm / restore <= 1.5.  Then memory: five warm
instances running together vs five cold ones (sum of the QEMUs' PSS, from
/proc/PID/smaps_rollup: shared pages counted once between them).

``--no-timing`` skips the launches' timing (the template and the memory part only);
``--no-memory`` skips the memory part (five cold debian-12 boots take many minutes
under TCG).  debian-12 comes from the test cache, as in ``bench/debian.py``.

Usage: .venv/bin/python bench/warm.py [--runs N] [--memory 512M] [--image debian-12]
[--no-memory | --no-timing]
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from common import Bench, arg_parser, emit, fresh_bench, interleave, log, print_table, summary

from ketch.model import ImageInfo

WARM_GOAL = 0.25
RESTORE_GOAL = 1.5


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise ValueError(f"no Pss for pid {pid}")


def launch(b: Bench, name: str, memory: str, *extra: str, image: str = "tiny") -> float:
    t0 = time.perf_counter()
    done = b.ketch(
        "launch", image, "--name", name, "--memory", memory, "--timeout", "1700", *extra,
        timeout=1800,
    )  # fmt: skip  # a bound against hangs (a cold debian-12 on a busy host), not a target
    took = time.perf_counter() - t0
    said = done.stderr.decode(errors="replace")
    if extra == () and "Launching cold" in said:
        raise RuntimeError(f"a warm launch went cold: {said}")
    return took


def restore(b: Bench, name: str, memory: str, image: ImageInfo) -> float:
    """The runtime's clone start, then SSH with the pinned key (ketch's own ssh argv)."""
    from ketch import cloudinit
    from ketch.host import ssh
    from ketch.layout import Root
    from ketch.model import InstanceSpec
    from ketch.runtime.qemu_driver import QemuDriver
    from ketch.runtime.warm_flavors import guest_of
    from ketch.service import guestlink, template_seed, templates
    from ketch.service import launch as launch_uc
    from ketch.service.units import parse_size

    root = Root(b.root)
    (t,) = [x for x in templates.all_templates_at(root) if x.nics == 0]
    idir = root.instance(name)
    idir.path.mkdir(parents=True)
    spec = InstanceSpec(
        name=name, image=t.image, image_id=t.image_id, release=image.release, cpus=1,
        memory=parse_size(memory, "memory"), disk=t.disk, boot=image.boot,
        base_disk=image.disk, ssh_port=guestlink.free_port(set()),
        mac=launch_uc._random_mac(), instance_id=f"i-{uuid.uuid4().hex[:16]}",
    )  # fmt: skip

    class Ctx:
        pass

    ctx: Any = Ctx()
    ctx.root = root
    launch_uc._write_seed(ctx, spec, cloudinit.parse_user_data("#cloud-config\n"))
    template_seed.pad_seed(idir.seed_iso)
    driver = QemuDriver(None)
    flavor = guest_of(t.image_id)
    assert flavor is not None

    async def go() -> float:
        t0 = time.perf_counter()
        await driver.start_warm(
            spec,
            idir,
            t.tdir,
            accel="tcg",
            template_macs=t.macs,
            clock=time.time,
            grow=spec.disk > t.disk,
            handover_timeout=flavor.handover_seconds,
        )
        from ketch.progress import NULL

        await ssh.wait_ready(guestlink.target(root, spec), timeout=600, reporter=NULL)
        took = time.perf_counter() - t0
        await driver.kill(spec, idir)
        return took

    try:
        return asyncio.run(go())
    finally:
        subprocess.run(["rm", "-rf", str(idir.path)], check=False)


def main() -> None:
    p = arg_parser(__doc__, runs=3)
    p.add_argument("--memory", default="512M")
    p.add_argument("--image", default="tiny", choices=("tiny", "debian-12"))
    p.add_argument("--no-memory", action="store_true", help="skip the 5 warm vs 5 cold part")
    p.add_argument("--no-timing", action="store_true", help="the template and the memory part only")
    args = p.parse_args()
    with fresh_bench("kw-") as b:
        b.ketch("set", "local.network=user")  # the runtime side has no managed network
        b.prime_accel()
        if args.image == "tiny":
            image = b.tiny
        else:
            from debian import debian_image

            image = debian_image(b)
        t0 = time.perf_counter()
        b.ketch("image", "warm", args.image, "--memory", args.memory, timeout=1800)
        build = time.perf_counter() - t0
        log(f"template made in {build:.1f} s")
        n = 0

        def one(side: str) -> float:
            nonlocal n
            n += 1
            name = f"{side}{n}"
            if side == "restore":
                return restore(b, name, args.memory, image)
            cold = ("--cold",) if side == "cold" else ()
            took = launch(b, name, args.memory, *cold, image=args.image)
            b.ketch("delete", "--purge", name)
            return took

        sides = () if args.no_timing else ("warm", "cold", "restore")
        times = (
            interleave(
                {s: (lambda s=s: one(s)) for s in sides},  # type: ignore[misc]
                args.runs,
                label="launch",
            )
            if sides
            else {}
        )
        memory: dict[str, int] = {}
        for side in () if args.no_memory else ("warm", "cold"):
            names = [f"m{side}{i}" for i in range(5)]
            for name in names:
                cold = ("--cold",) if side == "cold" else ()
                launch(b, name, args.memory, *cold, image=args.image)
            pids = [int((b.root / "instances" / nm / "qemu.pid").read_text()) for nm in names]
            memory[side] = sum(pss_kib(pid) for pid in pids)
            log(f"5 {side}: PSS {memory[side] / 1024:.0f} MiB")
            b.ketch("delete", "--purge", *names, timeout=600)
        results: dict[str, object] = {"template_build_s": round(build, 2)}
        if sides:
            results["warm_vs_cold"] = summary(times["cold"], times["warm"], WARM_GOAL)
            results["warm_vs_restore"] = summary(times["restore"], times["warm"], RESTORE_GOAL)
        if memory:
            results["pss_5_warm_mib"] = round(memory["warm"] / 1024, 1)
            results["pss_5_cold_mib"] = round(memory["cold"] / 1024, 1)
        print_table([(k, v) for k, v in results.items() if isinstance(v, dict)])
        emit(
            "warm",
            results,
            image=args.image,
            memory=args.memory,
            runs=args.runs,
            raw=json.dumps(times),
        )


if __name__ == "__main__":
    main()
