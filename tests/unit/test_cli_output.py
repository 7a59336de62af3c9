"""``ketch list`` / ``info`` / ``find`` output in table, json, csv and yaml.

The sample documents are made the way the daemon makes them: real
:class:`~ketch.service.inspect.View` objects passed through
``inspect.list_entry`` / ``inspect.info_entry`` (and ``catalog`` rows through
``asdict``), then through JSON, as the client receives them.  So a change of
shape on the daemon side shows up here.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, replace
from typing import Any, TypeVar

import msgspec
import pytest
import yaml

from ketch.api import models as m
from ketch.cli import output
from ketch.images.catalog import FindRow, tiny_row
from ketch.model import (
    BootSpec,
    Derived,
    Inconsistency,
    InconsistencyCode,
    InstanceSpec,
    Intent,
    Observation,
    PidStatus,
    State,
)
from ketch.service import inspect
from ketch.service.guest_stats import NONE, GuestStats
from ketch.store.db import Record

GiB = 1024**3


T = TypeVar("T")


def typed(model: type[T], doc: Any) -> T:
    """A document as the client decodes it (through JSON into the reply model)."""
    return msgspec.json.decode(json.dumps(doc), type=model)


def spec(name: str, **kw: Any) -> InstanceSpec:
    base: dict[str, Any] = dict(
        name=name,
        image="tiny",
        image_id="ketch:tiny@20261126",
        release="ketch tiny 2026-11-26",
        cpus=2,
        memory=GiB,
        disk=5 * GiB,
        boot=BootSpec(kernel="/k"),
        base_disk="/vault/tiny.qcow2",
        ssh_port=42001,
        mac="52:54:00:00:00:01",
        instance_id="i-1",
        created=1795670361.0,
    )
    base.update(kw)
    return InstanceSpec(**base)


def view(
    name: str,
    state: State,
    *,
    running: bool = False,
    incs: tuple[Inconsistency, ...] = (),
    shutdown_at: float | None = None,
    quarantine: str | None = None,
    **kw: Any,
) -> inspect.View:
    obs = Observation(
        pid=4242 if running else None,
        pid_status=PidStatus.OURS if running else PidStatus.NONE,
        qmp_status="running" if running else None,
        qmp_error=None,
        suspend_tag=False,
        tag_error=None,
        disk_exists=True,
    )
    record = Record(spec(name, **kw), Intent.RUN, state is State.DELETED, shutdown_at, quarantine)
    return inspect.View(record, obs, Derived(state, incs, running))


STRAY = Inconsistency(
    InconsistencyCode.STRAY_SUSPEND_TAG,
    "the disk holds a 'suspend' tag",
    "'start' boots afresh and removes it",
)
EXITED = Inconsistency(
    InconsistencyCode.EXITED_UNEXPECTEDLY, "its QEMU is not running", "'start' boots it again"
)

VIEWS = [
    view("alpha", State.RUNNING, running=True, ssh_port=42001),
    view("bravo", State.STOPPED, incs=(STRAY, EXITED), ssh_port=42002, release=""),
    view("charlie", State.SUSPENDED, ssh_port=42003),
]


def wire(doc: Any) -> Any:
    """What the client gets: the document after a trip through JSON."""
    return json.loads(msgspec.json.encode(doc))


def list_doc(views: list[inspect.View]) -> dict[str, Any]:
    result: dict[str, Any] = wire({"list": [inspect.list_entry(v) for v in views]})
    return result


def info_doc(
    views: list[inspect.View], errors: list[str] | None = None, guest: GuestStats = NONE
) -> dict[str, Any]:
    doc = {
        "errors": errors or [],
        # as the daemon does: guest statistics only for running instances
        "info": {
            v.name: inspect.info_entry(v, accel="tcg", guest=guest if v.derived.running else NONE)
            for v in views
        },
    }
    result: dict[str, Any] = wire(doc)
    return result


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


# -- list ----------------------------------------------------------------------------


def test_list_table() -> None:
    out = output.list_output(typed(m.ListReply, list_doc(VIEWS)), "table")
    lines = out.splitlines()
    assert lines[0].split() == ["Name", "State", "IPv4", "Image"]
    assert lines[1].split() == ["alpha", "Running", "10.0.2.15", "ketch", "tiny", "2026-11-26"]
    assert lines[2].split() == ["bravo", "Stopped", "(!)", "--", "--"]
    assert lines[3].split()[:3] == ["charlie", "Suspended", "--"]
    # columns line up: every row's State starts where the header's does
    col = lines[0].index("State")
    states = ("State", "Running", "Stopped", "Suspended")
    assert all(line[col:].startswith(states) for line in lines)
    assert all(line == line.rstrip() for line in lines)


def test_list_table_empty_says_no_instances() -> None:
    assert output.list_output(typed(m.ListReply, {"list": []}), "table") == "No instances found.\n"


def test_list_json_is_multipass_shaped() -> None:
    doc = list_doc(VIEWS)
    out = json.loads(output.list_output(typed(m.ListReply, doc), "json"))
    assert list(out) == ["list"]
    assert out == doc
    first = out["list"][0]
    assert {"name", "state", "ipv4", "release"} <= set(first)
    assert first["ipv4"] == ["10.0.2.15"]
    assert out["list"][1]["ipv4"] == []


def test_list_json_empty() -> None:
    assert json.loads(output.list_output(typed(m.ListReply, {"list": []}), "json")) == {"list": []}


def test_list_csv() -> None:
    rows = csv_rows(output.list_output(typed(m.ListReply, list_doc(VIEWS)), "csv"))
    assert rows[0] == ["Name", "State", "IPv4", "IPv6", "Release", "AllIPv4", "SSH"]
    assert rows[1] == [
        "alpha", "Running", "10.0.2.15", "", "ketch tiny 2026-11-26", "10.0.2.15",
        "127.0.0.1:42001",
    ]  # fmt: skip
    assert rows[2] == ["bravo", "Stopped", "", "", "", "", "127.0.0.1:42002"]
    assert len(rows) == 4


def test_list_csv_empty_is_header_only() -> None:
    assert csv_rows(output.list_output(typed(m.ListReply, {"list": []}), "csv")) == [
        ["Name", "State", "IPv4", "IPv6", "Release", "AllIPv4", "SSH"]
    ]


def test_list_yaml_is_keyed_by_name() -> None:
    out = yaml.safe_load(output.list_output(typed(m.ListReply, list_doc(VIEWS)), "yaml"))
    assert list(out) == ["alpha", "bravo", "charlie"]
    assert out["alpha"][0]["state"] == "Running"
    assert out["alpha"][0]["ipv4"] == ["10.0.2.15"]
    assert "name" not in out["alpha"][0]
    assert out["bravo"][0]["inconsistencies"] == 2


def test_list_yaml_of_names_that_look_like_other_types() -> None:
    doc = list_doc([view("yes", State.STOPPED), view("n1e5", State.STOPPED)])
    out = yaml.safe_load(output.list_output(typed(m.ListReply, doc), "yaml"))
    assert set(out) == {"yes", "n1e5"}


# -- info ------------------------------------------------------------------------------


def test_info_json_is_multipass_shaped() -> None:
    doc = info_doc(VIEWS[:2], errors=['instance "ghost" does not exist'])
    out = json.loads(output.info_output(typed(m.InfoReply, doc), "json"))
    assert list(out) == ["errors", "info"]
    assert out["errors"] == ['instance "ghost" does not exist']
    assert set(out["info"]) == {"alpha", "bravo"}
    alpha = out["info"]["alpha"]
    for key in ("state", "image_release", "image_hash", "release", "cpu_count", "memory",
                "disks", "load", "ipv4", "mounts", "snapshot_count"):  # fmt: skip
        assert key in alpha
    assert alpha["memory"]["total"] == GiB
    assert out["info"]["bravo"]["inconsistencies"][0]["code"] == "stray-suspend-tag"


# What guest_stats.parse makes of a running guest's answer.
GUEST = GuestStats(
    load=(0.08, 0.03, 0.01),
    mem_used=GiB // 4,
    mem_total=GiB - 64 * 1024**2,
    disk_total=5 * GiB,
    disk_used=GiB,
    release="Debian GNU/Linux 12 (bookworm)",
)


def table_fields(out: str) -> dict[str, str]:
    return {
        line[:16].strip().rstrip(":"): line[16:] for line in out.splitlines() if line[:16].strip()
    }


def test_info_table_fields_of_a_running_instance() -> None:
    fields = table_fields(
        output.info_output(typed(m.InfoReply, info_doc([VIEWS[0]], guest=GUEST)), "table")
    )
    assert fields["Name"] == "alpha"
    assert fields["State"] == "Running"
    assert fields["Snapshots"] == "0"
    assert fields["IPv4"] == "10.0.2.15"
    assert fields["Release"] == "Debian GNU/Linux 12 (bookworm)"
    assert fields["Image hash"] == "ketch:tiny@20261126"
    assert fields["Image release"] == "ketch tiny 2026-11-26"
    assert fields["CPU(s)"] == "2"
    assert fields["Load"] == "0.08 0.03 0.01"
    assert fields["Disk usage"] == "1.0GiB out of 5.0GiB"
    assert fields["Memory usage"] == "256.0MiB out of 960.0MiB"
    assert fields["Mounts"] == "--"
    assert fields["SSH"] == "ubuntu@127.0.0.1:42001"
    assert fields["Accel"] == "tcg"
    assert "Inconsistency" not in fields


def test_ipv4_is_what_the_guest_shows_the_reachable_address_first() -> None:
    running = VIEWS[0]
    assert running.ipv4 == ["10.0.2.15"]  # the guest not seen yet: user-mode's fixed address
    managed = replace(running, managed=("10.97.0.23",))
    assert managed.ipv4 == ["10.97.0.23", "10.0.2.15"]
    seen = replace(managed, guest=("10.0.2.15", "10.97.0.23", "172.17.0.1"))
    assert seen.ipv4 == ["10.97.0.23", "10.0.2.15", "172.17.0.1"]
    lost = replace(managed, guest=("10.0.2.15",))  # the lease's address is not in the guest
    assert lost.ipv4 == ["10.0.2.15"]
    assert replace(VIEWS[2], guest=("10.0.2.15",)).ipv4 == []  # not running: no address


def test_list_and_info_tables_show_one_address_per_line_as_multipass() -> None:
    several = replace(VIEWS[0], guest=("10.0.2.15", "172.17.0.1"))
    lines = output.list_output(typed(m.ListReply, list_doc([several])), "table").splitlines()
    col = lines[0].index("IPv4")
    assert lines[1][col:].startswith("10.0.2.15 ")
    assert lines[2] == " " * col + "172.17.0.1"
    info = output.info_output(typed(m.InfoReply, info_doc([several], guest=GUEST)), "table")
    at = info.splitlines().index("IPv4:           10.0.2.15")
    assert info.splitlines()[at + 1] == " " * 16 + "172.17.0.1"
    doc = json.loads(output.list_output(typed(m.ListReply, list_doc([several])), "json"))
    assert doc["list"][0]["ipv4"] == ["10.0.2.15", "172.17.0.1"]


def test_info_table_fields_of_a_stopped_instance() -> None:
    fields = table_fields(output.info_output(typed(m.InfoReply, info_doc([VIEWS[2]])), "table"))
    assert fields["State"] == "Suspended"
    assert fields["IPv4"] == "--"
    assert fields["Release"] == "--"
    assert fields["Load"] == "--"
    assert fields["Disk usage"] == "-- out of 5.0GiB"
    assert fields["Memory usage"] == "-- out of 1.0GiB"
    assert fields["Accel"] == "--"


def test_info_table_values_line_up_at_column_16() -> None:
    out = output.info_output(typed(m.InfoReply, info_doc([VIEWS[0]])), "table")
    for line in out.splitlines():
        assert line[15] == " " and line[16] != " ", line


def test_info_table_shows_inconsistencies_with_their_way_out() -> None:
    out = output.info_output(typed(m.InfoReply, info_doc([VIEWS[1]])), "table")
    lines = out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("Inconsistency:"))
    assert STRAY.message in lines[i]
    assert lines[i + 1].strip() == f"-> {STRAY.action}"
    assert lines[i + 2].strip() == EXITED.message
    assert lines[i + 3].strip() == f"-> {EXITED.action}"
    assert "Accel:          --" in out  # not running: no accelerator


def test_info_table_shows_delayed_shutdown_and_quarantine() -> None:
    v = view("d", State.DELAYED_SHUTDOWN, running=True, shutdown_at=1795670400.0,
             quarantine="disk is corrupt")  # fmt: skip
    out = output.info_output(typed(m.InfoReply, info_doc([v])), "table")
    assert "Shutdown at:    2026-11-26T" in out
    assert "Quarantine:     disk is corrupt" in out


def test_info_table_several_instances_are_blank_line_separated() -> None:
    out = output.info_output(typed(m.InfoReply, info_doc(VIEWS)), "table")
    blocks = out.rstrip("\n").split("\n\n")
    assert [b.splitlines()[0].split()[1] for b in blocks] == ["alpha", "bravo", "charlie"]


def test_info_csv() -> None:
    out = output.info_output(typed(m.InfoReply, info_doc(VIEWS[:2], guest=GUEST)), "csv")
    rows = csv_rows(out)
    header = rows[0]
    assert header[:5] == ["Name", "State", "Ipv4", "Ipv6", "Release"]
    assert header[-1] == "Inconsistencies"
    alpha = dict(zip(header, rows[1], strict=True))
    bravo = dict(zip(header, rows[2], strict=True))
    assert alpha["Name"] == "alpha" and alpha["State"] == "Running"
    assert alpha["Ipv4"] == "10.0.2.15" and alpha["CPU(s)"] == "2"
    assert alpha["Memory total"] == str(GUEST.mem_total)
    assert alpha["Memory usage"] == str(GUEST.mem_used)
    assert alpha["Disk total"] == str(5 * GiB) and alpha["Disk usage"] == str(GiB)
    assert alpha["Load"] == "0.08 0.03 0.01"
    assert alpha["Release"] == "Debian GNU/Linux 12 (bookworm)"
    assert alpha["SSH port"] == "42001" and alpha["Accel"] == "tcg"
    assert bravo["Inconsistencies"] == "2"
    assert alpha["Inconsistencies"] == "0"


def test_info_yaml() -> None:
    out = yaml.safe_load(
        output.info_output(typed(m.InfoReply, info_doc([VIEWS[0]], errors=["x"])), "yaml")
    )
    assert out["errors"] == ["x"]
    assert out["alpha"]["state"] == "Running"
    assert out["alpha"]["ssh"] == {"host": "127.0.0.1", "port": 42001, "user": "ubuntu"}


# -- find ----------------------------------------------------------------------------------


def find_doc() -> dict[str, Any]:
    rows = [
        tiny_row(None),
        FindRow(
            remote="release",
            aliases=("noble", "24.04", "lts"),
            release="24.04 LTS",
            version="20261120",
            description="Ubuntu 24.04 LTS",
            os="Ubuntu",
            product="com.ubuntu.cloud:server:24.04:amd64",
        ),
        FindRow(
            remote="mirror",
            aliases=(),
            release="22.04 LTS",
            version="20261101",
            description="",
            os="Ubuntu",
            product="com.ubuntu.cloud:server:22.04:amd64",
        ),
        FindRow(remote="broken", error="HTTP 404 Not Found"),
    ]
    result: dict[str, Any] = wire({"images": [asdict(r) for r in rows]})
    return result


def test_find_table() -> None:
    out = output.find_output(typed(m.FindReply, find_doc()), "table")
    lines = out.splitlines()
    assert lines[0].split() == ["Image", "Aliases", "Version", "Description"]
    assert lines[1].split()[0] == "tiny"
    assert lines[2].split() == ["noble", "24.04,lts", "20261120", "Ubuntu", "24.04", "LTS"]
    # a remote other than the defaults is spelled out; no alias: the product id
    assert lines[3].split()[0] == "mirror:com.ubuntu.cloud:server:22.04:amd64"
    assert lines[3].split()[-2:] == ["22.04", "LTS"]  # no description: the release
    assert len(lines) == 4  # the broken remote is not a row (it goes to stderr)


def test_find_table_only_errors_is_empty_and_errors_are_listed_apart() -> None:
    doc = wire({"images": [asdict(FindRow(remote="broken", error="offline"))]})
    assert output.find_output(typed(m.FindReply, doc), "table") == ""
    assert output.find_errors(typed(m.FindReply, doc)) == ["offline"]
    assert output.find_errors(typed(m.FindReply, find_doc())) == ["HTTP 404 Not Found"]


def test_find_csv_skips_error_rows() -> None:
    # Multipass's columns (src/client/cli/formatter/csv_formatter.cpp): other aliases by ";"
    rows = csv_rows(output.find_output(typed(m.FindReply, find_doc()), "csv"))
    assert rows[0] == ["Image", "Remote", "Aliases", "OS", "Release", "Version", "Type"]
    assert rows[2] == [
        "noble", "release", "24.04;lts", "Ubuntu", "24.04 LTS", "20261120", "Cloud Image"
    ]  # fmt: skip
    assert [r[1] for r in rows[1:]] == ["ketch", "release", "mirror"]


FIND_IMAGES = {
    "tiny": {"aliases": [], "os": "ketch", "release": "ketch tiny", "remote": "ketch",
             "version": ""},
    "noble": {"aliases": ["24.04", "lts"], "os": "Ubuntu", "release": "24.04 LTS",
              "remote": "release", "version": "20261120"},
    "mirror:com.ubuntu.cloud:server:22.04:amd64": {"aliases": [], "os": "Ubuntu",
        "release": "22.04 LTS", "remote": "mirror", "version": "20261101"},
}  # fmt: skip


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_find_json_and_yaml_are_multipass_objects_keyed_by_image(fmt: str) -> None:
    """Multipass's shape (src/client/cli/formatter/json_formatter.cpp): ``images`` is an
    object keyed by image name; the unreachable remote is not in it (it goes to stderr)."""
    text = output.find_output(typed(m.FindReply, find_doc()), fmt)
    doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    assert doc == {"errors": [], "images": FIND_IMAGES}
    assert list(doc) == ["errors", "images"]
    assert list(doc["images"]["noble"]) == ["aliases", "os", "release", "remote", "version"]
    assert "HTTP 404" not in text


# -- helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "--"),
        ("", "--"),
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1.0KiB"),
        (1536, "1.5KiB"),
        (GiB, "1.0GiB"),
        (str(5 * GiB), "5.0GiB"),
        (3 * 1024**4, "3.0TiB"),
        (2048 * 1024**4, "2048.0TiB"),
    ],
)
def test_human(n: int | str | None, text: str) -> None:
    assert output.human(n) == text


def test_table_pads_to_the_widest_cell() -> None:
    out = output.table(["A", "B"], [["long-value", "x"], ["s", "y"]])
    assert out == "A           B\nlong-value  x\ns           y\n"


def test_to_csv_quotes_commas() -> None:
    assert output.to_csv(["a"], [["x,y"]]) == 'a\n"x,y"\n'


def test_json_and_yaml_output_are_byte_for_byte_the_daemons_document() -> None:
    """Through the typed models and back: same keys, same order, same value types."""
    docs: list[tuple[Any, type[Any], Any]] = [
        (list_doc(VIEWS), m.ListReply, output.list_output),
        (info_doc(VIEWS, errors=["e"], guest=GUEST), m.InfoReply, output.info_output),
        (info_doc(VIEWS[1:]), m.InfoReply, output.info_output),
    ]
    for doc, model, show in docs:
        assert show(typed(model, doc), "json") == json.dumps(doc, indent=4) + "\n"
    info = info_doc(VIEWS, guest=GUEST)
    expected = yaml.safe_dump(
        {"errors": [], **info["info"]}, sort_keys=False, default_flow_style=False
    )
    assert output.info_output(typed(m.InfoReply, info), "yaml") == expected
