"""Clones on real VMs (tiny image, QEMU/TCG) through the real CLI.

A clone is a new instance: its own disk (no snapshot tags), instance-id,
hostname, MAC, SSH port and host key; it keeps working when its source is
purged, and the source keeps working beside it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest
from ketchcli import Ketch, unique

from ketch.model import Intent
from ketch.store.db import Store

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def source(ketch: Ketch) -> Iterator[str]:
    with ketch.launched("src", "--memory", "512M") as name:
        yield name


def identity(ketch: Ketch, name: str) -> dict[str, str]:
    """What the guest itself says it is."""
    out = ketch.exec(
        name,
        "sh",
        "-c",
        "hostname; cat /var/lib/cloud/data/instance-id; cat /sys/class/net/eth0/address",
    ).split()
    return {"hostname": out[0], "instance-id": out[1], "mac": out[2]}


def served_host_key(ketch: Ketch, name: str) -> str:
    """The ed25519 key the guest's SSH server presents (not the pinned copy)."""
    port = ketch.info(name)["ssh"]["port"]
    out = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    (line,) = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
    return line.split()[2]


def pinned_host_key(ketch: Ketch, name: str) -> str:
    text = (ketch.root / "instances" / name / "known_hosts").read_text()
    return text.split()[2]


def test_clone_has_its_own_identity_and_both_keep_working(ketch: Ketch, source: str) -> None:
    ketch.ensure_running(source)
    ketch.exec(source, "sh", "-c", "echo from-source > /home/ubuntu/shared && sync")
    src_id = identity(ketch, source)
    src_key = served_host_key(ketch, source)

    refused = ketch.run("clone", source, check=False)
    assert refused.returncode == 2
    assert f'cannot clone "{source}": it is Running' in refused.stderr
    assert f"hint: stop it first: 'ketch stop {source}'" in refused.stderr

    ketch.run("stop", source)
    ketch.run("snapshot", source, "-n", "keep")  # snapshots stay with the source
    done = ketch.run("clone", source)
    clone = f"{source}-clone1"
    assert done.stdout == f"Cloned from {source} to {clone}.\n"
    try:
        assert ketch.state(clone) == "Stopped"
        assert ketch.tags(clone) == []
        assert clone not in ketch.json("list", "--snapshots")["info"]
        assert ketch.info(clone)["snapshot_count"] == "0"

        ketch.run("start", clone)
        got = identity(ketch, clone)
        assert got["hostname"] == clone != src_id["hostname"]
        assert got["instance-id"] != src_id["instance-id"]
        assert got["mac"] != src_id["mac"]
        assert ketch.exec(clone, "cat", "/home/ubuntu/shared") == "from-source\n"
        clone_key = served_host_key(ketch, clone)
        assert clone_key != src_key and clone_key == pinned_host_key(ketch, clone)
        assert ketch.info(clone)["ssh"]["port"] != ketch.info(source)["ssh"]["port"]

        ketch.exec(clone, "sh", "-c", "echo clone-only > /home/ubuntu/mine && sync")
        ketch.run("start", source)  # both run side by side
        assert identity(ketch, source) == src_id
        assert served_host_key(ketch, source) == src_key
        assert ketch.exec(source, "ls", "/home/ubuntu").split() == ["shared"]
        assert "keep" in ketch.json("list", "--snapshots")["info"][source]
    finally:
        ketch.run("delete", "--purge", clone, check=False)


def test_clone_names_and_purging_the_source(ketch: Ketch) -> None:
    src = unique("orig")
    ketch.run("launch", "tiny", "--name", src, "--memory", "512M")
    ketch.exec(src, "sh", "-c", "echo precious > /home/ubuntu/data && sync")
    ketch.run("stop", src)
    clones = [f"{src}-clone1", f"{src}-clone2", "named-copy"]
    try:
        ketch.run("clone", src)
        ketch.run("clone", src)
        ketch.run("clone", src, "--name", "named-copy")
        names = {i["name"] for i in ketch.json("list")["list"]}
        assert set(clones) <= names
        taken = ketch.run("clone", src, "--name", "named-copy", check=False)
        assert taken.returncode == 2 and "already exists" in taken.stderr

        # one command may delete snapshots and their instance together
        ketch.run("snapshot", clones[1], "-n", "gone-too")
        ketch.run("delete", "--purge", clones[1], f"{clones[1]}.gone-too")
        assert clones[1] not in {i["name"] for i in ketch.json("list")["list"]}
        assert clones[1] not in ketch.json("list", "--snapshots")["info"]

        ketch.run("delete", "--purge", src)
        assert not (ketch.root / "instances" / src).exists()
        ketch.run("start", clones[0])
        assert ketch.exec(clones[0], "cat", "/home/ubuntu/data") == "precious\n"
        assert ketch.exec(clones[0], "hostname") == f"{clones[0]}\n"
    finally:
        for name in [src, *clones]:
            ketch.run("delete", "--purge", name, check=False)


def test_a_restarted_daemon_removes_a_half_made_clone(ketch: Ketch, source: str) -> None:
    """What a ketchd killed in the middle of a clone leaves is gone once ketchd is back."""
    ketch.run("stop", "--force", source)
    half = unique("half")
    ketch.kill_daemon()
    store = Store(ketch.root / "ketch.db")
    try:
        store.begin(half, "clone", "copy-disk")
        store.add(replace(store.get(source).spec, name=half), Intent.STOP)
    finally:
        store.close()
    (ketch.root / "instances" / half).mkdir()
    (ketch.root / "instances" / half / "disk.qcow2").write_bytes(b"half a disk")

    names = {i["name"] for i in ketch.json("list")["list"]}  # starts a new daemon
    assert half not in names and source in names
    assert not (ketch.root / "instances" / half).exists()
    assert ketch.state(source) == "Stopped"
