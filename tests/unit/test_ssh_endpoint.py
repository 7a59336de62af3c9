"""The SSH endpoint a client gets (``guestlink.endpoint``): the managed address only when
the guest can be reached there, else the loopback port.

Real sockets on 127.0.0.1 for the probe; a sysfs-shaped directory for the TAP.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from test_daemon_api import spec

from ketch.layout import Root
from ketch.runtime.netplan import Nic, write_nic
from ketch.service import guestlink


def test_the_probe_is_a_tcp_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert asyncio.run(guestlink.reachable("127.0.0.1", port))
    assert not asyncio.run(guestlink.reachable("127.0.0.1", port))  # closed: refused


def test_a_tap_counts_when_it_is_on_a_bridge_and_held(tmp_path: Path) -> None:
    tap = tmp_path / "kt-1"
    assert not guestlink.attached("kt-1", tmp_path)  # no such TAP
    tap.mkdir()
    (tap / "carrier").write_text("1\n")
    assert not guestlink.attached("kt-1", tmp_path)  # on no bridge
    (tmp_path / "ketch0").mkdir()
    (tap / "master").symlink_to(tmp_path / "ketch0")
    assert guestlink.attached("kt-1", tmp_path)
    (tap / "carrier").write_text("0\n")  # no QEMU holds it
    assert not guestlink.attached("kt-1", tmp_path)


def test_without_a_lease_or_a_tap_the_endpoint_is_the_loopback_port(tmp_path: Path) -> None:
    root = Root(tmp_path)
    s = spec("web", 42001)
    root.instance("web").path.mkdir(parents=True)
    got = asyncio.run(guestlink.endpoint(root, s))
    assert (got.host, got.port) == ("127.0.0.1", 42001)  # user-mode only: no nic.json
    nic = Nic(tap="kt-nonexistent", mac="52:54:01:00:00:01", ip="10.97.0.2")
    write_nic(root.instance("web"), nic)
    root.network.path.mkdir(parents=True)
    root.network.leases.write_text("0 52:54:01:00:00:01 10.97.0.2 web *\n")
    assert guestlink.leased(root, nic.mac, nic.ip)
    assert not guestlink.leased(root, nic.mac, "10.97.0.3")
    got = asyncio.run(guestlink.endpoint(root, s))  # the TAP is not there: no probe at all
    assert (got.host, got.port) == ("127.0.0.1", 42001)
