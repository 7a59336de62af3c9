"""service/hosts.py with a real store and a prober that needs no libvirt: what is stored,
what is refused (exit 2), what ``host list`` shows, and the hosts' mirror and repair."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import FakeDriver, FakeImages
from test_store import make_spec

from ketch.api.models import HostAddReply
from ketch.errors import (
    EXIT_FAILED,
    AlreadyExists,
    HostInUse,
    HostUnreachable,
    InvalidHost,
    NotFound,
)
from ketch.host.libvirt import NodeFacts, Prober
from ketch.layout import Root
from ketch.model import Intent
from ketch.service import hosts
from ketch.service.context import Context
from ketch.store.db import Store
from ketch.store.repair import open_store
from ketch.store.schema import MIGRATIONS

FACTS = NodeFacts(
    cpus=8, memory_total=64 << 30, memory_free=40 << 30, disk_free=500 << 30,
    disk_pool="default", libvirt_version="9.0.0", hostname="big1",
)  # fmt: skip
KNOWN = "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB\n"


class Probes:
    """The fake libvirt: answers per URI prefix; remembers what was opened."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.down: set[str] = set()

    def __call__(self, uri: str) -> NodeFacts:
        self.opened.append(uri)
        if any(uri.startswith(d) for d in self.down):
            raise HostUnreachable("Failed to connect socket to '/var/run/libvirt/libvirt-sock'")
        return FACTS


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Context, Probes]]:
    root = Root(tmp_path)
    store = Store(root.database)
    probes = Probes()
    ctx = Context(root, store, FakeDriver(), FakeImages(), prober=Prober(probes))
    try:
        yield ctx, probes
    finally:
        store.close()


def add(
    ctx: Context, name: str, uri: str, ssh_key: str | None = None, known_hosts: str | None = None
) -> HostAddReply:
    return asyncio.run(
        hosts.add(ctx, name, uri, ssh_key=ssh_key, known_hosts=known_hosts, timeout=5)
    )


def test_add_stores_the_host_as_given_and_probes_it(env: tuple[Context, Probes]) -> None:
    ctx, probes = env
    row = add(ctx, "lv", "QEMU:///system").host
    assert (row.name, row.driver, row.state, row.cpus, row.disk_pool) == (
        "lv", "libvirt", "reachable", 8, "default",
    )  # fmt: skip
    assert probes.opened == ["qemu:///system"]
    assert [h.uri for h in ctx.store.hosts()] == ["qemu:///system"]
    mirrored = json.loads(ctx.root.hosts_record.read_text())
    assert [h["name"] for h in mirrored["hosts"]] == ["lv"]


def test_a_qemu_ssh_host_is_opened_through_its_wrapper(
    env: tuple[Context, Probes], tmp_path: Path
) -> None:
    ctx, probes = env
    key = tmp_path / "id"
    key.write_text("key")
    add(ctx, "big1", "qemu+ssh://root@127.0.0.1:2222/system", ssh_key=str(key), known_hosts=KNOWN)
    wrapper = ctx.root.host_dir("big1") / "ssh"
    assert probes.opened == [f"qemu+ssh://root@127.0.0.1:2222/system?command={wrapper}"]
    assert (ctx.root.host_dir("big1") / "known_hosts").read_text() == KNOWN
    assert f'IdentityFile "{key}"' in (ctx.root.host_dir("big1") / "ssh_config").read_text()
    stored = ctx.store.get_host("big1")
    assert (stored.ssh_key, stored.known_hosts) == (str(key), KNOWN)


def test_an_unreachable_host_is_added_all_the_same(env: tuple[Context, Probes]) -> None:
    ctx, probes = env
    probes.down.add("qemu:///")
    row = add(ctx, "lv", "qemu:///system").host
    assert row.state == "unreachable" and "libvirt-sock" in row.reason and row.cpus is None
    assert [h.name for h in ctx.store.hosts()] == ["lv"]


@pytest.mark.parametrize(
    ("name", "uri", "kw", "error", "says"),
    [
        ("local", "qemu:///system", {}, AlreadyExists, "built-in host"),
        ("a.b", "qemu:///system", {}, InvalidHost, '"." separates'),
        ("-x", "qemu:///system", {}, InvalidHost, "hostname rules"),
        ("x", "esx://h/system", {}, InvalidHost, "scheme 'esx'"),
        ("x", "qemu:///system", {"ssh_key": "/etc/hostname"}, InvalidHost, "without ssh"),
        ("x", "qemu+ssh://h/system", {"ssh_key": "id"}, InvalidHost, "not an absolute path"),
        ("x", "qemu+ssh://h/system", {"ssh_key": "/no/such/key"}, InvalidHost, "No such file"),
        ("x", "qemu+ssh://h/system", {"ssh_key": "/"}, InvalidHost, "not a readable file"),
        ("x", "qemu+ssh://h/system", {"ssh_key": '/k"ey'}, InvalidHost, "quotes"),
        ("x", "qemu+ssh://h/system", {"ssh_key": "/k\ney"}, InvalidHost, "control characters"),
        ("x", "qemu+ssh://h/system", {"known_hosts": "garbage\n"}, InvalidHost, "known_hosts"),
        ("x", "qemu+ssh://h/system", {"known_hosts": "# only\n"}, InvalidHost, "known_hosts"),
    ],
)
def test_refusals(
    env: tuple[Context, Probes], name: str, uri: str, kw: dict[str, str], error: type[Exception],
    says: str,
) -> None:  # fmt: skip
    ctx, probes = env
    with pytest.raises(error) as err:
        add(ctx, name, uri, **kw)
    assert says in str(err.value)
    assert getattr(err.value, "exit_code", None) == EXIT_FAILED  # ketchd refused: exit 2
    assert ctx.store.hosts() == [] and probes.opened == []


def test_one_host_per_name_and_per_uri(env: tuple[Context, Probes]) -> None:
    ctx, _ = env
    add(ctx, "lv", "qemu:///system")
    with pytest.raises(AlreadyExists, match='host "lv" already exists'):
        add(ctx, "lv", "qemu+ssh://h/system")
    with pytest.raises(AlreadyExists, match='is already host "lv"'):
        add(ctx, "lv2", "qemu:///system")


def test_listing_shows_local_first_and_counts_instances(env: tuple[Context, Probes]) -> None:
    ctx, probes = env
    add(ctx, "lv", "qemu:///system")
    add(ctx, "far", "qemu+ssh://far/system")
    ctx.store.add(make_spec("a"), Intent.STOP)
    ctx.store.add(make_spec("b", host="lv"), Intent.STOP)
    ctx.store.add(make_spec("c", host="lv"), Intent.RUN)
    probes.down.add("qemu+ssh://far")
    rows = asyncio.run(hosts.listing(ctx, 5)).list
    assert [(r.name, r.driver, r.instances, r.state) for r in rows] == [
        ("local", "qemu", 1, "reachable"),
        ("far", "libvirt", 0, "unreachable"),
        ("lv", "libvirt", 2, "reachable"),
    ]
    local = rows[0]
    assert (
        local.uri == "" and local.memory_free and local.disk_free and local.libvirt_version is None
    )


def test_remove(env: tuple[Context, Probes]) -> None:
    ctx, _ = env
    add(ctx, "far", "qemu+ssh://far/system", known_hosts=KNOWN)
    with pytest.raises(InvalidHost, match="cannot be removed"):
        hosts.remove(ctx, "local")
    with pytest.raises(NotFound):
        hosts.remove(ctx, "nosuch")
    ctx.store.add(make_spec("a", host="far"), Intent.STOP)
    ctx.store.add(make_spec("b", host="far"), Intent.STOP)
    with pytest.raises(HostInUse, match='host "far" has 2 instances: a, b') as err:
        hosts.remove(ctx, "far")
    assert err.value.exit_code == EXIT_FAILED
    ctx.store.remove("a")
    ctx.store.remove("b")
    assert ctx.root.host_dir("far").is_dir()
    assert hosts.remove(ctx, "far").name == "far"
    assert ctx.store.hosts() == [] and not ctx.root.host_dir("far").exists()
    assert json.loads(ctx.root.hosts_record.read_text())["hosts"] == []


def test_a_spec_without_a_host_is_on_local(tmp_path: Path) -> None:
    from ketch.store.records import spec_from_json, spec_to_json

    doc = json.loads(spec_to_json(make_spec("a")))
    assert doc.pop("host") == "local"
    assert spec_from_json(json.dumps(doc)).host == "local"  # a record from before hosts
    assert spec_from_json(spec_to_json(replace(make_spec("a"), host="lv"))).host == "lv"


def test_schema_2_moves_to_3_with_the_hosts_table(tmp_path: Path) -> None:
    path = tmp_path / "ketch.db"
    with sqlite3.connect(path) as raw:
        for script in MIGRATIONS[:2]:
            raw.executescript(script)
        raw.execute("PRAGMA user_version = 2")
    store = Store(path)
    try:
        assert store.schema_version == len(MIGRATIONS) >= 3 and store.hosts() == []
    finally:
        store.close()


def test_hosts_come_back_from_their_mirror_when_the_database_is_lost(
    env: tuple[Context, Probes],
) -> None:
    ctx, _ = env
    add(ctx, "lv", "qemu:///system")
    add(ctx, "far", "qemu+ssh://far/system", known_hosts=KNOWN)
    ctx.store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(ctx.root.database) + suffix).unlink(missing_ok=True)
    store, rep = open_store(ctx.root)
    try:
        assert rep.damage == "it is missing"
        assert [(h.name, h.known_hosts) for h in store.hosts()] == [("far", KNOWN), ("lv", None)]
        assert rep.salvaged["hosts (from hosts.json)"] == 2
    finally:
        store.close()
    ctx.store = Store(ctx.root.database)  # for the fixture's close
