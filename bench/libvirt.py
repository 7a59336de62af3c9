"""ketch on a libvirt host vs ketch's own QEMU driver vs plain virsh: launch, suspend, resume.

One run of the script starts a libvirtd of its own (the tests' ``tests/integration/
libvirtd.py``: a private mount namespace in which no libvirt network can start, QEMU as
root, definitions and logs in the run's directory), a ``dir`` pool ``ketch`` in the
run's directory, and a ketchd with ``host add lv qemu:///system``.  Every VM is the tiny
image under TCG (libvirt's domains are TCG ones), 1 CPU, 1 GiB, user networking, SSH
on loopback.  Three sides, the order rotating each run (``common.interleave``):

* ``qemu``: ketch's QEMU driver (``--cold``: no warm template, as the libvirt driver);
* ``libvirt``: ketch's libvirt driver (``--host lv``);
* ``virsh``: the same domain driven by hand, no ketch: the volumes made and uploaded with
  ``virsh vol-create-as`` / ``vol-upload`` (the overlay on the base volume ketch
  uploaded, the seed, kernel and initrd), the XML ketch's ``domain_xml`` writes,
  ``virsh define`` and ``start``, then ``ssh ... test -f boot-finished`` with ketch's
  argv and key until it succeeds (``common.RawVm.wait_ssh``).  Its seed and keys are made
  before the clock starts (what ketch's launch does there is counted for ketch).

Measured:

* launch to ready: ``ketch launch`` (command to exit: the guest answers SSH and has
  finished booting) vs the virsh sequence above; each VM purged afterwards, untimed;
* suspend: ``ketch suspend`` vs ``virsh managedsave``, of a running VM that booted;
* resume: ``ketch start`` vs ``virsh start`` and the SSH probe.

Ratios are ketch-on-libvirt over plain virsh (the driver's overhead; goal <= 1.10) and
ketch-on-libvirt over ketch's QEMU driver (what a user trades by choosing a libvirt
host; no goal).

Usage: .venv/bin/python bench/libvirt.py [--runs N]   (root, libvirt-daemon-system)

Run as a script, this file is ``libvirt`` on its own ``sys.path`` (``bench/`` comes
first), so it must never load the libvirt binding in-process: ketchd and ``virsh``, which
do the libvirt calls, are other processes.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import Bench, RawVm, arg_parser, emit, free_port, interleave, log, print_table, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from libvirtd import AS_ROOT, STATE, Libvirtd, exclusive, virsh

from ketch.model import InstanceSpec
from ketch.runtime.libvirt_xml import Volumes, domain_name, domain_xml

GOAL = 1.10
MEMORY = "1G"
GIB = 1024**3
LAUNCH_TIMEOUT = 900


class VirshVm:
    """The tiny image as a libvirt domain made and driven with virsh alone."""

    def __init__(self, b: Bench, name: str, pool: Path, base: str) -> None:
        self.b, self.name, self.pool, self.base = b, name, pool, base
        self.raw = RawVm(b, name, accel="tcg", memory=GIB)  # its keys, seed and SSH probe
        self.domain = domain_name(name)
        self.volumes = {
            "disk": f"{name}.qcow2",
            "seed": f"{name}-seed.iso",
            "kernel": f"{name}.kernel",
            "initrd": f"{name}.initrd",
        }

    def prepare(self) -> None:
        """Untimed: the seed ISO and keys (as ketch's launch makes them), a free port."""
        self.raw.create()
        self.raw.port = free_port()

    def _upload(self, vol: str, path: Path) -> None:
        size = str(path.stat().st_size)
        virsh("vol-create-as", "ketch", vol, size, "--format", "raw")
        virsh("vol-upload", "--pool", "ketch", vol, str(path))

    def launch(self) -> float:
        t0 = time.perf_counter()
        tiny = self.b.tiny
        virsh(
            "vol-create-as", "ketch", self.volumes["disk"], "5G", "--format", "qcow2",
            "--backing-vol", self.base, "--backing-vol-format", "qcow2",
        )  # fmt: skip
        self._upload(self.volumes["seed"], self.raw.dir / "cidata.iso")
        assert tiny.boot.kernel and tiny.boot.initrd
        self._upload(self.volumes["kernel"], Path(tiny.boot.kernel))
        self._upload(self.volumes["initrd"], Path(tiny.boot.initrd))
        xml = self.raw.dir / "domain.xml"
        xml.write_text(self.xml())
        virsh("define", str(xml))
        virsh("start", self.domain)
        self.raw.wait_ssh()
        return time.perf_counter() - t0

    def xml(self) -> str:
        tiny = self.b.tiny
        spec = InstanceSpec(
            name=self.name, image="tiny", image_id=tiny.id, release=tiny.release, cpus=1,
            memory=GIB, disk=5 * GIB, boot=tiny.boot, base_disk=tiny.disk,
            ssh_port=self.raw.port, mac=self.raw.mac, instance_id=f"i-{uuid.uuid4().hex[:16]}",
        )  # fmt: skip
        at = {k: str(self.pool / v) for k, v in self.volumes.items()}
        vols = Volumes(disk=at["disk"], seed=at["seed"], kernel=at["kernel"], initrd=at["initrd"])
        return domain_xml(spec, vols, kvm=False, user_net=True)

    def suspend(self) -> float:
        t0 = time.perf_counter()
        virsh("managedsave", self.domain)
        return time.perf_counter() - t0

    def resume(self) -> float:
        t0 = time.perf_counter()
        virsh("start", self.domain)
        self.raw.wait_ssh()
        return time.perf_counter() - t0

    def remove(self) -> None:
        virsh("destroy", self.domain, check=False)
        virsh("undefine", self.domain, "--managed-save", check=False)
        for vol in self.volumes.values():
            virsh("vol-delete", "--pool", "ketch", vol, check=False)
        self.raw.destroy()


def base_volume() -> str:
    listed = virsh("vol-list", "--pool", "ketch").stdout.split()
    (base,) = [v for v in listed if v.startswith("base-")]
    return base


def measure(b: Bench, pool: Path, runs: int) -> dict[str, Any]:
    b.ketch("host", "add", "lv", "qemu:///system")
    log("booting the VMs kept for suspend/resume (untimed)")
    b.ketch("launch", "tiny", "--name", "qk", "--cold", "--memory", MEMORY, timeout=LAUNCH_TIMEOUT)
    b.ketch(
        "launch", "tiny", "--name", "lk", "--host", "lv", "--memory", MEMORY,
        timeout=LAUNCH_TIMEOUT,
    )  # fmt: skip
    base = base_volume()  # uploaded by ketch; the virsh side's overlays use it too
    kept = VirshVm(b, "vk", pool, base)
    kept.prepare()
    kept.launch()
    count = iter(range(1, 10_000))

    def ketch_launch(*extra: str) -> float:
        name = f"{'q' if '--cold' in extra else 'l'}{next(count)}"
        took = b.time_ketch(
            "launch", "tiny", "--name", name, "--memory", MEMORY, *extra, timeout=LAUNCH_TIMEOUT
        )
        b.ketch("delete", "--purge", name, timeout=300)
        return took

    def virsh_launch() -> float:
        vm = VirshVm(b, f"v{next(count)}", pool, base)
        vm.prepare()
        try:
            return vm.launch()
        finally:
            vm.remove()

    launch = interleave(
        {
            "qemu": lambda: ketch_launch("--cold"),
            "libvirt": lambda: ketch_launch("--host", "lv"),
            "virsh": virsh_launch,
        },
        runs, label="launch", warmup=1,
    )  # fmt: skip
    suspend: dict[str, list[float]] = {"qemu": [], "libvirt": [], "virsh": []}
    resume: dict[str, list[float]] = {"qemu": [], "libvirt": [], "virsh": []}
    sides: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {
        "qemu": (lambda: b.time_ketch("suspend", "qk"), lambda: b.time_ketch("start", "qk")),
        "libvirt": (lambda: b.time_ketch("suspend", "lk"), lambda: b.time_ketch("start", "lk")),
        "virsh": (kept.suspend, kept.resume),
    }
    for name, (down, up) in sides.items():  # one untimed cycle each
        down(), up()
        log(f"warm-up suspend/resume of {name} done")
    names = list(sides)
    for i in range(runs):
        order = names[i % 3 :] + names[: i % 3]
        for name in order:
            suspend[name].append(sides[name][0]())
        for name in order:
            resume[name].append(sides[name][1]())
        log(
            f"suspend/resume run {i + 1}/{runs}: "
            + ", ".join(f"{n} {suspend[n][-1]:.2f}/{resume[n][-1]:.2f} s" for n in names)
        )
    kept.remove()
    return {
        f"{what}_vs_{base_side}": summary(
            got[base_side], got["libvirt"], GOAL if base_side == "virsh" else None
        )
        for what, got in (("launch", launch), ("suspend", suspend), ("resume", resume))
        for base_side in ("virsh", "qemu")
    }


def main() -> None:
    args = arg_parser(__doc__, runs=3).parse_args()
    with exclusive():  # no libvirtd of the tests' at the same time
        work = Path(tempfile.mkdtemp(prefix="kbl-lv-", dir="/tmp"))
        pool = work / "pool"
        pool.mkdir()
        lv = Libvirtd(work, qemu_conf=AS_ROOT, private=STATE)
        b = Bench("kbl-")
        try:
            lv.start()
            virsh("pool-define-as", "ketch", "dir", "--target", str(pool))
            virsh("pool-start", "ketch")
            b.prime_accel()
            b.ketch("set", "local.accel=tcg")  # libvirt's domains are TCG: like for like
            results = measure(b, pool, args.runs)
        finally:
            b.close()  # ketch's instances (and their domains) before libvirtd goes
            virsh("pool-destroy", "ketch", check=False)
            virsh("pool-undefine", "ketch", check=False)
            lv.stop()
            shutil.rmtree(work, ignore_errors=True)
    print_table(list(results.items()))
    emit("libvirt", results, accel="tcg")


if __name__ == "__main__":
    main()
