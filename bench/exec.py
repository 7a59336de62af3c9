"""``ketch exec`` and ``ketch transfer`` vs plain ``ssh`` to the same guest.

One running tiny instance (launched untimed).  The baseline's ssh command
line is ketch's own: ``ketch.host.ssh.ssh_argv`` with the ``SshTarget`` the
daemon hands out (``GET /v1/instances/NAME/ssh``): same key, pinned host
key, same options, but without the instance's multiplexed connection
(``control_path`` cleared): a plain ``ssh`` that connects, exchanges keys and
authenticates, as any ssh client does.  ``ketch exec`` goes through the
instance's SSH master (``host/ssh/master.py``).  Sides alternate (A B, B A ...).

* exec: ``ketch exec NAME -- true`` vs ``ssh ... true`` (stdin /dev/null,
  so neither asks for a tty).  Goal: <= 0.5x.  For context (no goal), the
  same ``ssh ... true`` through the master's socket: what is left of exec
  once the CLI and the daemon's round trip are taken away.
* upload of a 100 MiB file of random bytes: ``ketch transfer FILE
  NAME:up.bin`` vs ``ssh ... 'cat > raw.bin' < FILE``.
* download: ``ketch transfer NAME:up.bin FILE`` vs ``ssh ... 'cat up.bin' >
  FILE``.

The tiny guest runs dropbear without an sftp server or ``scp`` (the script
checks and reports it), so ``scp``/``sftp`` cannot be the baseline: raw
``ssh`` + ``cat`` is the fair one, and it is what ``ketch transfer`` itself
runs (with a small shell script around ``cat``).  Throughput is reported in
MiB/s; the transfer ratios have no goal.

Usage: .venv/bin/python bench/exec.py [--runs N] [--transfer-runs N]
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from common import (
    abab,
    arg_parser,
    emit,
    fresh_bench,
    log,
    print_table,
    summary,
)

GOAL_EXEC = 0.5
NAME = "e1"
SIZE = 100 * 1024 * 1024


def ssh_time(argv: list[str], *, stdin: Any = subprocess.DEVNULL, stdout: Any = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        argv,
        stdin=stdin,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
    )
    return time.perf_counter() - t0


def make_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(SIZE // (1 << 20)):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def upload_raw(argv_of: Any, src: Path) -> float:
    with src.open("rb") as f:
        return ssh_time(argv_of("cat > raw.bin"), stdin=f)


def download_raw(argv_of: Any, dst: Path) -> float:
    with dst.open("wb") as f:
        return ssh_time(argv_of("cat up.bin"), stdout=f)


def mib_s(summary_: dict[str, Any]) -> tuple[float, float]:
    mib = SIZE / (1 << 20)
    return (
        round(mib / summary_["baseline_median_s"], 1),
        round(mib / summary_["ketch_median_s"], 1),
    )


def main() -> None:
    p = arg_parser(__doc__, runs=10)
    p.add_argument("--transfer-runs", type=int, default=5, help="pairs of transfers (default 5)")
    args = p.parse_args()
    with fresh_bench("kbe-") as b:
        b.prime_accel()
        b.ensure_image()
        log("launching the instance (untimed)")
        b.ketch("launch", "tiny", "--name", NAME, timeout=900)
        from ketch.host.ssh import ssh_argv

        muxed = b.ssh_target(NAME)
        if not muxed.control_path:
            log("warning: the daemon names no SSH master socket for the instance")
        target = muxed.replace(control_path="")  # plain ssh: its own connection

        def argv_of(remote: str) -> list[str]:
            return ssh_argv(target, remote, tty=False, batch=True)

        probe = subprocess.run(
            argv_of(
                "command -v scp sftp-server; ls /usr/lib/openssh/sftp-server "
                "/usr/lib/sftp-server /usr/libexec/sftp-server 2>/dev/null; true"
            ),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=True,
        ).stdout.split()
        log(f"scp/sftp-server in the guest: {probe or 'none'}")

        base, subj = abab(
            lambda: ssh_time(argv_of("true")),
            lambda: b.time_ketch("exec", NAME, "--", "true"),
            args.runs,
            label="exec",
            warmup=1,
        )
        results: dict[str, Any] = {"exec": summary(base, subj, GOAL_EXEC)}
        base_m, subj_m = abab(
            lambda: ssh_time(argv_of("true")),
            lambda: ssh_time(ssh_argv(muxed, "true", tty=False, batch=True)),
            args.runs,
            label="ssh through the master",
            warmup=1,
        )
        results["ssh_via_master"] = summary(base_m, subj_m, None)

        src = b.work / "src.bin"
        digest = make_file(src)
        down_k, down_r = b.work / "down_k.bin", b.work / "down_r.bin"
        base, subj = abab(
            lambda: upload_raw(argv_of, src),
            lambda: b.time_ketch("transfer", str(src), f"{NAME}:up.bin"),
            args.transfer_runs,
            label="upload 100 MiB",
        )
        results["upload_100MiB"] = summary(base, subj, None)
        base, subj = abab(
            lambda: download_raw(argv_of, down_r),
            lambda: b.time_ketch("transfer", f"{NAME}:up.bin", str(down_k)),
            args.transfer_runs,
            label="download 100 MiB",
        )
        results["download_100MiB"] = summary(base, subj, None)
        intact = sha256(down_k) == digest and sha256(down_r) == digest
        if not intact:
            log("warning: a downloaded file differs from the uploaded one")

    for key in ("upload_100MiB", "download_100MiB"):
        raw_rate, ketch_rate = mib_s(results[key])
        results[key]["baseline_mib_s"] = raw_rate
        results[key]["ketch_mib_s"] = ketch_rate
    print_table(
        [
            ("ketch exec -- true vs ssh true", results["exec"]),
            ("ssh true via the master vs ssh true", results["ssh_via_master"]),
            ("transfer up 100 MiB vs ssh cat>", results["upload_100MiB"]),
            ("transfer down 100 MiB vs ssh cat", results["download_100MiB"]),
        ]
    )
    for key in ("upload_100MiB", "download_100MiB"):
        r = results[key]
        print(f"{key}: ssh+cat {r['baseline_mib_s']} MiB/s, ketch {r['ketch_mib_s']} MiB/s")
    emit("exec", results, guest_scp_sftp=probe, transfer_intact=intact)


if __name__ == "__main__":
    main()
