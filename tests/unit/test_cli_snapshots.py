"""The CLI's side of snapshots, clones and settings: parsing, refusals, output formats.

Refusals run ``main()`` in-process with ``KETCH_STORAGE`` below a regular
file, so any attempt to reach (or start) ketchd would fail with exit code 3
instead of the expected 1: they happen before the daemon is asked anything.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import yaml

from ketch.api import models as m
from ketch.cli import main as cli
from ketch.cli import output, snapshot_ref, verbs_snapshots
from ketch.cli.main import build_parser
from ketch.errors import EXIT_USAGE, InvalidArgument

T = TypeVar("T")


def typed(model: type[T], doc: Any) -> T:
    """A document as the client decodes it (through JSON into the reply model)."""
    return msgspec.json.decode(json.dumps(doc), type=model)


@pytest.fixture
def no_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("KETCH_STORAGE", str(blocker / "storage"))
    return blocker


# -- parsing ----------------------------------------------------------------------------------


def test_snapshot_flags() -> None:
    ns = build_parser().parse_args(["snapshot", "web", "-n", "pre", "-c", "before upgrade"])
    assert (ns.instance, ns.name, ns.comment, ns.func.resolve()) == (
        "web", "pre", "before upgrade", verbs_snapshots.cmd_snapshot,
    )  # fmt: skip
    ns = build_parser().parse_args(["snapshot", "--name", "x", "--comment", "c", "web"])
    assert (ns.name, ns.comment) == ("x", "c")
    assert build_parser().parse_args(["snapshot", "web", "-m", "msg"]).comment == "msg"
    bare = build_parser().parse_args(["snapshot", "web"])
    assert (bare.name, bare.comment) == (None, "")


def test_restore_clone_list_flags() -> None:
    p = build_parser()
    ns = p.parse_args(["restore", "web.snapshot1", "--destructive"])
    assert (ns.snapshot, ns.destructive, ns.func.resolve()) == (
        "web.snapshot1",
        True,
        verbs_snapshots.cmd_restore,
    )
    assert p.parse_args(["restore", "-d", "web.s"]).destructive is True
    assert p.parse_args(["restore", "web.s"]).destructive is False
    ns = p.parse_args(["clone", "web", "-n", "web2"])
    assert (ns.source, ns.name, ns.func.resolve()) == ("web", "web2", verbs_snapshots.cmd_clone)
    assert p.parse_args(["clone", "web"]).name is None
    assert p.parse_args(["list", "--snapshots", "--format", "csv"]).snapshots is True
    assert p.parse_args(["list"]).snapshots is False
    assert p.parse_args(["delete", "web.s1", "db", "--purge"]).names == ["web.s1", "db"]


@pytest.mark.parametrize("ref", ["web", "web.", ".snap", ""])
def test_bad_snapshot_references(ref: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid snapshot") as err:
        snapshot_ref(ref)
    assert err.value.hint is not None and "INSTANCE.SNAPSHOT" in err.value.hint


def test_snapshot_reference_splits_at_the_first_dot() -> None:
    assert snapshot_ref("web.snapshot1") == ("web", "snapshot1")
    assert snapshot_ref("web.a.b") == ("web", "a.b")  # the daemon then finds no "a.b"


# -- refusals before any daemon contact ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(["restore", "web"], "invalid snapshot 'web'", id="restore-no-snapshot"),
        pytest.param(["delete", "web.s1"], "can only be purged", id="delete-snapshot-no-purge"),
        pytest.param(["delete", "web.", "--purge"], "invalid snapshot", id="delete-bad-ref"),
        pytest.param(["delete", "--all", "web.s1"], "not both", id="delete-all-and-names"),
        pytest.param(["snapshot", "web.s1"], "invalid instance name", id="snapshot-dotted"),
    ],
)
def test_refusals_exit_1_before_the_daemon(
    no_daemon: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    assert cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert words in err
    assert "hint: " in err


def test_restore_asks_the_daemon_before_it_asks_the_user(
    no_daemon: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Existence and state are checked first (here: no daemon, exit 3), the question last;
    the refusal without a terminal is in tests/integration/test_parity.py."""
    assert cli.main(["restore", "web.s1"]) == 3
    err = capsys.readouterr().err
    assert "ketchd" in err and "Do you want" not in err


# -- output -------------------------------------------------------------------------------------

LIST_DOC: dict[str, Any] = {
    "errors": [],
    "info": {
        "web": {
            "snapshot1": {"parent": "", "comment": ""},
            "snapshot2": {"parent": "snapshot1", "comment": "before the upgrade\nsecond line"},
        },
        "db": {"nightly": {"parent": "", "comment": "x" * 80}},
    },
}


def test_snapshot_list_table() -> None:
    text = output.snapshot_list_output(typed(m.SnapshotListReply, LIST_DOC), "table")
    lines = text.splitlines()
    assert lines[0].split() == ["Instance", "Snapshot", "Parent", "Comment"]
    assert lines[1].split() == ["web", "snapshot1", "--", "--"]
    assert lines[2].split()[:3] == ["web", "snapshot2", "snapshot1"]
    assert lines[2].endswith("before the upgrade…")  # one line per snapshot
    assert lines[3].endswith("x" * 49 + "…")
    assert len(lines) == 4


def test_snapshot_list_empty() -> None:
    assert output.snapshot_list_output(
        typed(m.SnapshotListReply, {"errors": [], "info": {}}), "table"
    ) == ("No snapshots found.\n")
    assert output.snapshot_list_output(
        typed(m.SnapshotListReply, {"errors": [], "info": {}}), "csv"
    ) == ("Instance,Snapshot,Parent,Comment\n")


def test_snapshot_list_csv_json_yaml() -> None:
    rows = list(
        csv.reader(
            io.StringIO(output.snapshot_list_output(typed(m.SnapshotListReply, LIST_DOC), "csv"))
        )
    )
    assert rows[0] == ["Instance", "Snapshot", "Parent", "Comment"]
    assert rows[2] == ["web", "snapshot2", "snapshot1", "before the upgrade\nsecond line"]
    assert (
        json.loads(output.snapshot_list_output(typed(m.SnapshotListReply, LIST_DOC), "json"))
        == LIST_DOC
    )
    assert (
        yaml.safe_load(output.snapshot_list_output(typed(m.SnapshotListReply, LIST_DOC), "yaml"))
        == LIST_DOC
    )


SNAP = {
    "cpu_count": "2",
    "disk_space": str(5 * 1024**3),
    "memory_size": str(1024**3),
    "mounts": {},
    "created": "2026-11-26T05:54:28Z",
    "parent": "",
    "children": ["snapshot2", "snapshot3"],
    "comment": "first",
    "tag": "ketch-snap-0123",
}


def test_snapshot_info_table() -> None:
    doc = {"errors": [], "info": {"web": {"snapshots": {"snapshot1": SNAP}}}}
    text = output.info_output(typed(m.InfoReply, doc), "table")
    pairs = dict(line.split(":", 1) for line in text.splitlines())
    assert {k: v.strip() for k, v in pairs.items()} == {
        "Snapshot": "snapshot1",
        "Instance": "web",
        "CPU(s)": "2",
        "Disk space": "5.0GiB",
        "Memory size": "1.0GiB",
        "Mounts": "--",
        "Created": "2026-11-26T05:54:28Z",
        "Parent": "--",
        "Children": "snapshot2, snapshot3",
        "Comment": "first",
    }


def test_snapshot_info_csv() -> None:
    doc = {"errors": [], "info": {"web": {"snapshots": {"snapshot1": SNAP}}}}
    rows = list(csv.reader(io.StringIO(output.info_output(typed(m.InfoReply, doc), "csv"))))
    assert rows[0][:2] == ["Snapshot", "Instance"]
    assert rows[1][:3] == ["snapshot1", "web", "2"] and rows[1][-2:] == [
        "snapshot2;snapshot3",
        "first",
    ]


def test_instance_and_snapshot_info_together() -> None:
    instance: dict[str, Any] = {
        "state": "Stopped",
        "image_release": "ketch tiny",
        "image_hash": "ketch:tiny@1",
        "release": "",
        "cpu_count": "1",
        "memory": {"total": 1024**3},
        "disks": {"vda1": {"total": str(5 * 1024**3)}},
        "load": [],
        "ipv4": [],
        "mounts": {},
        "snapshot_count": "1",
        "created": "2026-11-26T00:00:00Z",
        "ssh": {"host": "127.0.0.1", "user": "ubuntu", "port": 42001},
        "accel": "",
        "image": "tiny",
        "pid": None,
        "quarantine": None,
        "inconsistencies": [],
        "forwards": [],
        "snapshots": {"snapshot1": SNAP},
    }
    text = output.info_output(
        typed(m.InfoReply, {"errors": [], "info": {"web": instance}}), "table"
    )
    first, second = text.split("\n\n")
    assert "Name:           web" in first and "Snapshots:      1" in first
    assert second.startswith("Snapshot:       snapshot1")
