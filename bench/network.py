"""Port forwarding: a ketch forward vs a raw QEMU ``hostfwd`` set up by hand on the same guest.

One running tiny VM (1 CPU, 512 MiB) launched by ketch, with busybox
``httpd`` serving a 32 MiB file and a 1-byte file on two guest ports:

* ``ketch``: guest port A, forwarded automatically by ketchd (host port A).
* ``raw``: guest port B, forwarded by this script over QMP with HMP
  ``hostfwd_add`` from a free host port (ketchd sees B listening and
  forwards it too, from another host port; the raw one is used).

Both are QEMU's slirp forwards, so the bytes take the same path: the ratios
say that ketch's forward adds nothing on the data path (goal >= 0.95x, i.e.
ketch/raw time <= 1.05).  Measured, interleaved:

* throughput: GET of the 32 MiB file (seconds for it; MB/s printed);
* connect latency: TCP connect + GET of the 1-byte file + the answer read;
* listen to accept: before the guest listens on port P, this script adds a
  raw forward from a probe port to guest port P by hand; then ``ketch exec
  NAME -- busybox httpd -p P`` while two threads poll, every 5 ms, the probe
  port and host port P (ketch's automatic forward) for an HTTP answer.  The
  probe answers as soon as the guest listens (slirp connects into the guest
  per connection), so the figure is the time from the probe's first answer
  to ketch's.  Goal <= 1.5 s (Lima polls every 3 s).

Usage: .venv/bin/python bench/network.py [--runs N]
"""

from __future__ import annotations

import socket
import threading
import time

from common import Bench, Qmp, arg_parser, emit, fresh_bench, log, print_table, summary

NAME = "net1"
PORT_KETCH = 7811
PORT_RAW = 7812
BIG_MIB = 32
LISTEN_GOAL = 1.5


def get(port: int, path: str) -> int:
    """GET ``path`` from 127.0.0.1:port (HTTP/1.0); bytes of the body and headers read."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"GET /{path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        total = 0
        while chunk := s.recv(1 << 20):
            total += len(chunk)
    return total


def timed_get(port: int, path: str, expect: int) -> float:
    t0 = time.perf_counter()
    got = get(port, path)
    took = time.perf_counter() - t0
    if got < expect:
        raise RuntimeError(f"short read from {port}: {got} < {expect}")
    return took


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, deadline: float = 60.0, poll: float = 0.01) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline:
        try:
            get(port, "one")
            return time.perf_counter() - t0
        except OSError:
            time.sleep(poll)
    raise RuntimeError(f"port {port} never answered")


def hmp(b: Bench, command: str) -> None:
    """An HMP command on the VM's monitor, by hand (ketchd knows nothing of it)."""
    mon = Qmp(b.root / "instances" / NAME / "qmp.sock")
    try:
        reply = mon.execute("human-monitor-command", {"command-line": command})
    finally:
        mon.close()
    if reply and "removed" not in reply:
        raise RuntimeError(f"{command}: {reply}")


def answers(port: int) -> bool:
    """Does 127.0.0.1:port answer HTTP?  (A slirp forward to a guest port nothing listens
    on accepts, then closes: no answer.)"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /one HTTP/1.0\r\nHost: x\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def first_answer(port: int, side: str, seen: dict[str, float], deadline: float = 60) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline:
        if answers(port):
            seen[side] = time.perf_counter()
            return
        time.sleep(0.005)
    raise RuntimeError(f"port {port} never answered")


def main() -> None:
    args = arg_parser(__doc__, runs=5).parse_args()
    with fresh_bench("kbn-") as b:
        accel = b.prime_accel()
        b.ensure_image()
        log("launching the VM (untimed)")
        b.ketch("launch", "tiny", "--name", NAME, "--memory", "512M", timeout=900)
        b.ketch(
            "exec", NAME, "--", "sh", "-c",
            f"mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=1M count={BIG_MIB} "
            f"2>/dev/null && echo x > /tmp/www/one && busybox httpd -p {PORT_KETCH} -h /tmp/www "
            f"&& busybox httpd -p {PORT_RAW} -h /tmp/www",
        )  # fmt: skip
        wait_http(PORT_KETCH)
        raw = free_port()
        hmp(b, f"hostfwd_add net0 tcp:127.0.0.1:{raw}-:{PORT_RAW}")
        wait_http(raw)
        big = BIG_MIB << 20
        timed_get(raw, "big", big), timed_get(PORT_KETCH, "big", big)  # warm both up

        through: dict[str, list[float]] = {"raw": [], "ketch": []}
        connect: dict[str, list[float]] = {"raw": [], "ketch": []}
        for i in range(args.runs):
            order = [("raw", raw), ("ketch", PORT_KETCH)]
            if i % 2:
                order.reverse()
            for side, port in order:
                through[side].append(timed_get(port, "big", big))
            for _ in range(20):
                for side, port in order:
                    connect[side].append(timed_get(port, "one", 1))
            log(
                f"run {i + 1}/{args.runs}: 32 MiB raw {through['raw'][-1]:.3f} s, "
                f"ketch {through['ketch'][-1]:.3f} s"
            )

        listen: list[float] = []
        for i in range(args.runs):
            port, probe = free_port(), free_port()
            hmp(b, f"hostfwd_add net0 tcp:127.0.0.1:{probe}-:{port}")  # before the guest listens
            seen: dict[str, float] = {}
            pollers = [
                threading.Thread(target=first_answer, args=(p, side, seen))
                for side, p in (("raw", probe), ("ketch", port))
            ]
            for t in pollers:
                t.start()
            b.ketch("exec", NAME, "--", "busybox", "httpd", "-p", str(port), "-h", "/tmp/www")
            for t in pollers:
                t.join()
            hmp(b, f"hostfwd_remove net0 tcp:127.0.0.1:{probe}")
            listen.append(seen["ketch"] - seen["raw"])
            log(f"listen run {i + 1}/{args.runs}: {listen[-1]:.3f} s")
    results = {
        "throughput_32MiB": summary(through["raw"], through["ketch"], 1.05),
        "connect_get_1B": summary(connect["raw"], connect["ketch"], 1.05),
        "listen_to_accept": {
            "median_s": round(sorted(listen)[len(listen) // 2], 3),
            "max_s": round(max(listen), 3),
            "runs_s": [round(x, 3) for x in listen],
            "goal_s": LISTEN_GOAL,
            "met": sorted(listen)[len(listen) // 2] <= LISTEN_GOAL,
        },
        "throughput_MBps": {
            side: round(BIG_MIB * 1.048576 / (sorted(v)[len(v) // 2]), 1)
            for side, v in through.items()
        },
    }
    print_table(
        [
            ("GET 32 MiB: forward vs raw hostfwd", results["throughput_32MiB"]),
            ("connect+GET 1 B: forward vs raw", results["connect_get_1B"]),
        ]
    )
    lat = results["listen_to_accept"]
    print(f"guest listen -> host accepts: median {lat['median_s']} s, max {lat['max_s']} s "
          f"(goal <= {LISTEN_GOAL} s: {'met' if lat['met'] else 'MISSED'})")  # fmt: skip
    print(f"throughput MB/s: {results['throughput_MBps']}")
    emit("network", results, accel=accel)


if __name__ == "__main__":
    main()
