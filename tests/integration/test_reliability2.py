"""Issue 18 on real VMs: a damaged database loses nothing, a frozen monitor costs one
deadline, a daemon ends with its root, a launch refused for space leaves nothing.

Two frozen QEMUs show "concurrent" (five under TCG on a shared 2-core machine
cost minutes for nothing more).  Times are printed (``-s``), never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from db_damage import deleted, garbage_at_100, truncated_to_half
from ketchcli import Ketch, unique

from ketch.host import procs

pytestmark = pytest.mark.vm


def _spec_of(info: dict[str, Any]) -> dict[str, Any]:
    """What the record says of an instance (not what its guest uses right now)."""
    keep = ("cpu_count", "image_release", "image_hash", "release", "created", "image",
            "snapshot_count", "ssh", "mounts")  # fmt: skip
    spec = {k: info.get(k) for k in keep}
    spec["memory"] = info["memory"]["total"]
    spec["disks"] = {d: v["total"] for d, v in info["disks"].items()}
    return spec


@pytest.fixture(scope="module")
def quiet(ketch: Ketch) -> Iterator[str]:
    """A stopped instance with a snapshot, beside the running ``vm``."""
    with ketch.launched("quiet", "--memory", "256M", "--cpus", "2") as name:
        ketch.run("stop", name)
        ketch.run("snapshot", name, "--name", "first", "--comment", "kept")
        yield name


def _snapshots(ketch: Ketch, name: str) -> dict[str, object]:
    return dict(ketch.json("list", "--snapshots")["info"].get(name, {}))


@pytest.mark.parametrize("damage", [garbage_at_100, truncated_to_half, deleted])
def test_a_damaged_database_loses_nothing(
    ketch: Ketch, vm: str, quiet: str, damage: Callable[[Path], None]
) -> None:
    ketch.ensure_running(vm)
    canary = unique("canary")
    ketch.exec(vm, "sh", "-c", f"echo {canary} > /home/ubuntu/canary && sync")
    before = {n: _spec_of(ketch.info(n)) for n in (vm, quiet)}
    snaps = _snapshots(ketch, quiet)
    assert "first" in snaps
    ketch.kill_daemon(signal.SIGTERM)
    kept_before = set(ketch.root.glob("ketch.db.damaged-*"))
    damage(ketch.root / "ketch.db")

    done = ketch.run("list", "--format", "json")
    assert "warning: the database was damaged" in done.stderr, done.stderr
    if damage is not deleted:  # the damaged file is kept, and the user is told where
        kept = set(ketch.root.glob("ketch.db.damaged-*")) - kept_before
        assert any(str(k) in done.stderr for k in kept), (done.stderr, kept)
    listed = {i["name"]: i for i in json.loads(done.stdout)["list"]}
    assert listed[vm]["state"] == "Running" and listed[quiet]["state"] == "Stopped"
    assert {n: _spec_of(ketch.info(n)) for n in (vm, quiet)} == before
    assert _snapshots(ketch, quiet) == snaps
    assert ketch.exec(vm, "cat", "/home/ubuntu/canary").strip() == canary  # still reachable
    again = ketch.run("list")
    assert "warning" not in again.stderr  # told once

    doc = json.loads(ketch.run("doctor", "--format", "json", check=False).stdout)
    found = [f for f in doc["findings"] if f["code"] == "database-repaired"]
    assert found and "damaged" in str(found[0]["message"])
    ketch.run("doctor", "--fix", "--format", "json", check=False)
    doc = json.loads(ketch.run("doctor", "--format", "json", check=False).stdout)
    assert not [f for f in doc["findings"] if f["code"] == "database-repaired"]


def test_a_daemon_that_cannot_start_is_reported_at_once(ketch: Ketch, tmp_path: Path) -> None:
    root = Path(
        subprocess.check_output(["mktemp", "-d", "/tmp/ketch-bad-XXXXXX"], text=True).strip()
    )
    try:
        db = sqlite3.connect(root / "ketch.db")
        db.execute("PRAGMA user_version = 99")
        db.close()
        other = Ketch(root)
        started = time.monotonic()
        done = other.run("list", check=False)
        print(f"\nrefused after {time.monotonic() - started:.2f} s")
        assert done.returncode != 0
        assert "schema version 99" in done.stderr, done.stderr
        assert "did not answer within" not in done.stderr
    finally:
        Ketch(root).kill_daemon(signal.SIGTERM)
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture
def frozen(ketch: Ketch, vm: str) -> Iterator[list[str]]:
    """Two running instances whose QEMUs are SIGSTOPped (SIGCONTed again afterwards)."""
    ketch.ensure_running(vm)
    with ketch.launched("frozen", "--memory", "256M") as other:
        names = [vm, other]
        pids = [ketch.qemu_pid(n) for n in names]
        try:
            for pid in pids:
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
            yield names
        finally:
            for pid in pids:
                if pid and procs.alive(pid):
                    os.kill(pid, signal.SIGCONT)


def _timed_list(ketch: Ketch) -> tuple[float, dict[str, dict[str, object]]]:
    started = time.monotonic()
    done = ketch.run("list", "--format", "json")
    return time.monotonic() - started, {i["name"]: i for i in json.loads(done.stdout)["list"]}


def test_a_frozen_monitor_is_waited_on_once(ketch: Ketch, frozen: list[str]) -> None:
    times = []
    for _ in range(4):
        took, listed = _timed_list(ketch)
        times.append(took)
        for name in frozen:
            assert listed[name]["state"] == "Unknown", listed[name]
    for name in frozen:
        info = ketch.info(name)
        found = {i["code"]: i["message"] for i in info["inconsistencies"]}
        assert "qmp-unresponsive" in found
        assert "still probed in the background" in found["qmp-unresponsive"]  # not waited on
    print(f"\nlist with {len(frozen)} frozen: " + ", ".join(f"{t:.2f} s" for t in times))
    for name in frozen:
        started = time.monotonic()
        ketch.run("stop", "--force", name)
        print(f"stop --force {name}: {time.monotonic() - started:.2f} s")
        assert ketch.state(name) == "Stopped"
    for name in frozen:
        ketch.run("start", name)
        assert ketch.state(name) == "Running"
        assert ketch.exec(name, "echo", "ok") == "ok\n"


def test_a_thawed_monitor_is_answered_again(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    pid = ketch.qemu_pid(vm)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        assert ketch.state(vm) == "Unknown"
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while ketch.state(vm) != "Running":  # the background probe gets its answer
        assert time.monotonic() < deadline, ketch.info(vm)
        time.sleep(0.5)
    assert ketch.qemu_pid(vm) == pid


def _wait_gone(pid: int, limit: float = 30.0) -> float:
    started = time.monotonic()
    while procs.alive(pid):
        assert time.monotonic() - started < limit, f"ketchd {pid} still runs"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_daemon_ends_with_its_root_leaving_qemus_running(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    qemu = ketch.qemu_pid(vm)
    daemon = ketch.daemon_pid()
    assert qemu and daemon
    moved = ketch.root.with_name(ketch.root.name + ".moved")
    os.rename(ketch.root, moved)  # the root replaced: gone from where ketchd serves
    try:
        print(f"\nketchd ended {_wait_gone(daemon):.2f} s after its root was moved")
        assert procs.alive(qemu)
    finally:
        os.rename(moved, ketch.root)
    assert ketch.state(vm) == "Running" and ketch.qemu_pid(vm) == qemu
    assert ketch.exec(vm, "echo", "ok") == "ok\n"


def test_a_daemon_ends_when_its_socket_is_removed(ketch: Ketch, vm: str) -> None:
    ketch.run("list")
    daemon = ketch.daemon_pid()
    assert daemon
    (ketch.root / "ketchd.sock").unlink()
    print(f"\nketchd ended {_wait_gone(daemon):.2f} s after its socket was removed")
    assert ketch.state(vm) == "Running"


def test_a_launch_refused_for_space_says_why_and_leaves_nothing(small_root: Ketch) -> None:
    k = small_root
    free = os.statvfs(k.root)
    leave = 32 * 1024**2  # below the 64 MiB floor a new overlay gets
    filler = k.root / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free.f_bavail * free.f_frsize - leave))
    before = sorted(p.name for p in (k.root / "instances").iterdir()) if (
        k.root / "instances").is_dir() else []  # fmt: skip
    name = unique("roomless")
    done = k.run("launch", "tiny", "--name", name, "--memory", "256M", check=False)
    assert done.returncode == 2, done.stderr
    assert "not enough space for launch" in done.stderr
    assert "needs about 64.0 MiB" in done.stderr and "MiB free" in done.stderr
    assert "ketch image prune" in done.stderr
    after = sorted(p.name for p in (k.root / "instances").iterdir()) if (
        k.root / "instances").is_dir() else []  # fmt: skip
    assert after == before  # no directory left behind
    assert name not in {i["name"] for i in k.json("list")["list"]}  # no record either
    filler.unlink()


def test_a_simulated_reboot_brings_running_instances_back(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    canary = unique("canary")
    ketch.exec(vm, "sh", "-c", f"echo {canary} > /home/ubuntu/canary && sync")
    vm_boot = ketch.boot_id(vm)
    with (
        ketch.launched("sleepy", "--memory", "256M") as sleepy,
        ketch.launched("optout", "--memory", "256M") as optout,
    ):
        sleepy_boot = ketch.boot_id(sleepy)
        ketch.run("suspend", sleepy)
        ketch.run("set", f"local.{optout}.autostart=false")
        assert ketch.run("get", f"local.{optout}.autostart").stdout.strip() == "false"
        # The reboot: ketchd and every QEMU gone at once, and another boot id.
        ketch.kill_daemon(signal.SIGKILL)
        pids = [p for p in (ketch.qemu_pid(n) for n in (vm, optout)) if p]
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            _wait_gone(pid)
        (ketch.root / "boot_id").write_text("00000000-0000-4000-8000-000000000000\n")

        ketch.run("list")  # starts ketchd, which starts again what was running
        deadline = time.monotonic() + 600
        while ketch.state(vm) != "Running":
            assert time.monotonic() < deadline, ketch.info(vm)
            time.sleep(1)
        assert ketch.exec(vm, "cat", "/home/ubuntu/canary").strip() == canary
        assert ketch.boot_id(vm) != vm_boot  # booted afresh, as after a real reboot
        assert ketch.state(optout) == "Stopped"  # autostart=false
        assert ketch.state(sleepy) == "Suspended"  # suspended ones stay suspended
        ketch.run("start", sleepy)
        assert ketch.boot_id(sleepy) == sleepy_boot  # ... and resume where they were
        log = (ketch.root / "ketchd.log").read_text()
        assert f"host rebooted: starting {vm} again" in log
        assert f"starting {optout}" not in log and f"starting {sleepy}" not in log
