"""Port forwarding's pure parts: rules, /proc/net, HMP's replies, the watcher's output, ports."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from fakes import FakeDriver, FakeImages

from ketch.cli import main as cli
from ketch.errors import EXIT_USAGE, HostCommandError, InvalidArgument
from ketch.forward_rules import format_rule, parse_rule
from ketch.host import hostfwd
from ketch.host.hostfwd import HostFwd
from ketch.layout import InstanceDir, Root
from ketch.model import BootSpec, ForwardSpec, InstanceSpec, Intent, Protocol
from ketch.runtime import listeners as ls
from ketch.runtime.listeners import Listener, SnapshotReader
from ketch.service import forward_table as ft
from ketch.service import forward_watch as fw
from ketch.service.context import Context
from ketch.store.db import Store

DATA = Path(__file__).parent / "data"
TCP, UDP = Protocol.TCP, Protocol.UDP

# -- rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("8080:80", ForwardSpec("127.0.0.1", 8080, 80, TCP)),
        ("8080:80/tcp", ForwardSpec("127.0.0.1", 8080, 80, TCP)),
        ("5353:53/udp", ForwardSpec("127.0.0.1", 5353, 53, UDP)),
        ("5353:53/UDP", ForwardSpec("127.0.0.1", 5353, 53, UDP)),
        ("0.0.0.0:8080:80", ForwardSpec("0.0.0.0", 8080, 80, TCP)),
        ("192.168.1.10:1:65535/udp", ForwardSpec("192.168.1.10", 1, 65535, UDP)),
    ],
)
def test_rules_parse(text: str, want: ForwardSpec) -> None:
    assert parse_rule(text) == want
    assert parse_rule(format_rule(want)) == want


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "invalid port forward"),
        ("8080", "expected HOSTPORT:GUESTPORT"),
        ("1:2:3:4", "expected HOSTPORT:GUESTPORT"),
        ("0:80", "the host port '0' is not a number from 1 to 65535"),
        ("8080:65536", "the guest port '65536'"),
        ("8080:http", "the guest port 'http'"),
        ("８０:80", "the host port '８０'"),  # fullwidth digits are digits to str.isdigit
        ("8080:80/sctp", "unknown protocol 'sctp'"),
        ("localhost:8080:80", "'localhost' is not an IPv4 address"),
        ("256.0.0.1:8080:80", "'256.0.0.1' is not an IPv4 address"),
        ("01.2.3.4:8080:80", "'01.2.3.4' is not an IPv4 address"),
        ("[::1]:8080:80", "expected HOSTPORT:GUESTPORT"),
        ("8080:\n80", "invalid port forward"),
        ("1" * 100 + ":80", "invalid port forward"),
    ],
)
def test_bad_rules_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_rule(text)
    assert words in err.value.message
    assert err.value.exit_code == EXIT_USAGE
    assert err.value.hint


@pytest.fixture
def no_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("KETCH_STORAGE", str(blocker / "storage"))
    return blocker


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["forward", "vm", "99999:80"], "the host port '99999'"),
        (["forward", "--remove", "vm", "80"], "expected HOSTPORT:GUESTPORT"),
        (["launch", "--forward", "8080:80", "--forward", "x:80"], "the host port 'x'"),
    ],
)
def test_cli_refuses_bad_rules_with_exit_1(
    no_daemon: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    assert cli.main(argv) == EXIT_USAGE  # before any daemon contact (that would be exit 3)
    err = capsys.readouterr().err
    assert f"{argv[0]} failed: invalid port forward" in err
    assert words in err
    assert "hint: write [HOSTIP:]HOSTPORT:GUESTPORT" in err


# -- /proc/net ------------------------------------------------------------------------------


def test_addresses_decode_as_an_x86_guest_writes_them() -> None:
    assert ls.decode_address("0100007F") == "127.0.0.1"
    assert ls.decode_address("0F02000A") == "10.0.2.15"
    assert ls.decode_address("00000000") == "0.0.0.0"
    assert ls.decode_address("00000000000000000000000001000000") == "::1"
    assert ls.decode_address("00000000000000000000000000000000") == "::"
    mapped = ls.decode_address("0000000000000000FFFF00000100007F")
    assert mapped is not None and Listener(TCP, 1, mapped).scope == "loopback"
    assert ls.decode_address("0100007") is None
    assert ls.decode_address("zz00007F") is None
    assert ls.decode_address("0100007F01") is None


def _sections(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("# "):
            name = line[2:]
            out[name] = []
        else:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def test_recorded_proc_net_of_the_tiny_guest() -> None:
    """Recorded in a tiny guest running dropbear (22), busybox httpd on 8080, 8090, 8095
    (all addresses) and on 127.0.0.1:8081, and udhcpd (UDP 67); established SSH sessions
    are not listeners."""
    files = _sections((DATA / "proc-net-tiny.txt").read_text())
    assert ls.parse_proc_net(files["tcp"], "tcp") == {
        Listener(TCP, 22, "0.0.0.0"),
        Listener(TCP, 8081, "127.0.0.1"),
    }
    assert ls.parse_proc_net(files["tcp6"], "tcp6") == {
        Listener(TCP, p, "::") for p in (22, 8080, 8090, 8095)
    }
    assert ls.parse_proc_net(files["udp"], "udp") == {Listener(UDP, 67, "0.0.0.0")}
    assert ls.parse_proc_net(files["udp6"], "udp6") == set()


UDP6_LINES = """\
  sl  local_address                         remote_address                        st tx_queue
  1: 00000000000000000000000001000000:14E9 00000000000000000000000000000000:0000 07 00000000:00
  2: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00
  3: 00000000000000000000000000000000:1F40 20010DB8000000000000000000000001:0035 01 00000000:00
  4: 0F02000A:0035 00000000:0000 07 00000000:00
"""


def test_udp_bound_unconnected_only_and_families_checked() -> None:
    assert ls.parse_proc_net(UDP6_LINES, "udp6") == {
        Listener(UDP, 5353, "::1"),  # bound to the guest's loopback: listed, not forwarded
        Listener(UDP, 53, "::"),
    }  # the connected socket (01) and the IPv4 line in an IPv6 file are not


def test_scopes_decide_what_is_forwarded() -> None:
    assert ft.not_forwarded(Listener(TCP, 80, "0.0.0.0")) is None
    assert ft.not_forwarded(Listener(TCP, 80, "::")) is None
    assert ft.not_forwarded(Listener(TCP, 80, "10.0.2.15")) is None
    assert ft.not_forwarded(Listener(TCP, 80, "::ffff:10.0.2.15")) is None
    assert "127.0.0.1 only" in (ft.not_forwarded(Listener(TCP, 5432, "127.0.0.1")) or "")
    assert "::1 only" in (ft.not_forwarded(Listener(UDP, 53, "::1")) or "")
    assert "not an address" in (ft.not_forwarded(Listener(TCP, 80, "192.168.7.2")) or "")
    assert ft.not_forwarded(Listener(TCP, 22, "0.0.0.0")) == "ketch's own SSH port"
    assert ft.not_forwarded(Listener(UDP, 22, "0.0.0.0")) is None
    assert ft.not_forwarded(Listener(UDP, 68, "0.0.0.0")) == "a DHCP client's port"


def test_one_listener_per_port_the_most_reachable() -> None:
    both = frozenset({Listener(TCP, 80, "127.0.0.1"), Listener(TCP, 80, "::")})
    assert ls.reachable(both) == {(TCP, 80): Listener(TCP, 80, "::")}
    tcp_and_udp = frozenset({Listener(TCP, 53, "0.0.0.0"), Listener(UDP, 53, "0.0.0.0")})
    assert set(ls.reachable(tcp_and_udp)) == {(TCP, 53), (UDP, 53)}


# -- the watcher's output (the guest is hostile) -----------------------------------------------


def _feed(reader: SnapshotReader, text: bytes) -> list[ls.Snapshot]:
    return [s for line in text.split(b"\n") if (s := reader.feed(line)) is not None]


def test_snapshots_are_framed_and_partial_ones_ignored() -> None:
    recorded = (DATA / "proc-net-tiny.txt").read_bytes()
    stream = b"garbage before\n@ketch-listeners\n" + recorded + b"@ketch-end\n"
    stream += b"@ketch-listeners\n# tcp\n   0: 00000000:0050 00000000:0000 0A x\n"  # cut off
    snaps = _feed(SnapshotReader(), stream)
    assert len(snaps) == 1 and not snaps[0].truncated
    assert Listener(UDP, 67, "0.0.0.0") in snaps[0].listeners
    assert Listener(TCP, 80, "0.0.0.0") not in snaps[0].listeners


def test_a_new_begin_restarts_the_snapshot() -> None:
    stream = (
        b"@ketch-listeners\n# tcp\n   0: 00000000:0050 00000000:0000 0A x\n"
        b"@ketch-listeners\n# tcp\n   0: 00000000:0051 00000000:0000 0A x\n@ketch-end\n"
    )
    (snap,) = _feed(SnapshotReader(), stream)
    assert snap.listeners == {Listener(TCP, 81, "0.0.0.0")}


def test_hostile_output_is_bounded() -> None:
    line = b"   0: 00000000:%04X 00000000:0000 0A x"
    many = b"\n".join(line % p for p in range(1, 5000))
    stream = b"@ketch-listeners\n# tcp\n" + many + b"\n@ketch-end\n"
    (snap,) = _feed(SnapshotReader(), stream)
    assert snap.truncated and len(snap.listeners) <= ls.MAX_LISTENERS
    long = b"@ketch-listeners\n# tcp\n" + b"A" * 100_000 + b"\n@ketch-end\n"
    (snap,) = _feed(SnapshotReader(), long)
    assert snap.truncated and not snap.listeners
    junk = (
        b"@ketch-listeners\n# tcp\n\xff\xfe 0: zz:zz 0A\n# /etc/shadow\n   0: 00000000:0050 0 0A\n"
    )
    (snap,) = _feed(SnapshotReader(), junk + b"@ketch-end\n")
    assert snap.listeners == frozenset()  # an unknown section name: its lines are skipped


def test_the_watch_script_is_one_posix_sh_loop() -> None:
    script = ls.WATCH_SCRIPT
    assert script.startswith("while :; do echo @ketch-listeners;")
    for name in ls.FILES:
        assert name in script
    assert "|| exit 0" in script  # the loop ends when ssh goes away


# -- HMP (replies recorded from QEMU 7.2) ---------------------------------------------------------


def test_hmp_commands() -> None:
    fwd = HostFwd(TCP, "127.0.0.1", 18080, 80)
    assert hostfwd.add_command(fwd) == "hostfwd_add net0 tcp:127.0.0.1:18080-:80"
    assert hostfwd.remove_command(fwd) == "hostfwd_remove net0 tcp:127.0.0.1:18080"
    assert (
        hostfwd.add_command(HostFwd(UDP, "0.0.0.0", 5353, 53))
        == "hostfwd_add net0 udp:0.0.0.0:5353-:53"
    )


def test_hmp_replies() -> None:
    assert hostfwd.add_error("") is None
    taken = "Could not set up host forwarding rule 'tcp:127.0.0.1:18080-:80'\r\n"
    assert hostfwd.add_error(taken) == taken.strip()
    assert hostfwd.add_error("unrecognized netdev id 'nope'\r\n") == "unrecognized netdev id 'nope'"
    assert hostfwd.removed("host forwarding rule for tcp:127.0.0.1:18080 removed\r\n")
    assert not hostfwd.removed("host forwarding rule for tcp:127.0.0.1:18080 not found\r\n")


def test_info_usernet_recorded() -> None:
    got = hostfwd.parse_usernet((DATA / "qemu-7.2-info-usernet.txt").read_text())
    assert sorted(got) == sorted(
        [
            HostFwd(TCP, "127.0.0.1", 39497, 8095),
            HostFwd(TCP, "127.0.0.1", 8090, 8090),
            HostFwd(TCP, "127.0.0.1", 8080, 8080),
            HostFwd(TCP, "127.0.0.1", 36529, 22),
            HostFwd(UDP, "127.0.0.1", 67, 67),
        ]
    )  # established and TIME_WAIT connections are not forwards


def test_info_usernet_any_address_and_garbage() -> None:
    text = (
        "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port\r\n"
        "  TCP[HOST_FORWARD]  18               * 18082       10.0.2.15    82     0     0\r\n"
        "  TCP[HOST_FORWARD]  18               * port       10.0.2.15    82     0     0\r\n"
        "  SCTP[HOST_FORWARD]  1       127.0.0.1    9       10.0.2.15    9     0     0\r\n"
        "  TCP[HOST_FORWARD]\r\n"
    )
    assert hostfwd.parse_usernet(text) == [HostFwd(TCP, "0.0.0.0", 18082, 82)]


# -- choosing a host port ------------------------------------------------------------------------


def _choose(
    port: int, *, taken: tuple[int, ...] = (), root: bool = True, free: bool = True
) -> tuple[int, str]:
    return ft.choose_port(
        port, taken=set(taken), privileged_ok=root, is_free=lambda p: free, pick=lambda: 40001
    )


def test_the_same_port_when_it_can_be_had() -> None:
    assert _choose(8080) == (8080, "")
    assert _choose(80, root=True) == (80, "")


def test_another_port_says_why() -> None:
    port, why = _choose(80, root=False)
    assert port == 40001 and "privileged" in why and "forwarded from 40001 instead" in why
    port, why = _choose(8080, taken=(8080,))
    assert port == 40001 and "already forwarded" in why
    port, why = _choose(8080, free=False)
    assert port == 40001 and "taken by another program" in why


def test_port_free_sees_a_listener_and_a_bound_udp_socket() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not ft.port_free(TCP, "127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        assert not ft.port_free(UDP, "127.0.0.1", port)
    taken = {ft.any_free_port(TCP, set())}
    assert ft.any_free_port(TCP, taken) not in taken


# -- the forwarder's bookkeeping, over a fake QEMU that keeps forwards as slirp does --------------


class SlirpFake(FakeDriver):
    """A FakeDriver whose VMs keep host forwards (a HostForwarding), in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.fwds: dict[str, list[HostFwd]] = {}
        self.refuse: set[int] = set()  # host ports "another program" holds

    async def forwards(self, spec: InstanceSpec, idir: InstanceDir) -> list[HostFwd]:
        return list(self.fwds.setdefault(spec.name, []))

    async def add_forward(self, spec: InstanceSpec, idir: InstanceDir, fwd: HostFwd) -> None:
        have = self.fwds.setdefault(spec.name, [])
        if fwd.host_port in self.refuse or any(f.key == fwd.key for f in have):
            raise HostCommandError(["hmp"], None, "Could not set up host forwarding rule")
        have.append(fwd)

    async def remove_forward(self, spec: InstanceSpec, idir: InstanceDir, fwd: HostFwd) -> bool:
        have = self.fwds.setdefault(spec.name, [])
        kept = [f for f in have if f.key != fwd.key]
        self.fwds[spec.name] = kept
        return len(kept) != len(have)


def a_spec(name: str, forwards: tuple[ForwardSpec, ...] = ()) -> InstanceSpec:
    return InstanceSpec(
        name=name, image="tiny", image_id="ketch:tiny@1", release="ketch tiny", cpus=1,
        memory=512 * 1024**2, disk=1024**3, boot=BootSpec(kernel="/vault/vmlinuz"),
        base_disk="/vault/tiny.qcow2", ssh_port=ft.any_free_port(TCP, set()),
        mac="52:54:00:00:00:01", instance_id=f"i-{name}", created=1.0, forwards=forwards,
    )  # fmt: skip


def test_forwarder_adds_removes_and_reads_back(tmp_path: Path) -> None:
    explicit_host = ft.any_free_port(TCP, set())
    guest = ft.any_free_port(TCP, {explicit_host})
    taken = ft.any_free_port(TCP, {explicit_host, guest})
    rule = ForwardSpec("127.0.0.1", explicit_host, 80, TCP)
    driver = SlirpFake()

    async def scenario() -> None:
        store = Store(tmp_path / "ketch.db")
        ctx = Context(Root(tmp_path), store, driver, FakeImages())
        spec = a_spec("web", (rule,))
        store.add(spec, Intent.RUN)
        driver.add("web", running=True, tags=set())
        driver.fwds["web"] = [HostFwd(TCP, "127.0.0.1", spec.ssh_port, 22)]  # QEMU's argv
        one = fw.Forwarder(ctx)
        await one.sync("web", spec, pid=1)
        seen = frozenset({
            Listener(TCP, 22, "0.0.0.0"), Listener(TCP, guest, "::"),
            Listener(TCP, 5432, "127.0.0.1"), Listener(TCP, 80, "0.0.0.0"),
            Listener(TCP, taken, "0.0.0.0"),
        })  # fmt: skip
        driver.refuse = {taken}
        await one._reconcile("web", spec, seen, enabled=True)
        rows = {(r.guest_port, r.kind): r for r in one.rows(spec, running=True)}
        assert rows[(80, "explicit")].host_port == explicit_host  # the rule covers port 80
        assert (80, "automatic") not in rows
        assert rows[(guest, "automatic")].host_port == guest
        moved = rows[(taken, "automatic")]
        assert moved.host_port not in (None, taken) and moved.active
        assert "forwarded from" in moved.note
        assert rows[(5432, "automatic")].host_port is None
        assert "127.0.0.1 only" in rows[(5432, "automatic")].note
        assert (22, "automatic") not in rows
        ports = {f.host_port for f in driver.fwds["web"]}
        assert ports == {spec.ssh_port, explicit_host, guest, moved.host_port}

        # a new daemon: nothing in memory, the forwards read back from QEMU
        two = fw.Forwarder(ctx)
        await two.sync("web", spec, pid=1)
        back = {(r.host_port, r.kind) for r in two.rows(spec, running=True)}
        assert back == {
            (explicit_host, "explicit"), (guest, "automatic"), (moved.host_port, "automatic"),
        }  # fmt: skip
        # the guest stops listening on one port: its forward goes, from QEMU too
        await two._reconcile("web", spec, seen - {Listener(TCP, guest, "::")}, enabled=True)
        assert guest not in {f.host_port for f in driver.fwds["web"]}
        # auto-forward off: every automatic forward goes, the rule stays
        await two._reconcile("web", spec, seen, enabled=False)
        assert {f.host_port for f in driver.fwds["web"]} == {spec.ssh_port, explicit_host}
        store.close()

    asyncio.run(scenario())


def test_a_guest_listening_everywhere_gets_at_most_max_auto_forwards(tmp_path: Path) -> None:
    """The attack: a hostile guest listens on 200 ports to make ketchd bind 200 host ports."""
    driver = SlirpFake()

    async def scenario() -> None:
        store = Store(tmp_path / "ketch.db")
        ctx = Context(Root(tmp_path), store, driver, FakeImages())
        spec = a_spec("hostile")
        store.add(spec, Intent.RUN)
        driver.add("hostile", running=True, tags=set())
        one = fw.Forwarder(ctx)
        await one.sync("hostile", spec, pid=1)
        many = frozenset(Listener(TCP, p, "0.0.0.0") for p in range(40000, 40200))
        await one._reconcile("hostile", spec, many, enabled=True)
        assert len(driver.fwds["hostile"]) == fw.MAX_AUTO
        refused = [r for r in one.rows(spec, running=True) if not r.active]
        assert len(refused) == 200 - fw.MAX_AUTO
        assert all(f"more than {fw.MAX_AUTO} ports" in r.note for r in refused)
        store.close()

    asyncio.run(scenario())


def test_a_refused_rule_is_noted_and_made_when_its_port_is_free(tmp_path: Path) -> None:
    host = ft.any_free_port(TCP, set())
    driver = SlirpFake()

    async def scenario() -> None:
        store = Store(tmp_path / "ketch.db")
        ctx = Context(Root(tmp_path), store, driver, FakeImages())
        spec = a_spec("db", (ForwardSpec("127.0.0.1", host, 5432, TCP),))
        store.add(spec, Intent.RUN)
        driver.add("db", running=True, tags=set())
        driver.refuse = {host}
        one = fw.Forwarder(ctx)
        await one.sync("db", spec, pid=1)  # does not raise: automatic forwards go on
        (row,) = one.rows(spec, running=True)
        assert row.kind == "explicit" and not row.active and row.host_port is None
        assert f"127.0.0.1:{host} could not be bound" in row.note
        driver.refuse = set()
        await one.sync("db", spec, pid=1)
        (row,) = one.rows(spec, running=True)
        assert row.active and row.host_port == host and row.note == ""
        store.close()

    asyncio.run(scenario())


def test_forwards_output_formats() -> None:
    import msgspec

    from ketch.api import models as m
    from ketch.cli.output import forward_line
    from ketch.cli.verbs_forwards import forwards_output

    doc = msgspec.convert(
        {
            "errors": [],
            "forwards": {
                "web": [
                    {"host_address": "127.0.0.1", "host_port": 40001, "guest_port": 8080,
                     "protocol": "tcp", "type": "automatic", "guest_address": "::",
                     "active": True, "note": "host port 8080 is taken by another program; "
                     "forwarded from 40001 instead"},
                    {"host_address": "", "host_port": None, "guest_port": 5432,
                     "protocol": "tcp", "type": "automatic", "guest_address": "127.0.0.1",
                     "active": False, "note": "not forwarded: bound to the guest's 127.0.0.1"},
                ]
            },
        },
        m.ForwardsReply,
    )  # fmt: skip
    table = forwards_output(doc, "table").splitlines()
    assert table[0].split() == ["Name", "Host", "Guest", "Protocol", "Type", "Active", "Note"]
    assert table[1].split()[:6] == ["web", "127.0.0.1:40001", ":::8080", "tcp", "automatic", "yes"]
    assert table[2].split()[:6] == ["web", "--", "127.0.0.1:5432", "tcp", "automatic", "no"]
    csv = forwards_output(doc, "csv").splitlines()
    assert csv[0] == "Name,Host,Guest,Protocol,Type,Active,Note" and len(csv) == 3
    assert '"forwards"' in forwards_output(doc, "json")
    assert forward_line(doc.forwards["web"][1]).startswith("-- -> 5432/tcp (automatic): not ")
    empty = msgspec.convert({"errors": [], "forwards": {"web": []}}, m.ForwardsReply)
    assert forwards_output(empty, "table") == "No forwards.\n"


# -- the guest's own addresses (fib_trie) ---------------------------------------------------


def test_recorded_fib_trie_gives_the_own_addresses_once_without_loopback() -> None:
    """Recorded in a network namespace with 10.0.2.15/24 on one veth, 10.97.0.23/24 and
    192.168.7.4/28 on another: network, broadcast and loopback entries are not addresses."""
    text = (DATA / "fib_trie-6.18-netns.txt").read_text()
    assert ls.parse_fib_trie(text) == ("10.0.2.15", "10.97.0.23", "192.168.7.4")


def test_a_snapshot_carries_the_addresses_or_none_without_fib_trie() -> None:
    fib = (DATA / "fib_trie-6.18-netns.txt").read_bytes()
    with_fib = b"@ketch-listeners\n# tcp\n# fib_trie\n" + fib + b"@ketch-end\n"
    (snap,) = _feed(SnapshotReader(), with_fib)
    assert snap.addresses == ("10.0.2.15", "10.97.0.23", "192.168.7.4")
    (old,) = _feed(SnapshotReader(), b"@ketch-listeners\n# tcp\n# fib_trie\n@ketch-end\n")
    assert old.addresses is None  # the guest could not read it: nothing is known


def test_hostile_fib_trie_is_bounded_and_checked() -> None:
    leaves = b"".join(b"|-- 10.1.%d.%d\n/32 host LOCAL\n" % divmod(i, 250) for i in range(100))
    junk = b"|-- 999.1.1.1\n/32 host LOCAL\n|-- 10.9.9.9\n/24 link UNICAST\n"
    junk += b"|-- 127.0.0.1\n/32 host LOCAL\n|-- 10.8.8.8\nnot a route line\n/32 host LOCAL\n"
    stream = b"@ketch-listeners\n# fib_trie\n" + junk + leaves + b"# tcp\n"
    stream += b"|-- 10.7.7.7\n/32 host LOCAL\n@ketch-end\n"  # after the section: not an address
    (snap,) = _feed(SnapshotReader(), stream)
    assert snap.addresses is not None and len(snap.addresses) == ls.MAX_ADDRESSES
    assert snap.truncated
    assert not {"999.1.1.1", "10.9.9.9", "127.0.0.1", "10.8.8.8", "10.7.7.7"} & set(snap.addresses)
