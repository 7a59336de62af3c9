"""Native (virtiofs) mounts vs the guest's own disk, inside one tiny guest.

One tiny VM (1 CPU, 1 GiB, a 3 GiB disk) with a native mount of a host
directory at ``/mnt/host`` (``ketch mount -t native`` while it is stopped;
``ketch start`` attaches and mounts it).  Each run does,
on the mount and in the guest user's home (its own disk), the order
alternating between runs, timed inside the guest (``/proc/uptime``, 10 ms):

* write: ``dd if=/dev/zero of=DIR/big bs=1M count=256 conv=fsync``;
* read: the guest's page cache dropped, ``dd if=DIR/big of=/dev/null bs=1M``;
* small files: ``tar -xf`` of a tree of 5,000 files of 1 KiB (in 50
  directories, copied into the guest beforehand), then ``sync``.

Goal: native >= 0.5x the guest's own disk for sequential I/O, i.e. the time
ratio native / disk <= 2.0 (the small-file figure is reported, no goal).

Usage: .venv/bin/python bench/mounts_native.py [--runs N]
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from typing import Any

from common import Bench, arg_parser, emit, fresh_bench, interleave, log, print_table, summary

GOAL = 2.0  # time ratio native / disk (throughput >= 0.5x)
NAME = "nm1"
TARGET = "/mnt/host"
HOME = "/home/ubuntu/bench"
FILES, DIRS, SIZE = 5000, 50, 1024

# sh -c SCRIPT sh DIR: run the body, print the seconds it took (from /proc/uptime).
TIMED = (
    'd=$1; t0=$(cut -d" " -f1 /proc/uptime); {body}; '
    't1=$(cut -d" " -f1 /proc/uptime); echo "$t0 $t1"'
)
WRITE = "rm -f $d/big; sync; dd if=/dev/zero of=$d/big bs=1M count=256 conv=fsync 2>/dev/null"
READ = "dd if=$d/big of=/dev/null bs=1M 2>/dev/null"
UNTAR = "rm -rf $d/tree; mkdir -p $d/tree; tar -xf /home/ubuntu/tree.tar -C $d/tree; sync"


def tree_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(FILES):
            info = tarfile.TarInfo(f"d{i % DIRS:02d}/f{i:05d}")
            info.size = SIZE
            tar.addfile(info, io.BytesIO(bytes([i % 251]) * SIZE))
    return out.getvalue()


def in_guest(b: Bench, body: str, where: str, *, root: bool = False) -> float:
    script = TIMED.format(body=body)
    argv = ["exec", NAME, "--", *(["sudo", "-n"] if root else []), "sh", "-c", script, "sh", where]
    done = b.ketch(*argv, timeout=1800)
    t0, t1 = map(float, done.stdout.decode().split())
    return t1 - t0


def drop_caches(b: Bench) -> None:
    b.ketch("exec", NAME, "--", "sudo", "-n", "sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches")


def runner(b: Bench, label: str, body: str, where: str) -> Callable[[], float]:
    def side() -> float:
        if label == "read":
            drop_caches(b)
        return in_guest(b, body, where)

    return side


def main() -> None:
    args = arg_parser(__doc__, runs=3).parse_args()
    with fresh_bench("kbn-") as b:
        accel = b.prime_accel()
        b.ensure_image()
        log("launching the VM, mounting natively, restarting (untimed)")
        b.ketch("launch", "tiny", "--name", NAME, "--memory", "1G", "--disk", "3G", timeout=900)
        source = b.work / "share"
        source.mkdir()
        source.chmod(0o777)  # the guest's user writes here
        b.ketch("stop", NAME)
        b.ketch("mount", "-t", "native", str(source), f"{NAME}:{TARGET}")
        b.ketch("start", NAME, timeout=900)
        mounted = b.ketch("exec", NAME, "--", "cat", "/proc/mounts").stdout.decode()
        if f" {TARGET} virtiofs " not in mounted:
            raise SystemExit(f"the native mount is not at {TARGET} after start:\n{mounted}")
        tar = b.work / "tree.tar"
        tar.write_bytes(tree_tar())
        b.ketch("transfer", str(tar), f"{NAME}:/home/ubuntu/tree.tar", timeout=900)
        b.ketch("exec", NAME, "--", "mkdir", "-p", HOME)
        places = {"disk": HOME, "native": TARGET}
        results: dict[str, dict[str, Any]] = {}
        for label, body in (("write", WRITE), ("read", READ), ("small_files", UNTAR)):
            sides = {name: runner(b, label, body, where) for name, where in places.items()}
            got = interleave(sides, args.runs, label=label)
            sequential = label != "small_files"
            results[label] = summary(got["disk"], got["native"], GOAL if sequential else None)
            if sequential:
                mib_s = {k: round(256 / min(v), 1) for k, v in got.items()}
                results[label]["best_mib_s"] = mib_s
                results[label]["throughput_ratio"] = round(mib_s["native"] / mib_s["disk"], 3)
        for place in places.values():
            b.ketch("exec", NAME, "--", "rm", "-rf", f"{place}/big", f"{place}/tree", check=False)

    print_table(
        [
            ("256 MiB write: disk vs native", results["write"]),
            ("256 MiB read: disk vs native", results["read"]),
            ("5,000 files untar: disk vs native", results["small_files"]),
        ]
    )
    emit("mounts_native", results, accel=accel, baseline="the guest's own disk", subject="native")


if __name__ == "__main__":
    main()
