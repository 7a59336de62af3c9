"""Snapshots on real VMs (tiny image, QEMU/TCG) through the real CLI.

One instance for the module; each test leaves it Stopped or Running, never
Suspended, and finds the state it needs with ``stopped``/``ensure_running``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pexpect
import pytest
from ketchcli import Ketch

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def snapvm(ketch: Ketch) -> Iterator[str]:
    with ketch.launched("snap", "--memory", "512M") as name:
        yield name


def stopped(ketch: Ketch, name: str) -> None:
    if ketch.state(name) != "Stopped":
        ketch.run("stop", name)
    assert ketch.state(name) == "Stopped"


def write_synced(ketch: Ketch, name: str, path: str, text: str) -> None:
    ketch.exec(name, "sh", "-c", f"echo {text} > {path} && sync")


def files(ketch: Ketch, name: str) -> set[str]:
    return set(ketch.exec(name, "ls", "/home/ubuntu").split())


def take(ketch: Ketch, name: str, *flags: str) -> str:
    """Take a snapshot; returns its name as the CLI printed it."""
    done = ketch.run("snapshot", name, *flags)
    m = re.fullmatch(rf"Snapshot taken: {re.escape(name)}\.(\S+)\n", done.stdout)
    assert m, done.stdout
    return m.group(1)


def snapshots(ketch: Ketch, name: str) -> dict[str, dict[str, str]]:
    doc = ketch.json("list", "--snapshots")
    assert doc["errors"] == []
    return dict(doc["info"].get(name, {}))


def test_restore_brings_back_the_disk_as_it_was(ketch: Ketch, snapvm: str) -> None:
    ketch.ensure_running(snapvm)
    write_synced(ketch, snapvm, "/home/ubuntu/before", "old")
    ketch.run("stop", snapvm)
    tags_before = set(ketch.tags(snapvm))
    snap = take(ketch, snapvm, "--comment", "clean state")
    new_tags = set(ketch.tags(snapvm)) - tags_before
    assert len(new_tags) == 1 and next(iter(new_tags)).startswith("ketch-snap-")
    assert "suspend" not in ketch.tags(snapvm)

    ketch.run("start", snapvm)
    write_synced(ketch, snapvm, "/home/ubuntu/after", "new")
    assert {"before", "after"} <= files(ketch, snapvm)
    ketch.run("stop", snapvm)
    done = ketch.run("restore", f"{snapvm}.{snap}", "--destructive")
    assert done.stdout == f"Snapshot restored: {snapvm}.{snap}\n"
    ketch.run("start", snapvm)
    got = files(ketch, snapvm)
    assert "before" in got and "after" not in got
    assert ketch.exec(snapvm, "cat", "/home/ubuntu/before") == "old\n"


def test_snapshot_and_restore_refuse_a_running_instance(ketch: Ketch, snapvm: str) -> None:
    stopped(ketch, snapvm)
    snap = take(ketch, snapvm)
    ketch.run("start", snapvm)
    count = len(ketch.tags(snapvm))
    for argv in (["snapshot", snapvm], ["restore", f"{snapvm}.{snap}", "--destructive"]):
        done = ketch.run(*argv, check=False)
        assert done.returncode == 2, done.stderr
        assert f'"{snapvm}": it is Running' in done.stderr
        assert f"hint: stop it first: 'ketch stop {snapvm}'" in done.stderr
    assert len(ketch.tags(snapvm)) == count and ketch.state(snapvm) == "Running"


def test_default_names_list_info_and_parents(ketch: Ketch, snapvm: str) -> None:
    stopped(ketch, snapvm)
    first = take(ketch, snapvm)
    second = take(ketch, snapvm, "-n", "named", "-c", "a comment")
    assert re.fullmatch(r"snapshot\d+", first) and second == "named"
    third = take(ketch, snapvm)
    assert int(third.removeprefix("snapshot")) == int(first.removeprefix("snapshot")) + 2
    listed = snapshots(ketch, snapvm)
    assert listed["named"] == {"parent": first, "comment": "a comment"}
    assert listed[third]["parent"] == "named"

    table = ketch.run("list", "--snapshots").stdout.splitlines()
    assert table[0].split() == ["Instance", "Snapshot", "Parent", "Comment"]
    assert [snapvm, "named", first, "a", "comment"] in [line.split() for line in table]

    info = ketch.json("info", f"{snapvm}.named")["info"][snapvm]["snapshots"]["named"]
    assert info["parent"] == first and info["children"] == [third]
    assert info["comment"] == "a comment" and info["cpu_count"] == "1"
    assert info["memory_size"] == str(512 * 1024**2)
    text = ketch.run("info", f"{snapvm}.named").stdout
    assert "Snapshot:       named" in text and f"Parent:         {first}" in text
    assert ketch.info(snapvm)["snapshot_count"] == str(len(listed))
    assert ketch.run("info", snapvm).stdout.count(f"Snapshots:      {len(listed)}") == 1

    every = ketch.json("info", "--snapshots", snapvm)["info"][snapvm]["snapshots"]
    assert set(every) == set(listed) and every["named"] == info
    assert "cpu_count" not in ketch.json("info", "--snapshots", snapvm)["info"][snapvm]
    refused = ketch.run("info", "--snapshots", f"{snapvm}.named", check=False)
    assert refused.returncode == 1 and "instance names" in refused.stderr

    missing = ketch.run("info", f"{snapvm}.nope", check=False)
    assert missing.returncode == 2 and f'snapshot "{snapvm}.nope" does not exist' in missing.stderr


def test_duplicate_and_invalid_names_are_refused(ketch: Ketch, snapvm: str) -> None:
    stopped(ketch, snapvm)
    take(ketch, snapvm, "-n", "dup")
    count = len(ketch.tags(snapvm))
    done = ketch.run("snapshot", snapvm, "-n", "dup", check=False)
    assert done.returncode == 2 and f"Snapshot already exists: {snapvm}.dup" in done.stderr
    done = ketch.run("snapshot", snapvm, "-n", "has.dot", check=False)
    assert done.returncode == 1 and "invalid snapshot name" in done.stderr
    assert len(ketch.tags(snapvm)) == count


def test_restore_asks_on_a_terminal_and_refuses_without_one(ketch: Ketch, snapvm: str) -> None:
    stopped(ketch, snapvm)
    snap = take(ketch, snapvm)
    ketch.run("start", snapvm)
    write_synced(ketch, snapvm, "/home/ubuntu/unsaved", "work")
    ketch.run("stop", snapvm)

    refused = ketch.run("restore", f"{snapvm}.{snap}", check=False)
    assert refused.returncode == 1
    assert "--destructive" in refused.stderr and f"ketch snapshot {snapvm}" in refused.stderr

    before = set(snapshots(ketch, snapvm))
    child = pexpect.spawn(
        sys.executable,
        ["-m", "ketch.cli.main", "restore", f"{snapvm}.{snap}"],
        env=ketch.env,
        timeout=120,
        encoding="utf-8",
    )
    try:
        child.expect(rf"Do you want to take a snapshot of {snapvm} before discarding")
        child.sendline("yes")
        child.expect(pexpect.EOF)
        transcript = child.before
    finally:
        child.close()
    assert child.exitstatus == 0, transcript
    assert f"Snapshot restored: {snapvm}.{snap}" in transcript
    (saved,) = set(snapshots(ketch, snapvm)) - before
    assert f"Snapshot taken: {snapvm}.{saved}" in transcript
    assert snapshots(ketch, snapvm)[saved]["comment"] == f"Before restoring {snap}"

    ketch.run("start", snapvm)
    assert "unsaved" not in files(ketch, snapvm)
    ketch.run("stop", snapvm)
    ketch.run("restore", f"{snapvm}.{saved}", "--destructive")
    ketch.run("start", snapvm)
    assert "unsaved" in files(ketch, snapvm)  # the state asked about was kept


def test_delete_a_snapshot_keeps_the_instance_verbs_working(ketch: Ketch, snapvm: str) -> None:
    stopped(ketch, snapvm)
    snap = take(ketch, snapvm, "-n", "doomed")
    tag = ketch.json("info", f"{snapvm}.{snap}")["info"][snapvm]["snapshots"][snap]["tag"]
    assert tag in ketch.tags(snapvm)
    ketch.run("start", snapvm)

    done = ketch.run("delete", f"{snapvm}.{snap}", check=False)  # no terminal, no --purge
    assert done.returncode == 1 and "--purge" in done.stderr
    assert snap in snapshots(ketch, snapvm)

    ketch.run("delete", "--purge", f"{snapvm}.{snap}")  # while Running: through QMP
    assert snap not in snapshots(ketch, snapvm)
    assert tag not in ketch.tags(snapvm)
    assert ketch.state(snapvm) == "Running"

    ketch.run("delete", snapvm)  # a plain instance delete is still an instance delete
    assert ketch.state(snapvm) == "Deleted"
    ketch.run("recover", snapvm)
    ketch.run("start", snapvm)
    assert ketch.state(snapvm) == "Running"


def test_a_snapshot_named_suspend_does_not_clash_with_suspend(ketch: Ketch, snapvm: str) -> None:
    stopped(ketch, snapvm)
    take(ketch, snapvm, "-n", "suspend")
    assert "suspend" not in ketch.tags(snapvm)  # the name is only in the store
    ketch.run("start", snapvm)
    boot = ketch.boot_id(snapvm)
    write_synced(ketch, snapvm, "/home/ubuntu/after-suspend-snapshot", "x")
    ketch.run("suspend", snapvm)
    assert ketch.state(snapvm) == "Suspended"
    ketch.run("start", snapvm)
    assert ketch.boot_id(snapvm) == boot  # resumed, not rebooted
    ketch.run("stop", snapvm)
    ketch.run("restore", f"{snapvm}.suspend", "--destructive")
    ketch.run("start", snapvm)
    assert "after-suspend-snapshot" not in files(ketch, snapvm)
