"""Operations as a resource and pre-emption on real VMs (issue 13 item 2, issue 12 item 3).

Readiness is made slow the way a real guest makes it slow: a cloud-init
``runcmd`` that never ends, so ``boot-finished`` never appears and the launch
(or start) waits for it (its ``--timeout`` is the maximum, an hour).  A
graceful stop is made long by a guest that ignores the power button (its
ACPI handler removed): the stop runs, past the point of no return, until its
60 s bound.  Every wait in these tests is bounded by ``BOUND`` and polled;
no timing is a pass criterion.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ketchcli import Ketch, unique

from ketch.client import Client, request
from ketch.layout import Root

pytestmark = pytest.mark.vm

BOUND = 600.0  # seconds: only stops a broken test from hanging
NEVER_READY = "#cloud-config\nruncmd:\n  - [sleep, '86400']\n"
DEAF = "#cloud-config\nruncmd:\n  - [rm, -f, /etc/acpi/PWRF/00000080]\n"


def until(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + BOUND
    while not (got := check()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)
    return got


def client(ketch: Ketch) -> Client:
    ketch.run("wait-ready")  # the daemon is up ('version' never starts one)
    return Client(Root(ketch.root), autostart=False)


def operations(ketch: Ketch) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = client(ketch).get("/v1/operations")["operations"]
    return ops


def cli(ketch: Ketch, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ketch.cli.main", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ketch.env,
    )


def ended(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=BOUND)
    return proc.returncode, err


def waiting_for_readiness(
    ketch: Ketch, name: str, kind: str, proc: subprocess.Popen[str]
) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"{kind} ended first ({proc.returncode}): {ended(proc)[1]}")
        for op in operations(ketch):
            if op["kind"] == kind and op["waits_for"] == {"type": "readiness", "instance": name}:
                return op
        return None

    found: dict[str, Any] = until(f"{kind} of {name} waits for readiness", find)
    return found


def state(ketch: Ketch, name: str) -> str:
    """The state ``ketch list`` shows (``info`` would also ask the busy guest for stats)."""
    return str({i["name"]: i["state"] for i in ketch.json("list")["list"]}[name])


def journal(ketch: Ketch, name: str) -> list[tuple[str, str | None]]:
    db = sqlite3.connect(ketch.root / "ketch.db")
    try:
        rows = db.execute(
            "SELECT op, outcome FROM journal WHERE instance = ? ORDER BY id", (name,)
        ).fetchall()
    finally:
        db.close()
    return [(str(op), outcome) for op, outcome in rows]


@pytest.fixture
def never_ready(tmp_path: Path) -> Path:
    path = tmp_path / "never-ready.yaml"
    path.write_text(NEVER_READY)
    return path


@pytest.fixture
def slow_launch(ketch: Ketch, never_ready: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A launch (by the real CLI) waiting for a guest that never gets ready."""
    name = unique("slow")
    proc = cli(
        ketch, "launch", "tiny", "--name", name, "--memory", "512M",
        "--timeout", "3600", "--cloud-init", str(never_ready),
    )  # fmt: skip
    try:
        yield name, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        ketch.run("delete", "--purge", name, check=False)


def test_stop_force_pre_empts_a_launch_waiting_for_readiness(
    ketch: Ketch, slow_launch: tuple[str, subprocess.Popen[str]]
) -> None:
    name, launch = slow_launch
    op = waiting_for_readiness(ketch, name, "launch", launch)
    forced = ketch.run("stop", "--force", name, timeout=BOUND)
    assert f'cancelled the wait of launch (operation {op["id"]}) on "{name}"' in forced.stderr
    code, err = ended(launch)
    assert code == 2, err
    assert f'stopped waiting for "{name}" to be ready: force-stop (operation ' in err
    assert "cancelled the wait; the instance is kept" in err
    assert f"'ketch delete --purge {name}' removes it" in err
    assert state(ketch, name) == "Stopped"
    assert ketch.qemu_pid(name) is None
    assert journal(ketch, name) == [("launch", "cancelled"), ("force-stop", "ok")]
    assert operations(ketch) == []


def test_operations_lists_the_waiting_launch_and_delete_cancels_the_wait(
    ketch: Ketch, slow_launch: tuple[str, subprocess.Popen[str]]
) -> None:
    name, launch = slow_launch
    op = waiting_for_readiness(ketch, name, "launch", launch)
    assert op["instances"] == [name] and op["state"] == "waiting"
    assert 0 < op["started"] <= time.time() and len(op["id"]) == 8
    reply = client(ketch).cancel(op["id"])
    assert reply["cancelled"] is True and reply["id"] == op["id"]
    assert reply["message"] == (
        f'stopped waiting for "{name}" to be ready: DELETE /v1/operations/{op["id"]} '
        "cancelled the wait; the instance is kept"
    )
    code, err = ended(launch)
    assert code == 2 and "the instance is kept" in err, err
    assert state(ketch, name) == "Running"  # kept, still booting (its runcmd never ends)
    assert journal(ketch, name) == [("launch", "cancelled")]

    # Ctrl-C on a start that waits for readiness: the CLI has it cancelled, exits 130
    ketch.run("stop", "--force", name)
    start = cli(ketch, "start", name)
    start_op = waiting_for_readiness(ketch, name, "start", start)
    start.send_signal(signal.SIGINT)
    code, err = ended(start)
    assert code == 130, err
    assert (
        f'cancelled: stopped waiting for "{name}" to be ready: DELETE /v1/operations/'
        f"{start_op['id']} cancelled the wait; it was started and is kept"
    ) in err
    assert state(ketch, name) == "Running"
    assert journal(ketch, name)[-1] == ("start", "cancelled")


def test_an_abandoned_purge_never_runs_later(ketch: Ketch, tmp_path: Path) -> None:
    """Issue 12 item 3: a purge whose client was killed while it waited must never run.

    Its turn comes after a graceful stop that cannot finish soon (the guest
    ignores the power button; nothing pre-empts a graceful stop): the purge
    waits for the lock, its client is killed, and when the stop ends the
    instance is still there.  Ctrl-C on the running stop says it goes on.
    """
    deaf = tmp_path / "deaf.yaml"
    deaf.write_text(DEAF)
    with ketch.launched("deaf", "--memory", "512M", "--cloud-init", str(deaf)) as name:
        stop = cli(ketch, "stop", name)
        stop_op = until(
            "the stop runs",
            lambda: next((o for o in operations(ketch) if o["kind"] == "stop"), None),
        )
        purge = cli(ketch, "delete", "--purge", name)
        purge_op = until(
            "the purge waits for the stop",
            lambda: next((o for o in operations(ketch) if o["kind"] == "purge"), None),
        )
        assert purge_op["state"] == "waiting"
        assert purge_op["waits_for"] == {
            "type": "lock", "instance": name, "operation": stop_op["id"], "kind": "stop",
        }  # fmt: skip
        purge.kill()  # SIGKILL: no chance to say anything to the daemon
        purge.communicate()
        until(
            "the purge is dropped", lambda: [o["id"] for o in operations(ketch)] == [stop_op["id"]]
        )

        stop.send_signal(signal.SIGINT)
        code, err = ended(stop)
        assert code == 130, err
        assert (
            f"interrupted: the operation goes on in the daemon (operation {stop_op['id']}); "
            "see 'ketch list'"
        ) in err
        until("the stop has ended", lambda: operations(ketch) == [])
        listed = {i["name"]: i["state"] for i in ketch.json("list")["list"]}
        assert listed[name] == "Running"  # the stop timed out; the purge never came
        assert (ketch.root / "instances" / name).is_dir()
        assert journal(ketch, name) == [("launch", "ok"), ("stop", "timeout")]
        resp = request(
            str(Root(ketch.root).socket), "GET", f"/v1/operations/{purge_op['id']}", None, 60
        )
        final = json.loads(resp.read().splitlines()[-1])  # its end is kept a while
        assert final["type"] == "error" and final["error"]["code"] == "cancelled"
        assert "its client went away before it began" in final["error"]["message"]
