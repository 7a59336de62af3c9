"""Snapshots and clone of an instance on a libvirt host (issue 20), through the real CLI.

The module runs its own libvirtd and ketchd (:func:`libvirtd.ketch_on_libvirtd`, as
test_libvirt_launch.py) and one tiny instance on the host ``lv``, once through
``qemu:///system`` and once through ``qemu+ssh://root@127.0.0.1:PORT/system`` (an sshd
on loopback, :mod:`sshd`).
Snapshots are libvirt's domain snapshots of the shut-off domain, internal qcow2 snapshots
of its disk volume: taken (``virsh snapshot-list`` has the tag, the qcow2 too), listed
(``list --snapshots``, ``info``'s count), restored (a file written after the snapshot is
gone), deleted.  A clone is a new volume libvirt copied (no backing file, no snapshots),
a new domain, its own identity; ``delete --purge`` of both leaves libvirt nothing: no
domain, no volume, an empty pool directory.  Four TCG boots in all (the tests run in
order on the one instance, each leaving it as the next expects).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch
from libvirtd import LIBVIRTD, ketch_on_libvirtd, virsh, volumes
from sshd import SSHD, host_add
from sshd import running as sshd_running
from test_clone import identity

from ketch.model import ImageInfo

NAME = "lvs"
CLONE = "lvs2"
DOMAIN = f"ketch-{NAME}"
SOURCE: dict[str, str] = {}  # the source's identity, as its guest said it (the first test)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(LIBVIRTD).exists() or not Path(SSHD).exists(),
    reason="needs root, libvirtd (libvirt-daemon-system) and sshd (openssh-server)",
)


@pytest.fixture(scope="module", params=["system", "ssh"])
def env(request: pytest.FixtureRequest, tiny_image: ImageInfo) -> Iterator[tuple[Ketch, Path]]:
    with contextlib.ExitStack() as stack:
        sshd = stack.enter_context(sshd_running()) if request.param == "ssh" else None
        k, pool, _ = stack.enter_context(ketch_on_libvirtd(tiny_image, "ketch-lvs-"))
        k.run(*host_add("lv", sshd))
        k.run("launch", "tiny", "--name", NAME, "--host", "lv", "--memory", "256M", timeout=900)
        yield k, pool


def domain_snapshots(domain: str) -> list[str]:
    return virsh("snapshot-list", domain, "--name").stdout.split()


def qcow2_tags(path: Path) -> list[str]:
    """The internal snapshots in a volume's file, as qemu-img reads them (the test's eyes:
    ketch itself reads no file on the host)."""
    done = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [s["name"] for s in json.loads(done.stdout).get("snapshots", [])]


def write_synced(k: Ketch, name: str, path: str) -> None:
    k.exec(name, "sh", "-c", f"echo x > {path} && sync")


def test_snapshot_restore_and_delete(env: tuple[Ketch, Path]) -> None:
    k, pool = env
    refused = k.run("snapshot", NAME, check=False)  # as on the QEMU driver: stopped only
    assert refused.returncode == 2 and f"ketch stop {NAME}" in refused.stderr, refused
    k.run("stop", NAME)
    done = k.run("snapshot", NAME, "--name", "before", "--comment", "known good")
    assert done.stdout == f"Snapshot taken: {NAME}.before\n", done
    (tag,) = domain_snapshots(DOMAIN)
    assert tag.startswith("ketch-snap-") and qcow2_tags(pool / f"{NAME}.qcow2") == [tag]
    listed = k.json("list", "--snapshots")
    assert listed["info"][NAME]["before"]["comment"] == "known good", listed
    assert k.info(NAME)["snapshot_count"] == "1"
    assert k.codes(NAME) == set()

    k.run("start", NAME, timeout=900)  # the domain defined again with its seed
    write_synced(k, NAME, "/home/ubuntu/after")
    k.run("stop", NAME)
    done = k.run("restore", f"{NAME}.before", "--destructive")
    assert done.stdout == f"Snapshot restored: {NAME}.before\n", done
    k.run("start", NAME, timeout=900)
    assert "after" not in k.exec(NAME, "ls", "/home/ubuntu").split()
    write_synced(k, NAME, "/home/ubuntu/shared")  # for the clone (one boot fewer)
    SOURCE.update(identity(k, NAME))

    k.run("stop", NAME)
    k.run("delete", "--purge", f"{NAME}.before")
    assert domain_snapshots(DOMAIN) == [] and qcow2_tags(pool / f"{NAME}.qcow2") == []
    assert NAME not in k.json("list", "--snapshots")["info"]
    assert k.info(NAME)["snapshot_count"] == "0" and k.codes(NAME) == set()
    gone = k.run("restore", f"{NAME}.before", "--destructive", check=False)
    assert gone.returncode == 2 and "does not exist" in gone.stderr, gone


def test_a_clone_has_its_own_volume_domain_and_identity(env: tuple[Ketch, Path]) -> None:
    k, pool = env
    assert k.state(NAME) == "Stopped" and SOURCE, "the test before leaves it so"
    k.run("snapshot", NAME, "--name", "keep")  # stays with the source
    (tag,) = domain_snapshots(DOMAIN)
    elsewhere = k.run("clone", NAME, "--host", "local", check=False)
    assert elsewhere.returncode == 2, elsewhere
    assert f'"{NAME}" is on host "lv", not "local"' in elsewhere.stderr, elsewhere.stderr
    done = k.run("clone", NAME, "--name", CLONE)
    assert done.stdout == f"Cloned from {NAME} to {CLONE}.\n", done
    assert k.state(CLONE) == "Stopped" and k.info(CLONE)["host"] == "lv"
    assert k.info(CLONE)["snapshot_count"] == "0"
    vol = virsh("vol-dumpxml", "--pool", "ketch", f"{CLONE}.qcow2").stdout
    assert "<backingStore>" not in vol, vol  # libvirt's copy is a full one
    assert qcow2_tags(pool / f"{CLONE}.qcow2") == []

    k.run("start", CLONE, timeout=900)
    got = identity(k, CLONE)
    assert got["hostname"] == CLONE and got["instance-id"] != SOURCE["instance-id"]
    assert got["mac"] != SOURCE["mac"] and SOURCE["hostname"] == NAME
    assert k.exec(CLONE, "ls", "/home/ubuntu").split() == ["shared"]
    assert f"ketch-{CLONE}" in virsh("list", "--name").stdout.split()
    assert domain_snapshots(DOMAIN) == [tag] and domain_snapshots(f"ketch-{CLONE}") == []
    ours, its = (pool / f"{NAME}.qcow2").stat(), (pool / f"{CLONE}.qcow2").stat()
    assert (ours.st_dev, ours.st_ino) != (its.st_dev, its.st_ino)  # a file of its own


def test_purging_both_leaves_libvirt_nothing(env: tuple[Ketch, Path]) -> None:
    k, pool = env
    k.run("delete", "--purge", NAME, CLONE)
    assert virsh("list", "--all", "--name").stdout.split() == []
    assert volumes() == [] and list(pool.iterdir()) == []
    assert k.json("list")["list"] == []
