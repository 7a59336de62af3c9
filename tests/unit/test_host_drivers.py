"""An instance's driver by its host (service/drivers.py), launch's refusals on a libvirt
host, and list/info showing the host (a column only when more than one is configured)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeDriver, FakeImages
from test_cli_output import VIEWS, info_doc, list_doc, typed, view
from test_store import make_spec

from ketch.api import models as m
from ketch.cli import output
from ketch.errors import EXIT_FAILED, HostUnreachable, HostUnsupported, NotFound
from ketch.host.ssh.jump import Via
from ketch.layout import InstanceDir, Root
from ketch.model import HostSpec, InstanceSpec, Intent, State
from ketch.progress import ListReporter
from ketch.runtime.driver import Driver
from ketch.runtime.libvirt_host import LibvirtHost
from ketch.service import clone, delete, launch
from ketch.service.context import Context
from ketch.service.drivers import Drivers, refuse_launch
from ketch.store.db import Store

LV = HostSpec(name="lv", uri="qemu:///system", created=0.0)


class Opened:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, host: HostSpec, uri: str) -> Driver:
        self.calls.append((host.name, uri))
        return FakeDriver()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Context, Opened]]:
    root = Root(tmp_path)
    store = Store(root.database)
    opened = Opened()
    local = FakeDriver()
    ctx = Context(root, store, local, FakeImages())
    ctx.drivers = Drivers(root, store, local, opened)
    try:
        yield ctx, opened
    finally:
        store.close()


def test_local_is_the_qemu_driver_and_a_libvirt_host_gets_its_own(
    env: tuple[Context, Opened],
) -> None:
    ctx, opened = env
    assert ctx.driver_for(make_spec("a")) is ctx.driver
    ctx.store.add_host(LV)
    on_lv = make_spec("b", host="lv")
    first = ctx.driver_for(on_lv)
    assert first is not ctx.driver and ctx.driver_for(on_lv) is first  # made once, kept
    assert opened.calls == [("lv", "qemu:///system")]  # the URI the prober opens
    assert ctx.drivers is not None
    ctx.drivers.forget("lv")
    assert ctx.driver_for(on_lv) is not first and len(opened.calls) == 2


def test_an_unknown_host_is_not_found_with_a_hint(env: tuple[Context, Opened]) -> None:
    ctx, opened = env
    with pytest.raises(NotFound) as err:
        ctx.driver_for(make_spec("b", host="nope"))
    assert err.value.message == 'host "nope" does not exist'
    assert err.value.hint is not None and "ketch host add" in err.value.hint
    assert err.value.exit_code == EXIT_FAILED and opened.calls == []


def test_launch_refuses_an_unknown_host_before_anything_is_made(
    env: tuple[Context, Opened],
) -> None:
    ctx, _ = env
    req = launch.LaunchRequest(name="x", host="nope")
    with pytest.raises(NotFound, match='host "nope" does not exist'):
        asyncio.run(launch.launch(ctx, req, reporter=ListReporter()))
    assert ctx.store.all() == [] and not ctx.root.instance("x").path.exists()


@pytest.mark.parametrize(
    ("kw", "what"),
    [
        ({"mounts": True}, "launch --mount"),
        ({"networks": True}, "launch --network/--bridged"),
        ({"forwards": True}, "launch --forward"),
        ({"firmware": "uefi"}, "launch --firmware uefi"),
    ],
)
def test_options_the_libvirt_driver_lacks_are_refused(kw: dict[str, Any], what: str) -> None:
    args: dict[str, Any] = {"mounts": False, "networks": False, "forwards": False, "firmware": None}
    with pytest.raises(HostUnsupported) as err:
        refuse_launch(LV, **{**args, **kw})
    assert err.value.message.startswith(f"{what} is not supported on libvirt hosts yet")
    assert "(driver libvirt)" in err.value.message and err.value.exit_code == EXIT_FAILED
    refuse_launch(LV, **args)  # nothing asked that it lacks


def test_a_remote_hosts_driver_reaches_its_guests_through_the_hosts_ssh(tmp_path: Path) -> None:
    root = Root(tmp_path)
    store = Store(root.database)
    try:
        drivers = Drivers(root, store, FakeDriver())
        remote = HostSpec(name="big1", uri="qemu+ssh://ops@big1:2222/system", created=0.0)
        refuse_launch(remote, mounts=False, networks=False, forwards=False, firmware=None)
        made = drivers._libvirt(remote, "qemu+ssh://ops@big1:2222/system?command=x")
        assert isinstance(made, LibvirtHost) and made.via is not None
        assert made.via == Via(root.host_dir("big1") / "ssh", "big1", user="ops", port=2222)
        here = drivers._libvirt(LV, "qemu:///system")
        assert isinstance(here, LibvirtHost) and here.via is None
    finally:
        store.close()


def test_verbs_the_driver_lacks_name_the_host(env: tuple[Context, Opened]) -> None:
    ctx, _ = env
    ctx.require_local(make_spec("a"), "mount")  # local: fine
    with pytest.raises(HostUnsupported) as err:
        ctx.require_local(make_spec("b", host="lv"), "mount")
    assert err.value.code == "host-unsupported"
    assert err.value.message == (
        'mount is not supported on libvirt hosts yet: "b" is on host "lv" (driver libvirt)'
    )


def test_a_clone_stays_on_its_sources_host(env: tuple[Context, Opened]) -> None:
    for spec, host in ((make_spec("a"), None), (make_spec("a"), "local"),
                       (make_spec("b", host="lv"), "lv")):  # fmt: skip
        clone.refuse_another_host(spec, host)
    for spec, host in ((make_spec("a"), "lv"), (make_spec("b", host="lv"), "local")):
        with pytest.raises(HostUnsupported) as err:
            clone.refuse_another_host(spec, host)
        assert err.value.message == (
            "clone onto another host is not supported yet: "
            f'"{spec.name}" is on host "{spec.host}", not "{host}"'
        )
        assert err.value.exit_code == EXIT_FAILED
    ctx, _ = env
    ctx.store.add(make_spec("a"), Intent.STOP)
    with pytest.raises(NotFound, match='host "nope" does not exist'):
        asyncio.run(clone.clone(ctx, "a", "a2", ListReporter(), host="nope"))
    assert not ctx.store.exists("a2")


class Unanswered(FakeDriver):
    """A libvirt host's driver whose host does not answer the purge."""

    def __init__(self) -> None:
        super().__init__()
        self.purged: list[str] = []

    async def purge(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        self.purged.append(spec.name)
        raise HostUnreachable("Failed to connect socket to '/run/libvirt/libvirt-sock'")


def test_a_purge_whose_host_does_not_answer_says_what_is_left_there(
    env: tuple[Context, Opened], tmp_path: Path
) -> None:
    ctx, _ = env
    driver = Unanswered()
    assert ctx.drivers is not None
    ctx.drivers.opener = lambda host, uri: driver
    ctx.store.add_host(LV)
    spec = make_spec("b", host="lv")
    ctx.store.add(spec, Intent.STOP)
    ctx.root.instance("b").path.mkdir(parents=True)
    rep = ListReporter()
    result = asyncio.run(delete.delete(ctx, "b", rep, purge=True))
    assert result.purged and driver.purged == ["b"]
    assert ctx.store.all() == [] and not ctx.root.instance("b").path.exists()
    (warning,) = [w for w in rep.warnings if "domain and volumes" in w]
    assert 'on host "lv"' in warning and "virsh undefine ketch-b" in warning


# -- list and info show the host --------------------------------------------------------


def _two_hosts(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "hosts": 2}


ON_LV = view("delta", State.RUNNING, running=True, ssh_port=42004, host="lv")


def test_one_host_keeps_multipass_columns_and_json_has_the_host_key() -> None:
    doc = list_doc(VIEWS)
    table = output.list_output(typed(m.ListReply, doc), "table")
    assert table.splitlines()[0].split() == ["Name", "State", "IPv4", "Image"]
    rows = list(csv.reader(io.StringIO(output.list_output(typed(m.ListReply, doc), "csv"))))
    assert "Host" not in rows[0]
    out = json.loads(output.list_output(typed(m.ListReply, {**doc, "hosts": 1}), "json"))
    assert list(out) == ["list"]  # the count of hosts is not Multipass's
    assert [e["host"] for e in out["list"]] == ["local", "local", "local"]


def test_more_than_one_host_adds_a_host_column() -> None:
    doc = _two_hosts(list_doc([VIEWS[0], ON_LV]))
    lines = output.list_output(typed(m.ListReply, doc), "table").splitlines()
    assert lines[0].split() == ["Name", "State", "IPv4", "Image", "Host"]
    assert lines[1].split()[-1] == "local" and lines[2].split()[-1] == "lv"
    rows = list(csv.reader(io.StringIO(output.list_output(typed(m.ListReply, doc), "csv"))))
    assert rows[0][-1] == "Host" and [r[-1] for r in rows[1:]] == ["local", "lv"]
    out = json.loads(output.list_output(typed(m.ListReply, doc), "json"))
    assert list(out) == ["list"] and out["list"][1]["host"] == "lv"
    assert "host: lv" in output.list_output(typed(m.ListReply, doc), "yaml")


def test_info_shows_the_host_line_only_with_more_than_one_host() -> None:
    one = info_doc([ON_LV])
    assert "Host:" not in output.info_output(typed(m.InfoReply, one), "table")
    assert (
        json.loads(output.info_output(typed(m.InfoReply, one), "json"))["info"]["delta"]["host"]
        == "lv"
    )
    two = _two_hosts(one)
    text = output.info_output(typed(m.InfoReply, two), "table")
    assert any(line.split() == ["Host:", "lv"] for line in text.splitlines()), text
    rows = list(csv.reader(io.StringIO(output.info_output(typed(m.InfoReply, two), "csv"))))
    assert rows[0][-1] == "Host" and rows[1][-1] == "lv"
    assert list(json.loads(output.info_output(typed(m.InfoReply, two), "json"))) == [
        "errors",
        "info",
    ]
