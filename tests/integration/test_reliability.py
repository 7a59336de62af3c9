"""Issue 6 on real VMs: doctor, quarantine, recovery after a crash, a full disk during suspend."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from ketchcli import Ketch, unique
from qcow2_damage import corrupt_refcount, leak_cluster

from ketch.host import qmp

pytestmark = pytest.mark.vm


def doctor(ketch: Ketch, *args: str) -> tuple[int, list[dict[str, object]]]:
    import json

    done = ketch.run("doctor", *args, "--format", "json", check=False)
    return done.returncode, json.loads(done.stdout)["findings"]


def codes(findings: list[dict[str, object]]) -> set[object]:
    return {f["code"] for f in findings}


def test_doctor_reports_without_changing_then_fixes(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    ketch.run("stop", vm)
    sleeper = subprocess.Popen(["sleep", "300"])
    pidfile = ketch.root / "instances" / vm / "qemu.pid"
    try:
        pidfile.write_text(f"{sleeper.pid}\n")
        subprocess.run(["qemu-img", "snapshot", "-c", "suspend", str(ketch.disk(vm))], check=True)
        rc, found = doctor(ketch, vm)
        assert rc == 2
        assert {"foreign-pid", "disk-only-suspend-tag"} <= codes(found)
        assert pidfile.exists() and "suspend" in ketch.tags(vm)  # nothing changed
        rc, found = doctor(ketch, "--fix", vm)
        assert rc == 0, found
        assert all(f["fixed"] for f in found)
        assert not pidfile.exists() and "suspend" not in ketch.tags(vm)
        assert sleeper.poll() is None  # a foreign process is never signalled
        assert doctor(ketch, vm) == (0, [])
        ketch.run("start", vm)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_doctor_repairs_leaked_clusters(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    ketch.run("stop", vm)
    leak_cluster(ketch.disk(vm))
    rc, found = doctor(ketch, vm)
    assert rc == 2 and "disk-leaks" in codes(found)
    rc, found = doctor(ketch, "--fix", vm)
    assert rc == 0
    assert doctor(ketch, vm) == (0, [])
    ketch.run("start", vm)
    assert ketch.exec(vm, "echo", "ok") == "ok\n"


def test_corrupt_disk_is_quarantined_never_deleted(ketch: Ketch) -> None:
    name = unique("sick")
    ketch.run("launch", "tiny", "--name", name, "--memory", "512M")
    ketch.run("stop", name)
    corrupt_refcount(ketch.disk(name))
    _, found = doctor(ketch, "--fix", name)
    assert "disk-corrupt" in codes(found)
    assert ketch.state(name) == "Unknown"
    info = ketch.info(name)
    assert "corrupt" in info["quarantine"]
    done = ketch.run("start", name, check=False)
    assert done.returncode == 2 and "quarantined" in done.stderr
    assert ketch.disk(name).exists()
    ketch.run("stop", "--force", name)
    ketch.run("delete", "--purge", name)
    assert name not in {i["name"] for i in ketch.json("list")["list"]}


def test_directory_without_record_is_adopted_in_quarantine(ketch: Ketch) -> None:
    name = unique("stray")
    d = ketch.root / "instances" / name
    d.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(d / "disk.qcow2"), "64M"], check=True
    )
    rc, found = doctor(ketch)
    assert rc == 2 and "directory-without-record" in codes(found)
    doctor(ketch, "--fix")
    assert ketch.state(name) == "Unknown"
    assert "without a record" in ketch.info(name)["quarantine"]
    assert (d / "disk.qcow2").exists()
    ketch.run("delete", "--purge", name)


def _journal_unfinished(ketch: Ketch, name: str, op: str) -> None:
    db = sqlite3.connect(ketch.root / "ketch.db")
    with db:
        db.execute(
            "INSERT INTO journal (instance, op, step, started) VALUES (?, ?, '', ?)",
            (name, op, time.time()),
        )
    db.close()


def _qmp(ketch: Ketch, name: str, *commands: tuple[str, dict[str, object] | None]) -> None:
    async def go() -> None:
        async with qmp.connect(ketch.root / "instances" / name / "qmp.sock") as mon:
            for command, args in commands:
                if command == "snapshot-save":
                    await mon.run_job(command, dict(args or {}), timeout=120)
                else:
                    await mon.execute(command, args)

    asyncio.run(go())


def test_daemon_crash_after_the_save_finishes_the_suspend(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    boot = ketch.boot_id(vm)
    ketch.kill_daemon()
    # What a daemon killed between "snapshot-save" and "quit" leaves behind:
    save: dict[str, object] = {
        "job-id": "s",
        "tag": "suspend",
        "vmstate": "disk0",
        "devices": ["disk0"],
    }
    _qmp(ketch, vm, ("stop", None), ("snapshot-save", save))
    _journal_unfinished(ketch, vm, "suspend")
    assert ketch.state(vm) == "Suspended"  # the new daemon finished the suspend
    ketch.run("start", vm)
    assert ketch.boot_id(vm) == boot


def test_daemon_crash_before_the_save_rolls_the_suspend_back(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    boot = ketch.boot_id(vm)
    ketch.kill_daemon()
    _qmp(ketch, vm, ("stop", None))  # paused, no tag yet
    _journal_unfinished(ketch, vm, "suspend")
    assert ketch.state(vm) == "Running"
    assert ketch.boot_id(vm) == boot
    assert ketch.codes(vm) == set()


def test_daemon_crash_during_a_stop_finishes_the_stop(ketch: Ketch, vm: str) -> None:
    """A daemon killed during a stop, before the guest had powered off: the new one
    finishes the stop the user asked for (it used to leave the guest running, intent
    run)."""
    ketch.ensure_running(vm)
    ketch.kill_daemon()
    _journal_unfinished(ketch, vm, "stop")
    assert ketch.state(vm) == "Stopped"
    assert ketch.codes(vm) == set()  # not exited-unexpectedly: the intent is stop
    log = (ketch.root / "ketchd.log").read_text()
    assert f"recovered: stop on {vm}: stop finished: the guest powered off" in log
    ketch.run("start", vm)


def test_start_moves_off_a_port_another_program_took(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    ketch.run("stop", vm)
    port = ketch.info(vm)["ssh"]["port"]
    with socket.socket() as squatter:
        # SO_REUSEADDR: the instance's last SSH connections may be in TIME_WAIT.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        done = ketch.run("start", vm)
        assert f"port {port} is taken" in done.stderr
        assert ketch.info(vm)["ssh"]["port"] != port
        assert ketch.exec(vm, "echo", "ok") == "ok\n"


def test_disk_full_during_suspend_keeps_the_vm_running(small_root: Ketch) -> None:
    k = small_root
    name = unique("full")
    k.run("launch", "tiny", "--name", name, "--memory", "512M")
    boot = k.boot_id(name)
    free = shutil.disk_usage(k.root).free
    filler = k.root / "filler"
    with filler.open("wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, max(free - 8 * 1024 * 1024, 0))
    done = k.run("suspend", name, check=False)
    assert done.returncode == 2
    assert "keeps running" in done.stderr
    assert "MiB free" in done.stderr
    filler.unlink()
    assert k.state(name) == "Running"
    assert "suspend" not in k.tags(name)
    assert k.boot_id(name) == boot
    k.run("suspend", name)  # with room again, it works
    k.run("start", name)
    assert k.boot_id(name) == boot


def test_doctor_reconciles_snapshot_tags_and_metadata(ketch: Ketch, vm: str) -> None:
    import json

    ketch.ensure_running(vm)
    ketch.run("stop", vm)
    ketch.run("snapshot", vm, "--name", "kept")
    subprocess.run(["qemu-img", "snapshot", "-c", "by-hand", str(ketch.disk(vm))], check=True)
    kept_tag = next(t for t in ketch.tags(vm) if t.startswith("ketch-snap-"))
    subprocess.run(["qemu-img", "snapshot", "-d", kept_tag, str(ketch.disk(vm))], check=True)
    rc, found = doctor(ketch, vm)
    assert rc == 2
    assert {"snapshot-without-metadata", "snapshot-without-tag"} <= codes(found)
    rc, found = doctor(ketch, "--fix", vm)
    assert rc == 0, found
    snaps = json.loads(ketch.run("list", "--snapshots", "--format", "json").stdout)["info"][vm]
    assert "kept" not in snaps  # its data was gone: the record is forgotten
    assert any("by-hand" in s["comment"] for s in snaps.values())  # the tag is adopted
    assert "by-hand" in ketch.tags(vm)  # and its data kept
    assert doctor(ketch, vm) == (0, [])
    ketch.run("start", vm)


def test_doctor_powers_off_a_booting_guest_whose_monitor_is_gone(ketch: Ketch) -> None:
    """The chaos walk's seed 1807 step 559: a start cut off by a daemon kill leaves the
    guest booting on its own; its QMP socket deleted, doctor --fix must still power it
    off, asking again once the guest's SSH is up (one early try left it running)."""
    name = unique("booting")
    ketch.run("launch", "tiny", "--name", name, "--memory", "512M")
    ketch.run("stop", name)
    idir = ketch.root / "instances" / name
    starting = subprocess.Popen(
        [*ketch.prefix, sys.executable, "-m", "ketch.cli.main", "start", name],
        env=ketch.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # a bound against a hang
        while not (idir / "qmp.sock").exists():
            assert time.monotonic() < deadline, "QEMU did not start"
            time.sleep(0.02)
        ketch.kill_daemon()  # the start is cut off; the guest boots on
        (idir / "qmp.sock").unlink()
    finally:
        starting.wait(timeout=120)
    _, found = doctor(ketch, "--fix")
    fixed = {f["code"]: f for f in found}
    assert fixed["qmp-unresponsive"]["fixed"], fixed["qmp-unresponsive"]
    assert ketch.state(name) == "Stopped"
    ketch.run("start", name)
    assert ketch.state(name) == "Running"
    ketch.run("delete", "--purge", name)
