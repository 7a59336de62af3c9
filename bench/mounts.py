"""Classic mounts: sequential I/O and many small files, vs the guest's disk and raw sshfs.

One running tiny instance (launched untimed) with three directories, each
measured in the guest alternately (A B C, B C A, ...):

* ``classic``: a ketch classic mount (``ketch mount SRC NAME:/mnt/classic``), over
  the instance's virtio-serial port (a new instance; ``info`` says which transport);
* ``sshfs``: the baseline for it: raw ``sshfs`` over a plain ``ssh`` to the same
  guest (ketch's own ssh argv), set up by hand with the same sshfs options,
  served by OpenSSH's ``sftp-server`` on the host (``openssh-sftp-server``; the
  row is skipped when it is not installed);
* ``disk``: the guest's own disk (``/var/tmp/bench``).

Workloads, each a command run in the guest over ssh (its ~0.1 s start-up is in
every time, the same for all three): a sequential write of 256 MiB
(``dd bs=1M conv=fsync``), a sequential read of it (guest page cache dropped
first), and unpacking a tar of 5,000 files of 1 KiB.  Goals (issue 14):
classic >= 0.9x raw sshfs's throughput, i.e. time ratio classic/sshfs <= 1.11;
Multipass's classic mounts run at 0.04x the guest's disk (#1759), ketch's
should be >= 5x that (0.2x the disk), i.e. time ratio classic/disk <= 5.

Usage: .venv/bin/python bench/mounts.py [--runs N] [--workloads write,read,untar]
(without ``write``, the read's 256 MiB files are made untimed: on the host for the
two sshfs directories, with ``dd`` in the guest for its disk)
"""

from __future__ import annotations

import functools
import io
import os
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import arg_parser, emit, fresh_bench, interleave, log, print_table, summary

from ketch.host.sftp.launch import SSHFS_OPTIONS
from ketch.host.ssh import ssh_argv

NAME = "mb1"
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
SIZE_MIB = 256
FILES = 5000
DIRS = {"classic": "/mnt/classic", "sshfs": "/mnt/rawsshfs", "disk": "/var/tmp/bench"}


def make_tar(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(FILES):
            info = tarfile.TarInfo(f"tree/d{i // 100:02d}/f{i:04d}.txt")
            data = os.urandom(512).hex().encode()  # 1 KiB
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def main() -> None:
    p = arg_parser(__doc__, runs=3)
    p.add_argument("--workloads", default="write,read,untar", help="which, comma-separated")
    args = p.parse_args()
    workloads = args.workloads.split(",")
    if not workloads or not set(workloads) <= {"write", "read", "untar"}:
        p.error("--workloads takes write, read and untar, comma-separated")
    with fresh_bench("kbm-") as b:
        b.prime_accel()
        b.ensure_image()
        src = b.work / "share"
        raw = b.work / "raw"
        src.mkdir()
        raw.mkdir()
        log("launching the instance (untimed)")
        b.ketch("launch", "tiny", "--name", NAME, "--memory", "1G", "--disk", "3G", timeout=900)
        b.ketch("mount", str(src), f"{NAME}:{DIRS['classic']}")
        transport = b.ketch_json("info", NAME)["info"][NAME]["mounts"][DIRS["classic"]]["transport"]
        log(f"the classic mount goes over {transport}")
        target = b.ssh_target(NAME)

        def guest(script: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                ssh_argv(target, script, tty=False, batch=True),
                stdin=kw.pop("stdin", subprocess.DEVNULL),
                capture_output=True,
                check=True,
                **kw,
            )

        dirs = dict(DIRS)
        baseline: subprocess.Popen[bytes] | None = None
        if SFTP_SERVER.exists():
            ours, theirs = socket.socketpair()
            server = subprocess.Popen([str(SFTP_SERVER)], stdin=ours.fileno(), stdout=ours.fileno())
            b.track(server)
            remote = (
                f"sudo mkdir -p {dirs['sshfs']} && sudo sshfs -o {','.join(SSHFS_OPTIONS)} "
                f":{raw} {dirs['sshfs']}"
            )
            baseline = subprocess.Popen(
                ssh_argv(target, remote, tty=False, batch=True),
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
            )
            b.track(baseline)
            ours.close()
            theirs.close()
            for _ in range(100):
                if dirs["sshfs"] in guest("cat /proc/mounts").stdout.decode():
                    break
                time.sleep(0.2)
            else:
                raise SystemExit("raw sshfs did not mount")
        else:
            log(f"{SFTP_SERVER} is missing (openssh-sftp-server): no raw sshfs baseline")
            del dirs["sshfs"]
        guest(f"sudo mkdir -p {dirs['disk']} && sudo chown ubuntu: {dirs['disk']}")
        tar = b.work / "tree.tar"
        make_tar(tar)
        with tar.open("rb") as f:
            guest("cat > /var/tmp/tree.tar", stdin=f)

        def timed(script: str) -> float:
            t0 = time.perf_counter()
            guest(script)
            return time.perf_counter() - t0

        def write(d: str) -> float:
            return timed(
                f"dd if=/dev/zero of={d}/big bs=1M count={SIZE_MIB} conv=fsync 2>/dev/null"
            )

        def read(d: str) -> float:
            guest("sync; echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null")
            return timed(f"dd if={d}/big of=/dev/null bs=1M 2>/dev/null")

        def untar(d: str) -> float:
            guest(f"rm -rf {d}/tree")
            return timed(f"tar -xf /var/tmp/tree.tar -C {d}")

        if "read" in workloads and "write" not in workloads:
            for host_dir in (src, raw):
                with (host_dir / "big").open("wb") as out:
                    for _ in range(SIZE_MIB):
                        out.write(os.urandom(2**20))
            guest(f"dd if=/dev/urandom of={dirs['disk']}/big bs=1M count={SIZE_MIB} 2>/dev/null")
        results: dict[str, Any] = {}
        rows = []
        every = {"write": write, "read": read, "untar": untar}
        for label, work in [(k, every[k]) for k in every if k in workloads]:
            sides: dict[str, Callable[[], float]] = {
                k: functools.partial(work, d) for k, d in dirs.items()
            }
            got = interleave(
                sides,
                args.runs,
                label=label,
                warmup=0,
            )
            mib = {k: round(SIZE_MIB / (sum(v) / len(v)), 1) for k, v in got.items()}
            if "sshfs" in got:
                entry = summary(got["sshfs"], got["classic"], 1.11)
                results[f"{label} classic vs raw sshfs"] = entry
                rows.append((f"{label}: classic / raw sshfs", entry))
            entry = summary(got["disk"], got["classic"], 5.0)
            results[f"{label} classic vs guest disk"] = entry
            rows.append((f"{label}: classic / guest disk", entry))
            if label != "untar":
                results[f"{label} MiB/s"] = mib
                log(f"{label} MiB/s: {mib}")
        print_table(rows)
        if baseline is not None:
            guest(f"sudo umount -l {dirs['sshfs']}; true")
        emit(
            "mounts",
            results,
            size_mib=SIZE_MIB,
            files=FILES,
            runs=args.runs,
            transport=transport,
            workloads=workloads,
        )


if __name__ == "__main__":
    main()
