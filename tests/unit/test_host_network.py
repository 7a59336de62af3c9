"""The network host wrappers: ``ip``, ``dnsmasq`` and ``nft`` argv builders and parsers.

The parsers are checked against outputs recorded from iproute2 6.1 and
nftables 1.0.6 inside a test network namespace (files in ``data/``, each
opening with two ``#`` lines naming the command and the version).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ketch.host import dnsmasq, ip, nft
from ketch.host.dnsmasq import DnsmasqConfig, Host

DATA = Path(__file__).parent / "data"


def recorded(name: str) -> str:
    lines = (DATA / name).read_text().splitlines(keepends=True)
    assert lines[0].startswith("# command:") and lines[1].startswith("# version:")
    return "".join(lines[2:])


# -- ip ---------------------------------------------------------------------------------------


def test_links_parse_kinds_masters_and_taps() -> None:
    links = {link.name: link for link in ip.parse_links(recorded("ip-6.1-link-detail.json.txt"))}
    assert set(links) == {"lo", "kbr0", "ktap0", "veth0", "veth1"}
    assert links["lo"].kind == "loopback"
    assert links["kbr0"].kind == "bridge" and links["kbr0"].up and links["kbr0"].master is None
    tap = links["ktap0"]
    assert tap.kind == "tun" and tap.tap and tap.master == "kbr0" and tap.up
    assert links["veth0"].kind == "veth" and not links["veth0"].tap
    assert links["veth1"].up is False
    assert links["kbr0"].mac == "96:34:88:ba:e9:d2"


def test_addrs_parse_every_family() -> None:
    addrs = ip.parse_addrs(recorded("ip-6.1-addr.json.txt"))
    v4 = {(a.ifname, str(a.interface)) for a in addrs if a.family == "inet"}
    assert v4 == {("lo", "127.0.0.1/8"), ("kbr0", "10.77.0.1/24"), ("veth0", "192.168.5.2/24")}
    assert any(a.family == "inet6" and a.ifname == "kbr0" for a in addrs)


def test_routes_parse_default_and_local_table() -> None:
    text = recorded("ip-6.1-route-all.json.txt")
    nets = ip.parse_routes(text)
    assert ipaddress.IPv4Network("0.0.0.0/0") in nets
    assert ipaddress.IPv4Network("10.77.0.0/24") in nets
    assert ipaddress.IPv4Network("192.168.5.0/24") in nets
    assert ipaddress.IPv4Network("127.0.0.0/8") in nets
    assert ip.default_route_devices(text) == ["veth0"]


def test_parsers_take_empty_and_odd_input() -> None:
    assert ip.parse_links("") == [] and ip.parse_addrs("\n") == [] and ip.parse_routes("") == []
    assert ip.parse_links('[{"flags": []}, 3]') == []
    assert ip.parse_routes('[{"dst": "not-a-net"}]') == []
    with pytest.raises(ValueError):
        ip.parse_links('{"ifname": "x"}')


def test_argv_builders() -> None:
    assert ip.links_argv("kbr0") == ["ip", "-d", "-j", "link", "show", "dev", "kbr0"]
    assert ip.bridge_add_argv("ketch0") == ["ip", "link", "add", "name", "ketch0", "type", "bridge"]
    assert ip.addr_add_argv("ketch0", "10.1.2.1/24") == [
        "ip", "addr", "replace", "10.1.2.1/24", "dev", "ketch0",
    ]  # fmt: skip
    assert ip.tap_add_argv("kt-ab") == [
        "ip", "tuntap", "add", "dev", "kt-ab", "mode", "tap", "vnet_hdr",
    ]  # fmt: skip
    assert ip.link_set_argv("kt-ab", master="ketch0") == [
        "ip", "link", "set", "dev", "kt-ab", "master", "ketch0", "up",
    ]  # fmt: skip
    assert ip.link_del_argv("kt-ab") == ["ip", "link", "del", "dev", "kt-ab"]


@pytest.mark.parametrize("name", ["", "a" * 16, "has space", "x;rm", "-v", "..", "a/b", "é", "x\n"])
def test_bad_interface_names_are_refused(name: str) -> None:
    assert not ip.valid_ifname(name)
    with pytest.raises(ValueError):
        ip.link_del_argv(name)


def test_good_interface_names() -> None:
    for name in ("ketch0", "a" * 15, "br-x.1", "kt_01"):
        assert ip.valid_ifname(name)


# -- dnsmasq ----------------------------------------------------------------------------------


def _cfg(hosts: tuple[Host, ...] = ()) -> DnsmasqConfig:
    return DnsmasqConfig(
        bridge="ketch0",
        gateway=ipaddress.IPv4Interface("10.97.3.1/24"),
        hosts=hosts,
        pidfile=Path("/s/network/dnsmasq.pid"),
        leasefile=Path("/s/network/dnsmasq.leases"),
        logfile=Path("/s/network/dnsmasq.log"),
    )


def test_dnsmasq_argv_reads_no_config_and_binds_to_the_bridge_only() -> None:
    argv = dnsmasq.build_argv(
        _cfg(
            (
                Host("52:54:00:AA:bb:01", "10.97.3.10", "vm-1"),
                Host("52:54:00:aa:bb:02", "10.97.3.11", "b"),
            )
        )
    )
    assert argv[0] == "dnsmasq" and "--conf-file=/dev/null" in argv
    assert "--bind-interfaces" in argv and "--interface=ketch0" in argv
    assert "--listen-address=10.97.3.1" in argv and "--no-hosts" in argv
    assert "--dhcp-range=10.97.3.2,10.97.3.254,255.255.255.0,infinite" in argv
    assert "--dhcp-leasefile=/s/network/dnsmasq.leases" in argv
    assert "--pid-file=/s/network/dnsmasq.pid" in argv
    assert dnsmasq.hosts_of_argv(argv) == {
        "52:54:00:aa:bb:01,10.97.3.10,vm-1",
        "52:54:00:aa:bb:02,10.97.3.11,b",
    }
    assert not any(a.startswith("--user") for a in argv)  # it drops to nobody


def test_dnsmasq_argv_refuses_bad_hosts() -> None:
    with pytest.raises(ValueError):
        dnsmasq.build_argv(_cfg((Host("01:00:00:00:00:01", "10.97.3.10", "x"),)))  # multicast
    with pytest.raises(ValueError):
        dnsmasq.build_argv(_cfg((Host("52:54:00:00:00:01", "10.97.3.300", "x"),)))
    with pytest.raises(ValueError):
        dnsmasq.build_argv(_cfg((Host("52:54:00:00:00:01,x", "10.97.3.3", "x"),)))


def test_dnsmasq_hostname_is_sanitized() -> None:
    argv = dnsmasq.build_argv(_cfg((Host("52:54:00:00:00:01", "10.97.3.3", "a,b c"),)))
    assert "--dhcp-host=52:54:00:00:00:01,10.97.3.3,a-b-c" in argv


def test_dnsmasq_argv_matches_only_this_network() -> None:
    argv = dnsmasq.build_argv(_cfg())
    assert dnsmasq.argv_matches(argv, Path("/s/network/dnsmasq.leases"))
    assert not dnsmasq.argv_matches(argv, Path("/other/dnsmasq.leases"))
    assert not dnsmasq.argv_matches(
        ["sleep", "--dhcp-leasefile=/s/network/dnsmasq.leases"], Path("/s/network/dnsmasq.leases")
    )
    assert not dnsmasq.argv_matches(None, Path("/x"))


def test_leases_parse() -> None:
    text = (
        "0 52:54:00:aa:bb:01 10.97.3.10 vm-1 ff:00:aa:bb:01\n"
        "1764633600 52:54:00:AA:BB:02 10.97.3.11 * 01:52:54:00:aa:bb:02\n"
        "duid 00:01:00:01:2e:aa\n"
        "garbage\n"
        "0 52:54:00:aa:bb:03 not-an-ip x *\n"
    )
    leases = dnsmasq.parse_leases(text)
    assert [(le.mac, le.ip, le.expiry) for le in leases] == [
        ("52:54:00:aa:bb:01", "10.97.3.10", 0),
        ("52:54:00:aa:bb:02", "10.97.3.11", 1764633600),
    ]


hosts_st = st.lists(
    st.builds(
        Host,
        mac=st.tuples(*[st.integers(0, 255)] * 5).map(
            lambda t: "52:" + ":".join(f"{b:02x}" for b in t)
        ),
        ip=st.ip_addresses(v=4).map(str),
        name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    ),
    max_size=8,
)


@given(hosts_st)
def test_hosts_table_round_trips(hosts: list[Host]) -> None:
    assert dnsmasq.parse_hosts(dnsmasq.render_hosts(hosts)) == hosts


def test_hosts_table_skips_malformed_lines() -> None:
    text = "52:54:00:00:00:01,10.0.0.1,a\nnonsense\n52:54:00:00:00:02,999.1.1.1,b\n,,\n"
    assert dnsmasq.parse_hosts(text) == [Host("52:54:00:00:00:01", "10.0.0.1", "a")]


# -- nft --------------------------------------------------------------------------------------


def test_ruleset_masquerades_the_subnet_and_replaces_itself() -> None:
    text = nft.ruleset("ketch0", ipaddress.IPv4Network("10.97.3.0/24"))
    lines = text.splitlines()
    # declare, delete, recreate: loading it twice leaves one table (checked on real nft)
    assert lines[:3] == [
        "table ip ketch_ketch0",
        "delete table ip ketch_ketch0",
        "table ip ketch_ketch0 {",
    ]
    assert "    ip saddr 10.97.3.0/24 ip daddr != 10.97.3.0/24 masquerade" in lines
    assert '    iifname "ketch0" accept' in lines


def test_table_name_refuses_odd_bridges() -> None:
    assert nft.table_name("br-x.1") == "ketch_br_x_1"
    with pytest.raises(ValueError):
        nft.table_name('x" accept; #')


def test_masquerades_parse_recorded_table() -> None:
    assert nft.parse_masquerades(recorded("nft-1.0.6-list-table.json.txt")) == ["10.77.0.0/24"]
    assert nft.parse_masquerades('{"nftables": []}') == []


def test_enable_forwarding_writes_the_sysctl(tmp_path: Path) -> None:
    path = tmp_path / "ip_forward"
    path.write_text("0\n")
    nft.enable_forwarding(path)
    assert path.read_text() == "1\n"
