"""Port forwarding on a real tiny guest, loopback only.

The guest's servers are busybox ``httpd`` (TCP) and ``udhcpd`` (UDP 67, as
root: busybox has no UDP netcat); a datagram that reaches udhcpd makes it log
"packet with bad magic".  Ports are random high ones, so tests running beside
these on the same host do not collide.  Nothing here has a timing threshold:
each wait has a generous deadline, and the latency seen is printed
(``pytest -s``) for the record; ``bench/network.py`` measures it.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ketchcli import Ketch

pytestmark = pytest.mark.vm

DEADLINE = 60.0  # seconds any one wait may take before the test fails


def free_port() -> int:
    for _ in range(100):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port")


def wait_for(what: str, check: Callable[[], Any], deadline: float = DEADLINE) -> float:
    """Poll ``check`` until it is truthy; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {deadline:g} s")


def http_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return bool(r.status)
    except urllib.error.HTTPError:
        return True  # busybox httpd answers 404 for /: it answered
    except OSError:
        return False


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def forwards(ketch: Ketch, name: str) -> list[dict[str, Any]]:
    return list(ketch.json("forwards", name)["forwards"][name])


def auto(ketch: Ketch, name: str, guest_port: int, proto: str = "tcp") -> dict[str, Any] | None:
    for f in forwards(ketch, name):
        if f["type"] == "automatic" and f["guest_port"] == guest_port and f["protocol"] == proto:
            return f
    return None


def serve(ketch: Ketch, name: str, port: int, address: str = "") -> None:
    """busybox httpd on ``[address:]port`` in the guest (its pid in /tmp/httpd.PORT)."""
    where = f"{address}:{port}" if address else str(port)
    ketch.exec(
        name, "sh", "-c",
        f"busybox httpd -f -p {where} -h /tmp </dev/null >/dev/null 2>&1 & "
        f"echo $! > /tmp/httpd.{port}",
    )  # fmt: skip


def unserve(ketch: Ketch, name: str, port: int) -> None:
    ketch.exec(name, "sh", "-c", f"kill $(cat /tmp/httpd.{port})")


EXPLICIT_HOST = free_port()
EXPLICIT_GUEST = 7801


@pytest.fixture(scope="module")
def fvm(ketch: Ketch) -> Iterator[str]:
    """A tiny instance launched with an explicit forward (by flag) and a guest server on it."""
    rule = f"{EXPLICIT_HOST}:{EXPLICIT_GUEST}"
    with ketch.launched("fwd", "--memory", "512M", "--forward", rule) as name:
        serve(ketch, name, EXPLICIT_GUEST)
        yield name


def test_a_guest_server_is_forwarded_and_removed_when_it_stops(ketch: Ketch, fvm: str) -> None:
    port = free_port()
    assert refused(port)
    serve(ketch, fvm, port)
    took = wait_for("the forward", lambda: http_ok(port))
    print(f"\nguest httpd started (exec returned) to host port reachable: {took:.2f} s")
    f = auto(ketch, fvm, port)
    assert f is not None and f["host_address"] == "127.0.0.1" and f["host_port"] == port
    assert f["active"] and f["note"] == ""
    info = ketch.info(fvm)
    assert any(x["guest_port"] == port for x in info["forwards"])
    listed = {e["name"]: e for e in ketch.json("list")["list"]}
    assert any(x["guest_port"] == port for x in listed[fvm]["forwards"])
    assert f"127.0.0.1:{port} -> {port}/tcp (automatic)" in ketch.run("info", fvm).stdout

    unserve(ketch, fvm, port)
    wait_for("the forward's removal", lambda: auto(ketch, fvm, port) is None)
    assert refused(port)


def test_a_taken_host_port_gets_another_and_info_says_which(ketch: Ketch, fvm: str) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        serve(ketch, fvm, port)
        wait_for("the forward", lambda: auto(ketch, fvm, port) is not None)
        f = auto(ketch, fvm, port)
        assert f is not None and f["host_port"] != port
        assert f"host port {port} is taken by another program" in f["note"]
        assert f"forwarded from {f['host_port']} instead" in f["note"]
        assert http_ok(f["host_port"])
    unserve(ketch, fvm, port)
    wait_for("the forward's removal", lambda: auto(ketch, fvm, port) is None)


def test_loopback_only_listeners_are_shown_not_forwarded(ketch: Ketch, fvm: str) -> None:
    port = free_port()
    serve(ketch, fvm, port, "127.0.0.1")
    wait_for("the listener in info", lambda: auto(ketch, fvm, port) is not None)
    f = auto(ketch, fvm, port)
    assert f is not None and f["host_port"] is None and not f["active"]
    assert "bound to the guest's 127.0.0.1 only" in f["note"]
    assert refused(port)
    unserve(ketch, fvm, port)


def test_udp(ketch: Ketch, fvm: str) -> None:
    ketch.exec(
        fvm, "sh", "-c",
        "printf 'interface eth0\\nlease_file /tmp/leases\\n' > /tmp/u.conf; touch /tmp/leases; "
        "sudo -n sh -c 'busybox udhcpd -f /tmp/u.conf > /tmp/udhcpd.log 2>&1 & "
        "echo $! > /tmp/udhcpd.pid'",
    )  # fmt: skip
    wait_for("the UDP forward", lambda: auto(ketch, fvm, 67, "udp") is not None)
    f = auto(ketch, fvm, 67, "udp")
    assert f is not None and f["active"]

    def delivered() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"not dhcp" * 40, ("127.0.0.1", f["host_port"]))
        return "bad magic" in ketch.exec(fvm, "cat", "/tmp/udhcpd.log")

    wait_for("a datagram through the forward", delivered)
    ketch.exec(fvm, "sudo", "-n", "sh", "-c", "kill $(cat /tmp/udhcpd.pid)")
    wait_for("the UDP forward's removal", lambda: auto(ketch, fvm, 67, "udp") is None)


def _explicit(ketch: Ketch, name: str) -> list[dict[str, Any]]:
    return [f for f in forwards(ketch, name) if f["type"] == "explicit"]


def test_explicit_forward_by_flag(ketch: Ketch, fvm: str) -> None:
    wait_for("the explicit forward", lambda: http_ok(EXPLICIT_HOST))
    (f,) = _explicit(ketch, fvm)
    assert (f["host_address"], f["host_port"], f["guest_port"]) == (
        "127.0.0.1", EXPLICIT_HOST, EXPLICIT_GUEST,
    )  # fmt: skip
    assert f["active"]
    # the explicit rule covers the guest port: no automatic forward besides it
    assert auto(ketch, fvm, EXPLICIT_GUEST) is None


def test_explicit_forward_by_command_and_removed(ketch: Ketch, fvm: str) -> None:
    host = free_port()
    out = ketch.run("forward", fvm, f"{host}:{EXPLICIT_GUEST}").stdout
    assert f"Forwarding 127.0.0.1:{host}:{EXPLICIT_GUEST}/tcp" in out
    assert http_ok(host)  # made at once
    assert any(f["host_port"] == host for f in _explicit(ketch, fvm))
    again = ketch.run("forward", fvm, f"{host}:{EXPLICIT_GUEST}")
    assert "Already forwarding" in again.stdout
    clash = ketch.run("forward", fvm, f"{host}:9999", check=False)
    assert clash.returncode != 0 and f"host port {host}/tcp is already forwarded" in clash.stderr
    ketch.run("forward", "--remove", fvm, f"{host}:{EXPLICIT_GUEST}")
    assert refused(host)
    missing = ketch.run("forward", "--remove", fvm, f"{host}:{EXPLICIT_GUEST}", check=False)
    assert missing.returncode == 2 and "has no forward" in missing.stderr


def test_a_taken_explicit_host_port_is_refused_and_nothing_changes(ketch: Ketch, fvm: str) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = ketch.run("forward", fvm, f"{port}:{EXPLICIT_GUEST}", check=False)
    assert done.returncode == 2
    assert f"cannot forward 127.0.0.1:{port}" in done.stderr
    assert all(f["host_port"] != port for f in _explicit(ketch, fvm))


def _all_back(ketch: Ketch, name: str, auto_port: int) -> float:
    return wait_for(
        "the forwards to come back",
        lambda: http_ok(EXPLICIT_HOST) and http_ok(auto_port),
    )


def test_forwards_survive_suspend_resume_restart_and_kill9(ketch: Ketch, fvm: str) -> None:
    port = free_port()
    serve(ketch, fvm, port)
    wait_for("the forward", lambda: http_ok(port))

    ketch.run("suspend", fvm)
    assert refused(port) and refused(EXPLICIT_HOST)
    ketch.run("start", fvm)
    print(f"\nafter resume: {_all_back(ketch, fvm, port):.2f} s")

    ketch.kill_daemon()  # QEMU keeps its forwards; the next daemon reads them back
    assert http_ok(port) and http_ok(EXPLICIT_HOST)  # no daemon at all: bytes go through QEMU
    back = ketch.json("forwards", fvm)["forwards"][fvm]
    assert {(f["host_port"], f["type"]) for f in back if f["active"]} >= {
        (port, "automatic"), (EXPLICIT_HOST, "explicit"),
    }  # fmt: skip

    ketch.run("restart", fvm)  # a new boot: the guest's servers are gone, the rule is not
    serve(ketch, fvm, EXPLICIT_GUEST)
    wait_for("the explicit forward after restart", lambda: http_ok(EXPLICIT_HOST))
    assert auto(ketch, fvm, port) is None
    serve(ketch, fvm, port)
    wait_for("an automatic forward after restart", lambda: http_ok(port))


def test_auto_forward_can_be_turned_off(ketch: Ketch, fvm: str) -> None:
    port = free_port()
    serve(ketch, fvm, port)
    wait_for("the forward", lambda: http_ok(port))
    ketch.run("set", f"local.{fvm}.auto-forward=false")
    try:
        assert ketch.run("get", f"local.{fvm}.auto-forward").stdout.strip() == "false"
        wait_for("the automatic forward's removal", lambda: refused(port))
        assert http_ok(EXPLICIT_HOST)  # explicit forwards stay
        bad = ketch.run("set", f"local.{fvm}.auto-forward=maybe", check=False)
        assert bad.returncode == 1 and "use true or false" in bad.stderr
    finally:
        ketch.run("set", f"local.{fvm}.auto-forward=")
    wait_for("the forward again", lambda: http_ok(port))
    unserve(ketch, fvm, port)


def test_a_watcher_killed_at_any_moment_comes_back(ketch: Ketch, fvm: str) -> None:
    """``kill -9`` of the watcher's ssh as soon as it appears, while its session is
    still being set up on the instance's master (which was handed the ssh's pipes and
    keeps them): each time a new watcher comes, and automatic forwarding still works."""
    from chaos import forward_watchers

    def watcher() -> int | None:
        return forward_watchers(ketch.root).get(fvm)

    killed: set[int] = set()
    for _ in range(6):
        pid: int | None = None

        def fresh() -> bool:
            nonlocal pid
            pid = watcher()
            return pid is not None and pid not in killed

        wait_for("a new forward watcher", fresh)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        time.sleep(random.choice([0.0, 0.3, 1.0]))
    port = free_port()
    serve(ketch, fvm, port)
    print(f"\nforwarded after the kills: {wait_for('the forward', lambda: http_ok(port)):.2f} s")
    unserve(ketch, fvm, port)


def test_list_and_info_show_the_addresses_the_guest_has(ketch: Ketch, fvm: str) -> None:
    """The forward watcher's session also reads the guest's ``/proc/net/fib_trie``: an
    address added in the guest shows in ``list`` and ``info``, and goes when removed."""

    def ipv4() -> list[str]:
        entry = next(i for i in ketch.json("list")["list"] if i["name"] == fvm)
        return list(entry["ipv4"])

    add = "sudo -n ip addr add 10.55.0.9/24 dev eth0"
    ketch.exec(fvm, "sh", "-c", add)
    try:
        wait_for("the added address in list", lambda: ipv4() == ["10.0.2.15", "10.55.0.9"])
        assert ketch.info(fvm)["ipv4"] == ["10.0.2.15", "10.55.0.9"]
        table = ketch.run("info", fvm).stdout.splitlines()
        at = table.index("IPv4:           10.0.2.15")
        assert table[at + 1].strip() == "10.55.0.9"
        bare = ketch.json("list", "--no-ipv4")["list"]  # Multipass's flag: left out
        assert next(i for i in bare if i["name"] == fvm)["ipv4"] == []
    finally:
        ketch.exec(fvm, "sh", "-c", add.replace(" add ", " del "))
    wait_for("the address gone from list", lambda: ipv4() == ["10.0.2.15"])
