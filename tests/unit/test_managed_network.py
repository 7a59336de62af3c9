"""The managed network's pure parts: MACs, TAP names, subnets, address allocation,
the QEMU NIC, the settings and the default mode; and its files on a real storage root."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from dataclasses import replace
from pathlib import Path

import pytest

from ketch.errors import InvalidArgument, KetchError
from ketch.host import dnsmasq, ip
from ketch.host.dnsmasq import Host
from ketch.host.qemu import build_argv
from ketch.layout import InstanceDir, Root
from ketch.model import BootSpec, InstanceSpec
from ketch.runtime import network as net
from ketch.service import network as network_uc

SPEC = InstanceSpec(
    name="vm",
    image="tiny",
    image_id="ketch:tiny@1",
    release="tiny",
    cpus=1,
    memory=512 * 2**20,
    disk=2**30,
    boot=BootSpec(),
    base_disk="/vault/base.qcow2",
    ssh_port=2222,
    mac="52:54:00:12:34:56",
    instance_id="i-0001",
)


def test_managed_mac_is_stable_unicast_and_changes_with_a_clone() -> None:
    mac = net.managed_mac(SPEC)
    assert mac == net.managed_mac(SPEC) and dnsmasq.valid_mac(mac)
    assert mac != SPEC.mac and mac.startswith("52:54:01:")
    clone = replace(SPEC, name="vm-clone1", mac="52:54:00:aa:bb:cc", instance_id="i-0002")
    assert net.managed_mac(clone) != mac


def test_tap_names_fit_and_differ_per_root_and_name() -> None:
    a = net.tap_name(Path("/r1"), "a-very-long-instance-name-indeed")
    assert ip.valid_ifname(a) and a.startswith(net.TAP_PREFIX)
    assert a != net.tap_name(Path("/r2"), "a-very-long-instance-name-indeed")
    assert a != net.tap_name(Path("/r1"), "other")


def test_subnet_avoids_every_route_and_address_but_the_default() -> None:
    taken = [
        ipaddress.IPv4Network("0.0.0.0/0"),
        ipaddress.IPv4Network("10.97.0.0/24"),
        ipaddress.IPv4Network("10.97.1.128/25"),
    ]
    assert net.choose_subnet(taken) == ipaddress.IPv4Network("10.97.2.0/24")
    assert net.choose_subnet([]) == ipaddress.IPv4Network("10.97.0.0/24")
    with pytest.raises(KetchError, match="no free subnet"):
        net.choose_subnet([ipaddress.IPv4Network("10.96.0.0/15")])


@pytest.mark.parametrize("text", ["8.8.8.0/24", "10.0.0.0/8", "10.1.2.0/30", "10.1.2.3/24", "x"])
def test_bad_subnets_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        net.parse_subnet(text)


def test_allocation_keeps_addresses_and_fills_gaps() -> None:
    subnet = ipaddress.IPv4Network("10.97.3.0/24")
    t = net.allocate([], "a", "52:54:01:00:00:01", subnet)
    assert t == [Host("52:54:01:00:00:01", "10.97.3.2", "a")]  # .1 is the bridge
    t = net.allocate(t, "b", "52:54:01:00:00:02", subnet)
    t = net.allocate(t, "c", "52:54:01:00:00:03", subnet)
    assert net.allocate(t, "b", "52:54:01:00:00:02", subnet) == t  # kept as it was
    t = [h for h in t if h.name != "b"]
    t = net.allocate(t, "d", "52:54:01:00:00:04", subnet)
    assert {h.name: h.ip for h in t} == {"a": "10.97.3.2", "c": "10.97.3.4", "d": "10.97.3.3"}
    # a new MAC for the same name (never by ketch itself) gets a fresh lease
    t2 = net.allocate(t, "a", "52:54:01:00:00:09", subnet)
    assert [h.mac for h in t2 if h.name == "a"] == ["52:54:01:00:00:09"]
    small = ipaddress.IPv4Network("10.97.3.0/29")  # .1 bridge, .2-.6 guests
    full: list[Host] = []
    for i in range(5):
        full = net.allocate(full, f"n{i}", f"52:54:01:00:01:0{i}", small)
    with pytest.raises(KetchError, match="no free address"):
        net.allocate(full, "one-more", "52:54:01:00:02:00", small)


def test_qemu_gets_the_tap_as_a_second_nic_after_the_other_devices() -> None:
    from test_qemu_argv import CFG

    plain = build_argv(CFG)
    argv = build_argv(replace(CFG, taps=(("kt-0123456789", "52:54:01:aa:bb:cc"),)))
    nic = [
        "-netdev", "tap,id=net1,ifname=kt-0123456789,script=no,downscript=no,vhost=off",
        "-device", "virtio-net-pci,netdev=net1,mac=52:54:01:aa:bb:cc",
    ]  # fmt: skip
    at = argv.index(nic[1]) - 1
    assert argv[at : at + 4] == nic and argv[:at] + argv[at + 4 :] == plain
    # after every other device, so none moves to another PCI slot (a suspended state)
    assert "-device" not in argv[at + 4 :]
    assert any(a.startswith("user,id=net0,hostfwd=tcp:127.0.0.1:") for a in argv)


def test_settings_are_checked() -> None:
    network_uc.check_setting("local.network", "managed")
    network_uc.check_setting("local.network", "user")
    network_uc.check_setting("local.network.subnet", "192.168.77.0/24")
    network_uc.check_setting("local.network.bridge", "br-test")
    for key, value in [
        ("local.network", "bridged"),
        ("local.network.subnet", "1.2.3.0/24"),
        ("local.network.bridge", "bad name"),
    ]:
        with pytest.raises(InvalidArgument):
            network_uc.check_setting(key, value)


def test_default_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings: dict[str, str] = {}
    n = net.ManagedNetwork(Root(tmp_path), settings.get)
    monkeypatch.delenv(net.DEFAULT_ENV, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert n.mode() == "user"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert n.mode() == "managed" and not n.explicit()
    monkeypatch.setenv(net.DEFAULT_ENV, "user")  # what the test suite sets
    assert n.mode() == "user"
    settings["local.network"] = "managed"
    assert n.mode() == "managed" and n.explicit()


def test_conftest_keeps_tests_off_the_managed_network() -> None:
    assert os.environ.get(net.DEFAULT_ENV) == "user"


def test_user_mode_attaches_nothing_and_resume_follows_the_record(tmp_path: Path) -> None:
    root = Root(tmp_path)
    idir = InstanceDir(tmp_path / "instances" / "vm")
    idir.path.mkdir(parents=True)
    settings = {"local.network": "user"}
    n = net.ManagedNetwork(root, settings.get)
    assert asyncio.run(n.attach(SPEC, idir, resume=False)) is None
    assert asyncio.run(n.attach(SPEC, idir, resume=True)) is None  # suspended without a NIC
    assert n.addresses(idir) == []


def test_addresses_come_from_the_lease_then_the_static_entry(tmp_path: Path) -> None:
    root = Root(tmp_path)
    idir = InstanceDir(tmp_path / "instances" / "vm")
    idir.path.mkdir(parents=True)
    settings: dict[str, str] = {}
    n = net.ManagedNetwork(root, settings.get)
    net.write_nic(idir, net.Nic("kt-x", "52:54:01:00:00:01", "10.97.3.2"))
    assert net.read_nic(idir) == net.Nic("kt-x", "52:54:01:00:00:01", "10.97.3.2")
    assert n.addresses(idir) == ["10.97.3.2"]
    root.network.path.mkdir()
    root.network.leases.write_text("0 52:54:01:00:00:01 10.97.3.9 vm *\n")
    assert n.addresses(idir) == ["10.97.3.9"]
    assert (idir.nic.stat().st_mode & 0o777) == 0o600


def test_bridgeable_interfaces_are_listed_as_multipass_lists_them() -> None:
    from ketch.host.ip import Link

    links = [
        Link("lo", "loopback", "00:00:00:00:00:00", True),
        Link("eth0", "", "02:00:00:00:00:01", True, bus="pci"),
        Link("wlan0", "", "02:00:00:00:00:02", True, bus="pci"),
        Link("br0", "bridge", "02:00:00:00:00:03", True),
        Link("veth1", "veth", "02:00:00:00:00:04", True, master="br0"),
        Link("eth1", "", "02:00:00:00:00:05", True, master="br0", bus="virtio"),
        Link("ketch0", "bridge", "02:00:00:00:00:06", True),
        Link("kt-0123456789", "tun", "02:00:00:00:00:07", True, master="ketch0", tap=True),
        Link("dummy0", "dummy", "02:00:00:00:00:08", True),
    ]
    assert network_uc.bridgeable(links, {"wlan0"}, "ketch0") == [
        ("br0", "bridge", "Network bridge with eth1, veth1"),
        ("eth0", "ethernet", "Ethernet device"),
        ("eth1", "ethernet", "Ethernet device"),
        ("wlan0", "wifi", "Wi-Fi device"),
    ]


def test_links_parse_the_parent_bus() -> None:
    text = '[{"ifname": "eth0", "address": "02:fc:00:00:00:01", "parentbus": "virtio"}]'
    (link,) = ip.parse_links(text)
    assert link.bus == "virtio" and link.kind == ""


def test_wireless_is_read_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "wlan0" / "phy80211").mkdir(parents=True)
    (tmp_path / "eth0").mkdir()
    assert ip.wireless("wlan0", tmp_path) and not ip.wireless("eth0", tmp_path)


def test_networks_output_formats() -> None:
    from ketch.api import models as m
    from ketch.cli import output

    doc = m.NetworksReply(
        list=[
            m.NetworkRow(name="br0", type="bridge", description="Network bridge with eth1"),
            m.NetworkRow(name="eth0", type="ethernet", description="Ethernet device"),
        ]
    )
    assert output.networks_output(doc, "table") == (
        "Name  Type      Description\n"
        "br0   bridge    Network bridge with eth1\n"
        "eth0  ethernet  Ethernet device\n"
    )
    assert output.networks_output(doc, "csv").splitlines()[0] == "Name,Type,Description"
    assert '"list"' in output.networks_output(doc, "json")
    assert output.networks_output(m.NetworksReply(list=[]), "table") == (
        "No network interfaces found.\n"
    )


def test_network_option_parses_as_multipass() -> None:
    from ketch.service.network import parse_network

    assert parse_network("br0") == {"name": "br0"}
    assert parse_network("name=br0,mode=manual,mac=52:54:00:00:00:09") == {
        "name": "br0",
        "mode": "manual",
        "mac": "52:54:00:00:00:09",
    }
    for bad in ["", "a,b", "mode=auto", "name=br0,mode=x", "name=br0,name=br1", "name=", "x=1"]:
        with pytest.raises(InvalidArgument):
            parse_network(bad)


def test_guest_network_config_matches_every_nic_by_mac() -> None:
    import json

    from ketch.model import NetworkMode, NetworkSpec

    spec = replace(
        SPEC,
        networks=(
            NetworkSpec("br0", "52:54:00:00:00:a1"),
            NetworkSpec("br1", "52:54:00:00:00:a2", NetworkMode.MANUAL),
        ),
    )
    plain = json.loads(net.guest_network_config(SPEC))["ethernets"]
    assert len(plain) == 2  # every instance: its user-mode and managed NICs, by MAC
    cfg = json.loads(net.guest_network_config(spec))
    assert cfg["version"] == 2
    eth = cfg["ethernets"]
    primary = eth["enx" + SPEC.mac.replace(":", "")]
    assert primary["match"] == {"macaddress": SPEC.mac} and primary["dhcp4"] is True
    managed = eth["enx" + net.managed_mac(SPEC).replace(":", "")]
    assert managed["optional"] is True
    assert managed["dhcp4-overrides"]["route-metric"] > primary["dhcp4-overrides"]["route-metric"]
    extra = eth["enx5254000000a1"]
    assert extra["match"] == {"macaddress": "52:54:00:00:00:a1"} and extra["dhcp4"] is True
    assert "enx5254000000a2" not in eth and len(eth) == 3  # manual: left alone
    assert all(len(k) <= 15 for k in eth)


def test_extra_nics_get_their_own_taps_and_are_stored_in_the_spec() -> None:
    from ketch.model import NetworkMode, NetworkSpec
    from ketch.store.records import spec_from_json, spec_to_json

    names = {net.extra_tap_name(Path("/r"), "a-long-instance-name", i) for i in range(8)}
    assert len(names) == 8 and all(ip.valid_ifname(n) for n in names)
    assert net.tap_name(Path("/r"), "a-long-instance-name") not in names
    spec = replace(SPEC, networks=(NetworkSpec("br0", "52:54:00:00:00:a1", NetworkMode.MANUAL),))
    assert spec_from_json(spec_to_json(spec)) == spec
    assert spec_from_json(spec_to_json(SPEC)).networks == ()


def test_qemu_numbers_the_taps_after_net0() -> None:
    from test_qemu_argv import CFG

    argv = build_argv(
        replace(CFG, taps=(("kt-a", "52:54:01:00:00:01"), ("kxb-0", "52:54:00:0:0:2")))
    )
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert [n.split(",")[:2] for n in netdevs] == [
        ["user", "id=net0"], ["tap", "id=net1"], ["tap", "id=net2"],
    ]  # fmt: skip


def test_a_tap_gone_under_its_qemu_is_an_inconsistency(tmp_path: Path) -> None:
    """A real process stands for QEMU: its argv names the TAP as QEMU's does."""
    import subprocess
    import sys
    import time

    idir = InstanceDir(tmp_path / "instances" / "vm")
    idir.path.mkdir(parents=True)
    sys_net = tmp_path / "sys-class-net"
    sys_net.mkdir()
    net.write_nic(idir, net.Nic("kt-0123456789", "52:54:01:00:00:01", "10.97.3.2"))
    netdev = "tap,id=net1,ifname=kt-0123456789,script=no,downscript=no,vhost=off"
    other = "tap,id=net1,ifname=kt-0123456789x,script=no"
    code = "import sys; sys.stdin.read()"
    with (
        subprocess.Popen(
            [sys.executable, "-c", code, "-netdev", netdev], stdin=subprocess.PIPE
        ) as qemu,
        subprocess.Popen(
            [sys.executable, "-c", code, "-netdev", other], stdin=subprocess.PIPE
        ) as stranger,
    ):
        try:
            for proc in (qemu, stranger):  # until each has exec'd (before, its argv is ours)
                while b"-netdev" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                    time.sleep(0.01)
            found = network_uc.tap_problem(idir, qemu.pid, sys_net)
            assert found is not None and found.code.value == "network-tap-missing"
            assert "kt-0123456789 is gone" in found.message and "10.97.3.2" in found.message
            assert "doctor --fix" in found.action
            assert network_uc.tap_problem(idir, stranger.pid, sys_net) is None  # not its TAP
            assert network_uc.tap_problem(idir, None, sys_net) is None
            (sys_net / "kt-0123456789").mkdir()
            assert network_uc.tap_problem(idir, qemu.pid, sys_net) is None  # it is there
            idir.nic.unlink()
            (sys_net / "kt-0123456789").rmdir()
            assert network_uc.tap_problem(idir, qemu.pid, sys_net) is None  # user-mode
        finally:
            qemu.kill()
            stranger.kill()
