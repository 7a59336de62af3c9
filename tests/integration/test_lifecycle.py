"""Lifecycle on real VMs (tiny image, QEMU/TCG): the cases issue 4 lists.

Each test leaves its instance Running or purged, so the module's VM can be
shared; tests that damage state use their own instance.
"""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from ketchcli import Ketch, unique

pytestmark = pytest.mark.vm


def write_synced(ketch: Ketch, name: str, path: str, text: str) -> None:
    ketch.exec(name, "sh", "-c", f"echo {text} > {path} && sync")


def test_stop_start_changes_boot_id_and_keeps_files(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    before = ketch.boot_id(vm)
    write_synced(ketch, vm, "/home/ubuntu/stopstart", "kept")
    ketch.run("stop", vm)
    assert ketch.state(vm) == "Stopped"
    assert ketch.qemu_pid(vm) is None
    ketch.run("start", vm)
    assert ketch.state(vm) == "Running"
    assert ketch.boot_id(vm) != before
    assert ketch.exec(vm, "cat", "/home/ubuntu/stopstart").strip() == "kept"


def test_suspend_resume_keeps_boot_id_uptime_and_files(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    before = ketch.boot_id(vm)
    uptime_before = float(ketch.exec(vm, "cut", "-d", " ", "-f1", "/proc/uptime"))
    write_synced(ketch, vm, "/home/ubuntu/suspended", "still-here")
    ketch.run("suspend", vm)
    assert ketch.state(vm) == "Suspended"
    assert "suspend" in ketch.tags(vm)
    ketch.run("start", vm)
    assert ketch.state(vm) == "Running"
    assert ketch.boot_id(vm) == before
    assert float(ketch.exec(vm, "cut", "-d", " ", "-f1", "/proc/uptime")) >= uptime_before
    assert ketch.exec(vm, "cat", "/home/ubuntu/suspended").strip() == "still-here"
    assert "suspend" not in ketch.tags(vm)  # the tag is dropped once the guest runs again


def test_missing_tag_then_force_stop(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    before = ketch.boot_id(vm)
    ketch.run("suspend", vm)
    subprocess.run(["qemu-img", "snapshot", "-d", "suspend", str(ketch.disk(vm))], check=True)
    assert "missing-suspend-tag" in ketch.codes(vm)
    done = ketch.run("stop", "--force", vm)
    assert "tag was missing" in done.stderr
    assert ketch.state(vm) == "Stopped"
    assert ketch.codes(vm) == set()
    ketch.run("start", vm)
    assert ketch.boot_id(vm) != before  # cold boot


def test_missing_tag_then_delete_purge(ketch: Ketch) -> None:
    name = unique("purge")
    ketch.run("launch", "tiny", "--name", name, "--memory", "512M")
    ketch.run("suspend", name)
    subprocess.run(["qemu-img", "snapshot", "-d", "suspend", str(ketch.disk(name))], check=True)
    ketch.run("delete", "--purge", name)
    assert name not in {i["name"] for i in ketch.json("list")["list"]}
    assert not (ketch.root / "instances" / name).exists()


def test_stray_tag_while_stopped_is_removed_and_never_loaded(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    ketch.run("stop", vm)
    subprocess.run(["qemu-img", "snapshot", "-c", "suspend", str(ketch.disk(vm))], check=True)
    assert ketch.state(vm) == "Stopped"
    assert "disk-only-suspend-tag" in ketch.codes(vm)  # qemu-img makes disk-only tags
    started = ketch.run("start", vm)
    assert "stale 'suspend' tag" in started.stderr
    assert "suspend" not in ketch.tags(vm)
    assert ketch.state(vm) == "Running"


def test_stray_tag_while_running_is_removed_by_force_stop(ketch: Ketch, vm: str) -> None:
    import asyncio

    from ketch.host import qmp

    ketch.ensure_running(vm)

    async def take_tag() -> None:
        sock = ketch.root / "instances" / vm / "qmp.sock"
        async with qmp.connect(sock) as mon:
            await mon.run_job(
                "snapshot-save",
                {"job-id": "t", "tag": "suspend", "vmstate": "disk0", "devices": ["disk0"]},
                timeout=120,
            )

    asyncio.run(take_tag())
    assert ketch.state(vm) == "Running"
    assert "stray-suspend-tag" in ketch.codes(vm)
    ketch.run("stop", "--force", vm)
    assert ketch.state(vm) == "Stopped"
    assert "suspend" not in ketch.tags(vm)
    ketch.run("start", vm)


def test_qemu_img_failure_is_a_warning_for_force_stop_and_purge(ketch: Ketch) -> None:
    name = unique("locked")
    ketch.run("launch", "tiny", "--name", name, "--memory", "512M")
    ketch.run("suspend", name)
    # Another program holds the image's write lock: qemu-img cannot delete the tag.
    holder = _hold_write_lock(ketch.disk(name))
    try:
        done = ketch.run("stop", "--force", name)
        assert "could not remove the 'suspend' tag" in done.stderr
        assert ketch.state(name) == "Stopped"
        done = ketch.run("delete", "--purge", name)
        assert name not in {i["name"] for i in ketch.json("list")["list"]}
    finally:
        holder.kill()
        holder.wait()


def _hold_write_lock(disk: Path) -> subprocess.Popen[bytes]:
    """A ``qemu-io`` that holds ``disk``'s write lock, once ``qemu-img info`` (no ``-U``)
    is refused.  A qemu-io that could not take the lock (ketchd was reading the disk
    at that moment: a reader's lock excludes writers) is started again."""
    deadline = time.monotonic() + 120  # a bound against hangs, not a timing criterion
    while True:
        holder = subprocess.Popen(
            ["qemu-io", "-f", "qcow2", str(disk)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        while holder.poll() is None:
            done = subprocess.run(["qemu-img", "info", str(disk)], capture_output=True, text=True)
            if done.returncode != 0 and "lock" in done.stderr:
                return holder
            assert time.monotonic() < deadline, done.stderr or "the disk was never locked"
            time.sleep(0.05)
        assert holder.stderr is not None
        why = holder.stderr.read().decode(errors="replace")
        assert "lock" in why, f"qemu-io ended: {why}"
        assert time.monotonic() < deadline, f"qemu-io never took the lock: {why}"
        time.sleep(0.2)


def test_unreadable_disk_does_not_block_force_stop_or_purge(ketch: Ketch) -> None:
    name = unique("corrupt")
    ketch.run("launch", "tiny", "--name", name, "--memory", "512M")
    ketch.run("suspend", name)
    with ketch.disk(name).open("r+b") as f:
        f.write(b"garbage!")  # destroy the qcow2 magic
    assert ketch.state(name) == "Unknown"
    assert "unreadable-tags" in ketch.codes(name)
    done = ketch.run("stop", "--force", name)
    assert "could not read" in done.stderr
    assert ketch.state(name) == "Stopped"
    ketch.run("delete", "--purge", name)
    assert name not in {i["name"] for i in ketch.json("list")["list"]}


def test_daemon_kill9_reattaches_running_instances(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    qemu_before = ketch.qemu_pid(vm)
    daemon_before = ketch.daemon_pid()
    assert daemon_before is not None
    ketch.kill_daemon()
    assert ketch.daemon_pid() is None
    assert ketch.state(vm) == "Running"  # this call started a new daemon
    assert ketch.daemon_pid() not in (None, daemon_before)
    assert ketch.qemu_pid(vm) == qemu_before
    assert ketch.exec(vm, "echo", "alive").strip() == "alive"


def _journal(ketch: Ketch, name: str, op: str) -> list[tuple[float, float]]:
    db = sqlite3.connect(ketch.root / "ketch.db")
    try:
        rows = db.execute(
            "SELECT started, finished FROM journal WHERE instance = ? AND op = ? ORDER BY id",
            (name, op),
        ).fetchall()
    finally:
        db.close()
    return [(float(a), float(b)) for a, b in rows]


def _open_op(ketch: Ketch, name: str, op: str) -> bool:
    db = sqlite3.connect(ketch.root / "ketch.db")
    try:
        row = db.execute(
            "SELECT 1 FROM journal WHERE instance = ? AND op = ? AND finished IS NULL",
            (name, op),
        ).fetchone()
    finally:
        db.close()
    return row is not None


def test_operations_on_one_instance_are_serialized(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    first = threading.Thread(target=lambda: results.update(stop=ketch.run("stop", vm)))
    first.start()
    deadline = time.monotonic() + 60
    while not _open_op(ketch, vm, "stop") and time.monotonic() < deadline:
        time.sleep(0.02)
    second = ketch.run("start", vm)
    first.join()
    assert f'waiting for "stop" on "{vm}"' in second.stderr
    (_, stop_end) = _journal(ketch, vm, "stop")[-1]
    (start_begin, _) = _journal(ketch, vm, "start")[-1]
    assert start_begin >= stop_end  # the start began after the stop ended
    assert ketch.state(vm) == "Running"


def test_operations_on_two_instances_run_in_parallel(ketch: Ketch) -> None:
    names = [unique("par"), unique("par")]
    threads = [
        threading.Thread(target=ketch.run, args=("launch", "tiny", "--name", n, "--memory", "512M"))
        for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        a, b = (_journal(ketch, n, "launch")[-1] for n in names)
        assert a[0] < b[1] and b[0] < a[1]  # the two launches overlapped
        for n in names:
            assert ketch.state(n) == "Running"
    finally:
        for n in names:
            ketch.run("delete", "--purge", n, check=False)


def test_a_saved_state_that_cannot_load_is_kept_with_a_way_out(ketch: Ketch) -> None:
    import json

    name = unique("mismatch")
    ketch.run("launch", "tiny", "--name", name, "--memory", "512M")
    try:
        before = ketch.boot_id(name)
        ketch.run("suspend", name)
        # The recorded memory no longer matches the saved state (QEMU: "Size mismatch").
        db = sqlite3.connect(ketch.root / "ketch.db")
        with db:
            (spec,) = db.execute("SELECT spec FROM instances WHERE name = ?", (name,)).fetchone()
            spec = json.loads(spec)
            spec["memory"] = 640 * 1024 * 1024
            db.execute("UPDATE instances SET spec = ? WHERE name = ?", (json.dumps(spec), name))
        db.close()
        done = ketch.run("start", name, check=False)
        assert done.returncode == 2
        assert "cannot resume" in done.stderr and "stop --force" in done.stderr
        assert ketch.state(name) == "Suspended"
        assert "suspend" in ketch.tags(name)
        ketch.run("stop", "--force", name)
        ketch.run("start", name)
        assert ketch.boot_id(name) != before
    finally:
        ketch.run("delete", "--purge", name, check=False)
