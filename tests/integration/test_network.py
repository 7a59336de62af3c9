"""The managed network on real VMs, inside a network namespace this module makes.

The network rule: every bridge, TAP, dnsmasq and NAT table is made inside
``ketchtest-<hex>``, a namespace the fixture creates (``ip netns add``), with
the CLI, ketchd and QEMU all started in it (``ip netns exec``), and removes at
the end, on failure too.  Nothing of it is ever in the machine's own namespace:
the fixture checks that the root namespace's links are the same before and after.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import _seed_vault
from ketchcli import Ketch

from ketch.host import procs
from ketch.model import ImageInfo

pytestmark = pytest.mark.vm


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {d["ifname"] for d in json.loads(out.stdout)}


class NsKetch(Ketch):
    """The CLI (so ketchd, so QEMU) run inside the network namespace ``ns``."""

    def __init__(self, root: Path, ns: str) -> None:
        super().__init__(root)
        self.ns = ns
        self.prefix = ["ip", "netns", "exec", ns]

    def ns_run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A program in the namespace (the "host side" of the managed network)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def banner(self, address: str, port: int = 22) -> str:
        """What a TCP server at ``address:port`` says first, connecting from the namespace."""
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(({address!r},{port}),timeout=10)\n"
            "sys.stdout.write(s.recv(64).decode('latin-1'))\n"
        )
        return self.ns_run(sys.executable, "-c", code).stdout


@pytest.fixture(scope="module")
def nsk(tiny_image: ImageInfo) -> Iterator[NsKetch]:
    if shutil.which("dnsmasq") is None or shutil.which("nft") is None:
        pytest.skip("dnsmasq and nft are needed (scripts/install)")
    before = _root_links()
    ns = f"ketchtest-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    root = Path(tempfile.mkdtemp(prefix="ketch-net-", dir="/tmp"))
    k = NsKetch(root, ns)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        _seed_vault(root, tiny_image)
        k.run("set", "local.network=managed")
        yield k
    finally:
        try:
            k.teardown()
        finally:
            _end_dnsmasq(root)
            subprocess.run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(root, ignore_errors=True)
    assert _root_links() == before, "the test left an interface in the root namespace"


def _end_dnsmasq(root: Path) -> None:
    pid = procs.read_pidfile(root / "network" / "dnsmasq.pid")
    argv = procs.cmdline(pid) if pid else None
    if pid and argv and f"--dhcp-leasefile={root}/network/dnsmasq.leases" in argv:
        procs.terminate(pid, expect=argv)


def managed_ip(k: Ketch, name: str) -> str:
    """The managed address: first in ``info``'s ipv4 list, the user-mode one after it
    (then any other NIC's the guest has)."""
    ipv4 = k.info(name)["ipv4"]
    assert len(ipv4) >= 2 and ipv4[1] == "10.0.2.15", ipv4
    return str(ipv4[0])


def guest_addrs(k: Ketch, name: str) -> set[str]:
    out = k.exec(name, "ip", "-4", "-o", "addr", "show")
    return {line.split()[3].split("/")[0] for line in out.splitlines() if " inet " in line}


def test_two_instances_reach_each_other_and_keep_their_addresses(nsk: NsKetch) -> None:
    with (
        nsk.launched("na", "--memory", "512M") as a,
        nsk.launched("nb", "--memory", "512M") as b,
    ):
        ip_a, ip_b = managed_ip(nsk, a), managed_ip(nsk, b)
        assert ip_a != ip_b
        state: dict[str, Any] = json.loads((nsk.root / "network" / "network.json").read_text())
        subnet = ipaddress.IPv4Network(state["subnet"])
        gateway = str(subnet.network_address + 1)
        assert ipaddress.IPv4Address(ip_a) in subnet and ipaddress.IPv4Address(ip_b) in subnet
        # the guest itself has the address ketch shows (cross-check)
        assert ip_a in guest_addrs(nsk, a) and ip_b in guest_addrs(nsk, b)
        # the host side reaches each guest on its address, and each guest the other and the bridge
        assert nsk.banner(ip_a).startswith("SSH-2.0-")
        assert nsk.banner(ip_b).startswith("SSH-2.0-")
        assert "SSH-2.0-" in nsk.exec(a, "sh", "-c", f"echo | nc -w 5 {ip_b} 22 | head -c 8")
        nsk.exec(b, "sudo", "ping", "-c", "1", "-W", "5", ip_a)
        nsk.exec(a, "sudo", "ping", "-c", "1", "-W", "5", gateway)
        listed = {e["name"]: e["ipv4"] for e in nsk.json("list")["list"]}
        assert listed[a][0] == ip_a and listed[b][0] == ip_b

        nsk.run("stop", a)
        assert nsk.info(a)["ipv4"] == []
        nsk.run("start", a)
        assert managed_ip(nsk, a) == ip_a and ip_a in guest_addrs(nsk, a)

        nsk.run("suspend", b)
        nsk.run("start", b)
        assert managed_ip(nsk, b) == ip_b
        assert nsk.banner(ip_b).startswith("SSH-2.0-")  # the resumed guest is reachable again

        nsk.run("stop", a)
        clone = f"{a}-c"
        nsk.run("clone", a, "--name", clone)
        try:
            nsk.run("start", clone)
            ip_c = managed_ip(nsk, clone)
            assert ip_c not in (ip_a, ip_b) and ip_c in guest_addrs(nsk, clone)
        finally:
            nsk.run("delete", "--purge", clone, check=False)
    # the last instance purged takes the network with it
    links = json.loads(nsk.ns_run("ip", "-j", "link", "show").stdout)
    assert [d["ifname"] for d in links] == ["lo"]
    assert not (nsk.root / "network").exists()


def doctor(k: Ketch, *args: str) -> tuple[int, set[str]]:
    done = k.run("doctor", *args, "--format", "json", check=False)
    return done.returncode, {f["code"] for f in json.loads(done.stdout)["findings"]}


def test_doctor_and_the_next_start_make_a_broken_network_again(nsk: NsKetch) -> None:
    with nsk.launched("nd", "--memory", "512M") as a:
        ip_a = managed_ip(nsk, a)
        assert doctor(nsk) == (0, set())
        # a dead dnsmasq, a stale TAP (as after a crash)
        pid = procs.read_pidfile(nsk.root / "network" / "dnsmasq.pid")
        assert pid is not None
        nsk.ns_run("kill", "-9", str(pid))
        nsk.ns_run("ip", "tuntap", "add", "dev", "kt-0000000000", "mode", "tap")
        rc, found = doctor(nsk)
        assert rc == 2 and found == {"network-dnsmasq-dead", "network-stale-tap"}
        rc, found = doctor(nsk, "--fix")
        assert doctor(nsk) == (0, set())
        assert "kt-0000000000" not in nsk.ns_run("ip", "-br", "link").stdout
        # the guest renews its lease from the new dnsmasq: same address
        nsk.exec(a, "sudo", "sh", "-c", "kill -USR1 $(cat /run/udhcpc.eth1.pid)")
        assert managed_ip(nsk, a) == ip_a and nsk.banner(ip_a).startswith("SSH-2.0-")

        # the bridge removed under a running guest (its TAP falls off it)
        nsk.ns_run("ip", "link", "del", "ketch0")
        rc, found = doctor(nsk)
        assert rc == 2 and "network-bridge-missing" in found
        doctor(nsk, "--fix")
        assert doctor(nsk) == (0, set())
        assert nsk.banner(ip_a).startswith("SSH-2.0-")  # the TAP is back on the bridge

        # ketchd killed: the next one finds the same network and addresses
        nsk.kill_daemon()
        assert managed_ip(nsk, a) == ip_a
        nsk.run("restart", a)
        assert managed_ip(nsk, a) == ip_a and nsk.banner(ip_a).startswith("SSH-2.0-")

        # the network needs no instance to run, but stopping all keeps it for the next start
        nsk.run("stop", a)
        nsk.ns_run("ip", "link", "del", "ketch0")
        nsk.run("start", a)
        assert managed_ip(nsk, a) == ip_a and nsk.banner(ip_a).startswith("SSH-2.0-")


def test_a_deleted_tap_is_shown_and_doctor_gives_it_back_keeping_the_guest(nsk: NsKetch) -> None:
    with nsk.launched("nt", "--memory", "512M") as a:
        ip_a = managed_ip(nsk, a)
        nic = json.loads((nsk.root / "instances" / a / "nic.json").read_text())
        nsk.exec(a, "sh", "-c", "sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/kept")
        kept, boot = nsk.exec(a, "cat", "/tmp/kept").strip(), nsk.boot_id(a)
        nsk.ns_run("ip", "link", "del", nic["tap"])
        assert nsk.info(a)["state"] == "Running"
        assert "network-tap-missing" in nsk.codes(a)
        listed = nsk.run("list").stdout
        assert f"{a}" in listed and "Running (!)" in listed
        rc, found = doctor(nsk)
        assert rc == 2 and found == {"network-tap-missing"}
        doctor(nsk, "--fix")
        assert doctor(nsk) == (0, set())
        assert nic["tap"] in nsk.ns_run("ip", "-br", "link").stdout
        assert managed_ip(nsk, a) == ip_a and nsk.banner(ip_a).startswith("SSH-2.0-")
        assert nsk.boot_id(a) == boot  # suspended and resumed: the same boot,
        nsk.exec(a, "sh", "-c", f"kill -0 {kept}")  # its processes kept


def test_network_settings_are_refused_while_instances_run(nsk: NsKetch) -> None:
    with nsk.launched("ns", "--memory", "512M") as a:
        done = nsk.run("set", "local.network=user", check=False)
        assert done.returncode == 2 and a in done.stderr
        assert nsk.run("get", "local.network").stdout.strip() == "managed"
    bad = nsk.run("set", "local.network.subnet=8.8.8.0/24", check=False)
    assert bad.returncode == 1 and "private" in bad.stderr


def test_networks_lists_the_namespaces_bridges(nsk: NsKetch) -> None:
    nsk.ns_run("ip", "link", "add", "kbr-test", "type", "bridge")
    nsk.ns_run("ip", "link", "add", "kveth0", "type", "veth", "peer", "name", "kveth1")
    nsk.ns_run("ip", "link", "set", "kveth0", "master", "kbr-test")
    try:
        rows = nsk.json("networks")["list"]
        assert rows == [
            {"name": "kbr-test", "type": "bridge", "description": "Network bridge with kveth0"}
        ]
        table = nsk.run("networks").stdout.splitlines()
        assert table[0].split() == ["Name", "Type", "Description"]
        assert table[1].split()[:2] == ["kbr-test", "bridge"]
    finally:
        nsk.ns_run("ip", "link", "del", "kbr-test", check=False)
        nsk.ns_run("ip", "link", "del", "kveth0", check=False)


@pytest.fixture
def ext_bridge(nsk: NsKetch, tmp_path: Path) -> Iterator[str]:
    """A bridge the test makes in the namespace, with a DHCP server of the test's own."""
    yield from made_bridge(nsk, tmp_path, "kbr-ext", "192.168.250")


def made_bridge(nsk: NsKetch, tmp_path: Path, bridge: str, net: str) -> Iterator[str]:
    """Make ``bridge`` (``NET.1/24``) in the namespace with a dnsmasq of the test's own
    (``NET.10``-``NET.50``); yields its name, then removes both."""
    nsk.ns_run("ip", "link", "add", bridge, "type", "bridge")
    nsk.ns_run("ip", "addr", "add", f"{net}.1/24", "dev", bridge)
    nsk.ns_run("ip", "link", "set", bridge, "up")
    pidfile = tmp_path / f"dnsmasq-{bridge}.pid"
    nsk.ns_run(
        "dnsmasq", "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
        f"--interface={bridge}", "--except-interface=lo", f"--listen-address={net}.1",
        f"--dhcp-range={net}.10,{net}.50,infinite",
        f"--dhcp-leasefile={tmp_path / f'leases-{bridge}'}", f"--pid-file={pidfile}",
    )  # fmt: skip
    try:
        yield bridge
    finally:
        pid = procs.read_pidfile(pidfile)
        if pid:
            procs.terminate(pid)
        nsk.ns_run("ip", "link", "del", bridge, check=False)


def nic_macs(k: Ketch, name: str) -> dict[str, str]:
    out = k.exec(
        name, "sh", "-c", "for d in /sys/class/net/eth*; do echo ${d##*/} $(cat $d/address); done"
    )
    return {mac: dev for dev, mac in (line.split() for line in out.splitlines())}


def test_launch_network_adds_a_nic_on_a_test_made_bridge(nsk: NsKetch, ext_bridge: str) -> None:
    bad = nsk.run("launch", "tiny", "--network", "kveth-none", check=False)
    assert bad.returncode == 1 and "ketch networks" in bad.stderr
    mac = "52:54:00:77:77:01"
    with nsk.launched(
        "nx", "--memory", "512M", "--network", ext_bridge,
        "--network", f"name={ext_bridge},mode=manual,mac={mac}",
    ) as a:  # fmt: skip
        spec_nets = nsk.info(a)["ipv4"]
        assert len(spec_nets) >= 2
        macs = nic_macs(nsk, a)
        assert mac in macs and len(macs) == 4  # net0, managed, two on the test's bridge
        # auto: DHCP from the test's server on its bridge; reachable from the namespace
        addrs = [x for x in guest_addrs(nsk, a) if x.startswith("192.168.250.")]
        assert addrs
        assert any(nsk.banner(x).startswith("SSH-2.0-") for x in addrs)
        # the TAPs are on the test's bridge while it runs, and gone once it stops
        on_bridge = nsk.ns_run("ip", "-br", "link", "show", "master", ext_bridge).stdout
        assert len(on_bridge.splitlines()) == 2
        nsk.run("stop", a)
        assert nsk.ns_run("ip", "-br", "link", "show", "master", ext_bridge).stdout == ""
        nsk.run("start", a)
        assert mac in nic_macs(nsk, a)
        # a clone gets NICs of its own
        nsk.run("stop", a)
        clone = f"{a}-c"
        nsk.run("clone", a, "--name", clone)
        try:
            nsk.run("start", clone)
            assert mac not in nic_macs(nsk, clone)
        finally:
            nsk.run("delete", "--purge", clone, check=False)
