"""Issue 6's chaos test: seeded random walks of operations and faults over real VMs.

``test_chaos_walk`` runs short walks of the engine in ``chaos.py`` (see its
docstring for the operations, the faults and the invariants); a failure
names the seed and step and how to replay it with ``bench/chaos.py``.

The other tests pin, one each, the ketch bugs the walks found; all are fixed,
so they are regression tests now.  docs/reliability.md describes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from chaos import KNOWN_BUGS, Config, qemu_processes, run_walk
from conftest import _seed_vault
from ketchcli import Ketch, unique

from ketch.host import procs, qmp
from ketch.model import ImageInfo

pytestmark = pytest.mark.vm

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")

# CI's short seed set: 2 seeds x 24 steps, 2 VMs, half the steps faults, doctor every 8 steps.
CI_SEEDS = (11, 12)
CI_STEPS = 24


@pytest.mark.slow
@needs_root
@pytest.mark.parametrize("seed", CI_SEEDS)
def test_chaos_walk(tiny_image: ImageInfo, seed: int) -> None:
    config = Config(seed=seed, steps=CI_STEPS, vms=2, doctor_every=8, fault_rate=0.5)
    summary = run_walk(config, Path(tiny_image.disk).parent)
    print(json.dumps({k: v for k, v in summary.items() if k != "violations"}, indent=1))
    known = [v for v in summary["violations"] if v["known"]]
    for v in known:
        print(f"known bug {v['known']} ({KNOWN_BUGS[v['known']]}): step {v['step']}: {v['detail']}")
    unknown = [v for v in summary["violations"] if not v["known"]]
    assert summary["steps_run"] == CI_STEPS, summary["error"]
    assert not unknown, (
        f"{len(unknown)} invariant violation(s); replay: {summary['replay']}\n"
        + "\n".join(
            f"step {v['step']} {v['invariant']} ({v['command']}): {v['detail']}" for v in unknown
        )
    )


# -- the bugs the walks found: one minimal reproduction each ----------------------------


def _canary(k: Ketch, name: str) -> str:
    text = f"canary-{name}"
    k.exec(name, "sh", "-c", f"echo {text} > /home/ubuntu/canary && sync")
    return text


def _doctor_codes(k: Ketch, *args: str) -> set[str]:
    done = k.run("doctor", *args, "--format", "json", check=False)
    return {f["code"] for f in json.loads(done.stdout)["findings"]}


def test_disk_only_suspend_tag_is_not_a_suspend_image(ketch: Ketch) -> None:
    name = unique("dskonly")
    ketch.run("launch", "tiny", "--name", name, "--memory", "256M")
    try:
        text = _canary(ketch, name)
        ketch.run("suspend", name)
        disk = str(ketch.disk(name))
        subprocess.run(["qemu-img", "snapshot", "-d", "suspend", disk], check=True)
        subprocess.run(["qemu-img", "snapshot", "-c", "suspend", disk], check=True)
        # ketch should see that this tag cannot be resumed: a doctor finding, or a
        # start that boots afresh from the disk (as for a missing tag).
        findings = _doctor_codes(ketch, name)
        started = ketch.run("start", name, check=False)
        assert findings or started.returncode == 0, started.stderr
        assert started.returncode == 0, started.stderr
        assert ketch.exec(name, "cat", "/home/ubuntu/canary").strip() == text
    finally:
        ketch.run("delete", "--purge", name, check=False)


def test_time_wait_on_the_ssh_port_is_not_taken(ketch: Ketch, vm: str) -> None:
    """Found by the walk (doctor's SSH power-off left the port in TIME_WAIT, and the
    next doctor said "port-taken"); fixed in d63d192: port_free() binds with
    SO_REUSEADDR, as QEMU does.  Kept as a regression test."""
    ketch.ensure_running(vm)
    ketch.run("stop", vm)
    port = int(ketch.info(vm)["ssh"]["port"])
    # A connection on the port whose server side closes first: that side stays in
    # TIME_WAIT on local port `port` (60 s), and nothing listens there any more.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        server.close()
        client.recv(1)
        client.close()
    try:
        assert "port-taken" not in _doctor_codes(ketch, vm)
        started = ketch.run("start", vm)
        assert "taken by another program" not in started.stderr
        assert ketch.info(vm)["ssh"]["port"] == port
    finally:
        ketch.ensure_running(vm)


def test_foreign_pid_over_a_running_qemu_does_not_lose_it(ketch: Ketch) -> None:
    name = unique("lostq")
    ketch.run("launch", "tiny", "--name", name, "--memory", "256M")
    sleeper = subprocess.Popen(["sleep", "600"])
    qemu_pid = ketch.qemu_pid(name)
    try:
        (ketch.root / "instances" / name / "qemu.pid").write_text(f"{sleeper.pid}\n")
        ketch.run("doctor", "--fix", check=False)
        ketch.run("stop", "--force", name)
        assert name not in qemu_processes(ketch.root), "a QEMU still runs the instance's disk"
        assert sleeper.poll() is None  # never signalled
    finally:
        sleeper.kill()
        sleeper.wait()
        if qemu_pid and name in qemu_processes(ketch.root):
            procs.terminate(qemu_pid)  # ours: its argv names this root's disk
        ketch.run("delete", "--purge", name, check=False)


@pytest.mark.slow
def test_exec_says_why_when_the_guest_stops_answering(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    sock = ketch.root / "instances" / vm / "qmp.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ketch.cli.main", "exec", vm, "--", "sleep", "600"],
        env=ketch.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while "sleep 600" not in ketch.exec(vm, "ps"):
            time.sleep(0.2)
        _qmp(sock, "stop")  # the guest freezes (as on an I/O error or a host under stress)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode != 0
        assert err.strip(), f"exit {proc.returncode} and nothing on stderr"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _qmp(sock, "cont")


def test_start_notices_that_qemu_died(tiny_image: ImageInfo) -> None:
    root = Path(tempfile.mkdtemp(prefix="kchaos-boot-", dir="/tmp"))
    k = Ketch(root)
    try:
        _seed_vault(root, tiny_image)
        k.run("set", "local.accel=tcg")
        name = unique("dies")
        k.run("launch", "tiny", "--name", name, "--memory", "256M")
        k.run("stop", name)
        k.kill_daemon(signal.SIGTERM)
        k.env["KETCH_BOOT_TIMEOUT"] = "20"  # the next daemon gives guests 20 s: a short test
        _start_and_kill_qemu(k, name)
    finally:
        k.teardown()
        shutil.rmtree(root, ignore_errors=True)


def _start_and_kill_qemu(k: Ketch, name: str) -> None:
    start = subprocess.Popen(
        [sys.executable, "-m", "ketch.cli.main", "start", name],
        env=k.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert start.stderr is not None
        seen = ""
        for line in start.stderr:  # the steps, as the daemon reports them
            seen += line
            if line.startswith("Waiting for SSH"):  # QEMU is up: ketch waits for the guest
                break
        pid = k.qemu_pid(name)
        assert pid and pid in qemu_processes(k.root).get(name, []), seen
        os.kill(pid, signal.SIGKILL)  # the daemonized QEMU of this root's instance
        _, err = start.communicate(timeout=600)
        err = seen + err
        assert "not ready within" not in err
        assert start.returncode == 2, err
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()


def _qmp(sock: Path, command: str) -> None:
    async def go() -> None:
        async with qmp.connect(sock) as mon:
            await mon.execute(command)

    asyncio.run(go())


# -- on a small tmpfs: the full-disk cases ---------------------------------------------------


def _fill(k: Ketch, leave: int) -> Path:
    filler = k.root / "filler"
    size = shutil.disk_usage(k.root).free - leave
    with filler.open("wb") as f:
        while size > 0:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
                break
            except OSError:
                size -= 64 * 1024
    return filler


@pytest.mark.parametrize("verb", [("stop", "--force"), ("delete", "--purge")])
def test_force_stop_and_purge_work_on_a_full_disk(small_root: Ketch, verb: tuple[str, str]) -> None:
    k = small_root
    name = unique("full" + verb[0])
    k.run("launch", "tiny", "--name", name, "--memory", "256M")
    filler = _fill(k, 0)
    try:
        done = k.run(*verb, name, check=False)
        assert done.returncode == 0, done.stderr
        assert name not in qemu_processes(k.root)
    finally:
        filler.unlink()
        k.run("delete", "--purge", name, check=False)


def test_doctor_sees_an_operation_left_open_by_a_full_disk(small_root: Ketch) -> None:
    k = small_root
    name = unique("open")
    k.run("launch", "tiny", "--name", name, "--memory", "256M")
    try:
        filler = _fill(k, 8 * 2**20)
        done = k.run("suspend", name, check=False)
        filler.unlink()
        assert done.returncode == 2 and "keeps running" in done.stderr
        if "interrupted-operation" not in k.codes(name):
            pytest.skip("the journal write did not fail this time: nothing left open")
        assert "interrupted-operation" in _doctor_codes(k, name)
        k.run("doctor", "--fix", name, check=False)
        assert "interrupted-operation" not in k.codes(name)
    finally:
        k.run("delete", "--purge", name, check=False)


def test_guest_paused_by_a_full_disk_resumes_once_there_is_room(small_root: Ketch) -> None:
    k = small_root
    name = unique("enospc")
    k.run("launch", "tiny", "--name", name, "--memory", "256M")
    try:
        boot = k.boot_id(name)
        filler = _fill(k, 2**20)
        # the guest writes in the background; its disk cannot grow: QEMU pauses it
        k.exec(
            name,
            "sh",
            "-c",
            "(dd if=/dev/urandom of=/home/ubuntu/big bs=1M count=64 conv=fsync "
            "</dev/null >/dev/null 2>&1 &)",
        )
        deadline = time.monotonic() + 300  # a safety net, not a timing assertion
        while "paused-io-error" not in k.codes(name) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "paused-io-error" in k.codes(name)
        assert "guest-halted" not in k.codes(name)
        filler.unlink()
        started = k.run("start", name, check=False)
        assert started.returncode == 0, started.stderr
        assert k.boot_id(name) == boot
    finally:
        k.run("delete", "--purge", name, check=False)


# -- issue 18's image faults ------------------------------------------------------------


@pytest.mark.slow
@needs_root
def test_chaos_walk_of_image_faults(tiny_image: ImageInfo) -> None:
    """A short walk whose faults are only the image ones (chaos_images.py)."""
    faults = ("base-image-away", "kill-download")
    config = Config(seed=18, steps=8, vms=2, doctor_every=4, fault_rate=0.6, faults=faults)
    summary = run_walk(config, Path(tiny_image.disk).parent)
    print(json.dumps({k: v for k, v in summary.items() if k != "violations"}, indent=1))
    unknown = [v for v in summary["violations"] if not v["known"]]
    assert summary["steps_run"] == config.steps, summary["error"]
    assert not unknown, f"replay: {summary['replay']}\n" + "\n".join(
        f"step {v['step']} {v['invariant']} ({v['command']}): {v['detail']}" for v in unknown
    )
    assert set(summary["faults"]) <= set(faults)
    assert summary["faults"], "no image fault was injected"


def test_start_without_its_base_image_says_so_and_changes_nothing(ketch: Ketch) -> None:
    """Found by the walk's base-image-away: start said only QEMU's "Could not open
    backing file", and doctor called the disk check qemu-img cannot do without the
    base image ``disk-check-failed``, whose repair is a quarantine."""
    name = unique("nobase")
    ketch.run("launch", "tiny", "--name", name, "--memory", "256M")
    base = next((ketch.root / "vault" / "built" / "tiny").glob("*/disk.qcow2"))
    aside = base.with_name("disk.qcow2.away")
    try:
        text = _canary(ketch, name)
        ketch.run("suspend", name)
        base.rename(aside)
        try:
            started = ketch.run("start", name, check=False)
            assert started.returncode == 2, started.stderr
            assert f"its base image file {base} is missing" in started.stderr
            assert "doctor --fix" in started.stderr  # what to do
            assert ketch.state(name) == "Suspended"  # nothing changed
            assert "suspend" in ketch.tags(name)
            codes = _doctor_codes(ketch, name)
            assert "missing-base-image" in codes
            assert "disk-check-failed" not in codes  # (its repair would quarantine)
        finally:
            aside.rename(base)
        ketch.run("start", name)
        assert ketch.state(name) == "Running"
        assert ketch.exec(name, "cat", "/home/ubuntu/canary").strip() == text
    finally:
        ketch.run("delete", "--purge", name, check=False)
