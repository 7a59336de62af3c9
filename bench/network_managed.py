"""The managed network (TAP on a bridge) vs user-mode networking, host <-> guest, one guest.

The whole benchmark runs inside a network namespace it makes (``ip netns
add``; the network rule: no bridge, TAP, dnsmasq or NAT in the machine's own
namespace) and removes at the end: the script runs itself again there with
``ip netns exec``, so ketchd, dnsmasq, QEMU and this script's sockets are all
in it.  One tiny VM (1 CPU, 512 MiB) on the managed network, busybox
``httpd`` serving a 32 MiB file and a 1-byte file on one guest port, reached
two ways, interleaved:

* ``user``: the baseline, QEMU user-mode networking (slirp): the port's
  automatic forward on the namespace's ``127.0.0.1``;
* ``managed``: the guest's own address on the managed bridge (its TAP).

Measured: GET of the 32 MiB file (guest -> host throughput), a 32 MiB upload
(host -> guest: the guest's ``nc -l`` writes it to ``/dev/null``) and
connect + GET of the 1-byte file.  The ratio is managed / user (below 1:
the TAP is faster).  The machine's load average is printed with the figures.

Usage: .venv/bin/python bench/network_managed.py [--runs N]
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from typing import Any

from common import arg_parser, emit, fresh_bench, log, print_table, summary

NAME = "netm"
PORT = 7821
UPLOAD_PORT = 7822
BIG_MIB = 32
INSIDE = "--inside-namespace"


def get(host: str, port: int, path: str) -> int:
    with socket.create_connection((host, port), timeout=120) as s:
        s.sendall(f"GET /{path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        total = 0
        while chunk := s.recv(1 << 20):
            total += len(chunk)
    return total


def timed_get(host: str, port: int, path: str, expect: int) -> float:
    t0 = time.perf_counter()
    got = get(host, port, path)
    took = time.perf_counter() - t0
    if got < expect:
        raise RuntimeError(f"short read from {host}:{port}: {got} < {expect}")
    return took


def wait_http(host: str, port: int, deadline: float = 60.0) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline:
        try:
            get(host, port, "one")
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} never answered")


def upload(host: str, port: int) -> float:
    """Seconds to send 32 MiB to the guest's ``nc -l`` (until it has read them all and closed).

    The guest runs ``nc -l`` again and again (see :func:`inside`); a connection
    that lands in the moment between two is tried again.
    """
    block = bytes(1 << 20)
    for _ in range(50):
        try:
            with socket.create_connection((host, port), timeout=120) as s:
                t0 = time.perf_counter()
                for _ in range(BIG_MIB):
                    s.sendall(block)
                s.shutdown(socket.SHUT_WR)
                while s.recv(1 << 16):  # the guest's nc closes once it has read everything
                    pass
                return time.perf_counter() - t0
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no upload to {host}:{port} got through")


def inside() -> None:
    args = arg_parser(__doc__, runs=5).parse_args([a for a in sys.argv[1:] if a != INSIDE])
    os.environ["KETCH_NETWORK_DEFAULT"] = "managed"
    with fresh_bench("kbm-") as b:
        accel = b.prime_accel()
        b.ensure_image()
        b.ketch("set", "local.network=managed")
        log("launching the VM (untimed)")
        b.ketch("launch", "tiny", "--name", NAME, "--memory", "512M", timeout=900)
        ipv4 = b.ketch_json("info", NAME)["info"][NAME]["ipv4"]
        managed = next(a for a in ipv4 if a != "10.0.2.15")
        b.ketch(
            "exec", NAME, "--", "sh", "-c",
            f"mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=1M count={BIG_MIB} "
            f"2>/dev/null && echo x > /tmp/www/one && busybox httpd -p {PORT} -h /tmp/www && "
            f"setsid sh -c 'while :; do nc -l -p {UPLOAD_PORT} >/dev/null; done' "
            "</dev/null >/dev/null 2>&1 &",
        )  # fmt: skip
        sides = {"user": ("127.0.0.1", PORT), "managed": (managed, PORT)}
        for host, port in sides.values():
            wait_http(host, port)
        big = BIG_MIB << 20
        for host, port in sides.values():
            timed_get(host, port, "big", big)  # warm-up
        down: dict[str, list[float]] = {"user": [], "managed": []}
        up: dict[str, list[float]] = {"user": [], "managed": []}
        connect: dict[str, list[float]] = {"user": [], "managed": []}
        for i in range(args.runs):
            order = list(sides.items()) if i % 2 == 0 else list(sides.items())[::-1]
            for side, (host, port) in order:
                down[side].append(timed_get(host, port, "big", big))
            for side, (host, _) in order:
                # the user-mode side: the upload port's automatic forward on 127.0.0.1
                up[side].append(upload(host, UPLOAD_PORT))
            for _ in range(20):
                for side, (host, port) in order:
                    connect[side].append(timed_get(host, port, "one", 1))
            log(
                f"run {i + 1}/{args.runs}: GET 32 MiB user {down['user'][-1]:.3f} s, "
                f"managed {down['managed'][-1]:.3f} s; upload user {up['user'][-1]:.3f} s, "
                f"managed {up['managed'][-1]:.3f} s"
            )
        load = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, Any] = {
        "get_32MiB_guest_to_host": summary(down["user"], down["managed"], None),
        "upload_32MiB_host_to_guest": summary(up["user"], up["managed"], None),
        "connect_get_1B": summary(connect["user"], connect["managed"], None),
        "throughput_MBps": {
            f"{side}_{way}": round(BIG_MIB * 1.048576 / sorted(v)[len(v) // 2], 1)
            for way, table in (("get", down), ("upload", up))
            for side, v in table.items()
        },
        "loadavg_1_5_15": load,
    }
    print_table(
        [
            ("GET 32 MiB: managed vs user-mode", results["get_32MiB_guest_to_host"]),
            ("upload 32 MiB: managed vs user", results["upload_32MiB_host_to_guest"]),
            ("connect+GET 1 B: managed vs user", results["connect_get_1B"]),
        ]
    )
    print(f"throughput MB/s: {results['throughput_MBps']}; load average {load}")
    emit("network_managed", results, accel=accel)


def main() -> None:
    if INSIDE in sys.argv:
        inside()
        return
    ns = f"kbnet-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, *sys.argv, INSIDE], check=False
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
