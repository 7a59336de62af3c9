"""``ketch list`` over the TLS listener vs over the Unix socket, in the same run.

One storage root, one ketchd listening on both (``local.address``, a free
port on 127.0.0.1); a second CLI (its own config directory) enrolled with the
passphrase points ``KETCH_SERVER_ADDRESS`` at it.  Alternating (A B, B A ...):

1. ``ketch list --format json`` on the Unix socket (the baseline) and the
   same with ``KETCH_SERVER_ADDRESS`` (the subject: ssl and cryptography-free
   client, a TLS 1.3 handshake with a client certificate, the fingerprint
   pin), with no instances and with 20 stopped ones;
2. the request alone from this process (``Client.get("/v1/instances")``,
   no CLI start-up): the daemon's answer plus the transport.

Also: ``python -c pass`` beside the remote ``list`` (its ratio to a bare
interpreter, as ``bench/list.py`` reports the local one).

Usage: .venv/bin/python bench/api.py [--runs N]
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Any

from common import KETCH, PY, Bench, abab, arg_parser, emit, fresh_bench, log, print_table, summary

PASSPHRASE = "bench passphrase"


def run_time(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_process(env: dict[str, str], root: str) -> float:
    """One GET /v1/instances from this process, with ``env``'s KETCH_SERVER_ADDRESS (or not)."""
    from ketch.client import Client

    saved = {k: os.environ.get(k) for k in ("KETCH_SERVER_ADDRESS", "XDG_CONFIG_HOME")}
    for key in saved:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
    try:
        client = Client(root)
        t0 = time.perf_counter()
        client.get("/v1/instances")
        return time.perf_counter() - t0
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def setup(b: Bench) -> dict[str, str]:
    """Listen on TLS, set the passphrase, enrol a second CLI; that CLI's environment."""
    address = f"127.0.0.1:{free_port()}"
    b.ketch("set", f"local.address={address}")
    b.ketch("set", f"local.passphrase={PASSPHRASE}")
    b.stop_daemon()
    b.ketch("list")  # started again (by the CLI): now it listens on the address too
    remote = {
        **b.env,
        "KETCH_SERVER_ADDRESS": address,
        "XDG_CONFIG_HOME": str(b.root / "remote-config"),
    }
    subprocess.run([*KETCH, "authenticate", PASSPHRASE], env=remote, check=True)
    return remote


def case(b: Bench, remote: dict[str, str], label: str, runs: int) -> dict[str, Any]:
    argv = [*KETCH, "list", "--format", "json"]
    base, subj = abab(
        lambda: run_time(argv, b.env), lambda: run_time(argv, remote), runs, label=label, warmup=1
    )
    return summary(base, subj, None)


def main() -> None:
    args = arg_parser(__doc__, runs=20).parse_args()
    results: dict[str, Any] = {}
    with fresh_bench("kba-") as b:
        b.prime_accel()
        remote = setup(b)
        results["list_0"] = case(b, remote, "list, 0 instances: unix vs tls", args.runs)
        base, subj = abab(
            lambda: in_process(b.env, str(b.root)),
            lambda: in_process(remote, str(b.root)),
            args.runs,
            label="GET /v1/instances in process",
            warmup=2,
        )
        results["request_0"] = summary(base, subj, None)
        base, subj = abab(
            lambda: run_time([PY, "-c", "pass"], b.env),
            lambda: run_time([*KETCH, "list", "--format", "json"], remote),
            args.runs,
            label="python -c pass vs remote list",
            warmup=1,
        )
        results["remote_list_vs_python"] = summary(base, subj, None)
        log("inserting 20 stopped instances (untimed)")
        b.stop_daemon()
        b.add_stopped(20)
        b.ketch("list")  # ketchd started again
        results["list_20"] = case(b, remote, "list, 20 stopped: unix vs tls", args.runs)
    print_table(
        [
            ("list, 0 inst.: unix | tls", results["list_0"]),
            ("list, 20 stopped: unix | tls", results["list_20"]),
            ("GET /v1/instances: unix | tls", results["request_0"]),
            ("python -c pass | remote list", results["remote_list_vs_python"]),
        ]
    )
    emit("api", results)


if __name__ == "__main__":
    main()
