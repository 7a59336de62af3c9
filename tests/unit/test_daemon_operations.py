"""Operations as a resource over the real API (``/v1/operations``), and pre-emption.

The daemon of ``test_daemon_api`` (real aiohttp app on a Unix socket, real
operation table, real Store; only the hypervisor is the fake driver).  A
``start`` here really waits for its guest's readiness: the fake "QEMU" runs
but nothing listens on its SSH port, so ``ssh.wait_ready`` keeps trying, as
with a guest whose SSH never answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import GATE_POLLS
from test_daemon_api import WAIT, Env, raw, serving, wait

from ketch.cli.progress import interrupted
from ketch.client import request
from ketch.errors import RemoteError
from ketch.model import Intent
from ketch.service import guestlink


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with serving(tmp_path) as running:
        yield running


def until(what: str, check: Callable[[], bool]) -> None:
    """Poll (bounded) until ``check()``; the bound is never the pass criterion."""
    for _ in range(GATE_POLLS):
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def listed(env: Env) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = env.client.get("/v1/operations")["operations"]
    return ops


class Streamed:
    """A streamed request in a background thread, its events collected."""

    def __init__(self, env: Env, path: str, body: dict[str, Any]) -> None:
        self.events: list[dict[str, Any]] = []
        self.began = threading.Event()
        self.future = env.in_background(lambda: env.client.stream(path, body, self._on))

    def _on(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["type"] == "operation":
            self.began.set()

    @property
    def id(self) -> str:
        wait(self.began, "the operation event")
        return str(self.events[0]["id"])


def readiness_waiting_start(env: Env, name: str = "alpha") -> Streamed:
    """A stopped instance started: its start ends up waiting for a guest that never answers."""
    env.add(name, Intent.STOP, running=False, port=guestlink.free_port(set()))
    start = Streamed(env, f"/v1/instances/{name}/start", {})
    until(
        "the start waits for readiness",
        lambda: any(o["waits_for"] == {"type": "readiness", "instance": name} for o in listed(env)),
    )
    return start


# -- listing, re-attaching, cancelling ------------------------------------------------------------


def test_operations_lists_what_runs_and_what_waits_for_which_lock(env: Env) -> None:
    env.add("alpha")
    gate = env.driver.hold("alpha", "powerdown")
    stop = Streamed(env, "/v1/instances/alpha/stop", {})
    wait(env.driver.started("alpha", "powerdown"), "powerdown started")
    suspend = Streamed(env, "/v1/instances/alpha/suspend", {})
    until("the suspend waits", lambda: len(listed(env)) == 2)
    first, second = listed(env)
    assert first["id"] == stop.id and first["kind"] == "stop" and first["state"] == "running"
    assert first["instances"] == ["alpha"] and first["waits_for"] is None
    assert first["step"] == "Stopping alpha" and first["started"] <= time.time()
    assert second["id"] == suspend.id and second["state"] == "waiting"
    assert second["waits_for"] == {
        "type": "lock", "instance": "alpha", "operation": stop.id, "kind": "stop",
    }  # fmt: skip

    # the queued one can be cancelled: it never runs
    reply = env.client.cancel(suspend.id)
    assert reply == {
        "id": suspend.id,
        "cancelled": True,
        "outcome": "cancelled",
        "message": f'suspend (operation {suspend.id}) on "alpha" was cancelled before it '
        "began; nothing was done",
    }
    with pytest.raises(RemoteError) as err:
        suspend.future.result(WAIT)
    assert err.value.code == "cancelled"

    # the running one cannot: 409, saying why and that it goes on
    status, _, body = raw(env, "DELETE", f"/v1/operations/{stop.id}")
    assert status == 409
    error = json.loads(body)["error"]
    assert error["code"] == "not-cancellable"
    assert error["message"] == (
        f'stop (operation {stop.id}) on "alpha" cannot be cancelled: it is running '
        "(Stopping alpha) and past the point of no return; it goes on in the daemon"
    )
    gate.set()
    assert stop.future.result(WAIT) == {"name": "alpha"}
    assert "suspend:start" not in [c.what for c in env.driver.calls]
    assert env.states() == {"alpha": "Stopped"}
    assert listed(env) == []
    status, _, body = raw(env, "DELETE", f"/v1/operations/{stop.id}")  # ended: says so
    assert status == 409 and json.loads(body)["error"]["code"] == "operation-ended"
    status, _, body = raw(env, "DELETE", "/v1/operations/ffffffff")
    assert status == 404 and json.loads(body)["error"]["message"] == 'no operation "ffffffff"'


def test_re_attaching_replays_then_follows_and_a_finished_one_keeps_its_end(env: Env) -> None:
    env.add("alpha")
    gate = env.driver.hold("alpha", "suspend")
    mine = Streamed(env, "/v1/instances/alpha/suspend", {})
    wait(env.driver.started("alpha", "suspend"), "suspend started")
    resp = request(str(env.root.socket), "GET", f"/v1/operations/{mine.id}", None, WAIT)
    assert resp.status == 200 and "ndjson" in (resp.getheader("Content-Type") or "")
    lines = resp.lines()
    intro = json.loads(next(lines))
    assert intro == {"type": "operation", "id": mine.id, "replayed": 1, "dropped": 0}
    assert json.loads(next(lines)) == {
        "type": "step",
        "message": "Saving the guest's state into its disk",
    }
    gate.set()
    rest = [json.loads(line) for line in lines if line.strip()]
    assert rest == [{"type": "result", "result": {"name": "alpha"}}]
    assert mine.future.result(WAIT) == {"name": "alpha"}
    status, _, body = raw(env, "GET", f"/v1/operations/{mine.id}?replay=false")
    events = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and events == [
        {"type": "operation", "id": mine.id, "replayed": 0, "dropped": 0},
        {"type": "result", "result": {"name": "alpha"}},
    ]
    status, _, body = raw(env, "GET", f"/v1/operations/{mine.id}?replay=maybe")
    assert status == 400 and "$.replay" in json.loads(body)["error"]["message"]


# -- clients that go away -------------------------------------------------------------------------


def test_an_abandoned_purge_never_runs(env: Env) -> None:
    """The attack of issue 12 item 3: a purge whose client was killed must not run later."""
    env.add("alpha")
    gate = env.driver.hold("alpha", "powerdown")
    stop = Streamed(env, "/v1/instances/alpha/stop", {})
    wait(env.driver.started("alpha", "powerdown"), "powerdown started")
    resp = request(
        str(env.root.socket), "POST", "/v1/instances/alpha/delete", b'{"purge": true}', WAIT
    )
    lines = resp.lines()
    purge_id = json.loads(next(lines))["id"]
    assert json.loads(next(lines))["type"] == "waiting"
    assert [o["id"] for o in listed(env)] == [stop.id, purge_id]
    resp.close()  # the client is killed while its purge waits for the lock
    until("the purge is dropped", lambda: [o["id"] for o in listed(env)] == [stop.id])
    gate.set()
    assert stop.future.result(WAIT) == {"name": "alpha"}
    assert env.states() == {"alpha": "Stopped"}  # still there
    assert [c.what for c in env.driver.calls] == [
        "powerdown:start",
        "powerdown:end",
        "kill:start",
        "kill:end",
    ]
    status, _, body = raw(env, "GET", f"/v1/operations/{purge_id}")
    assert status == 200
    final = json.loads(body.splitlines()[-1])
    assert final["type"] == "error" and final["error"]["code"] == "cancelled"
    assert "was dropped: its client went away before it began" in final["error"]["message"]
    assert [e.op for e in env.store.history("alpha")] == ["stop"]


# -- pre-emption of a readiness wait --------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [("stop", {"force": True}), ("delete", {"purge": True})])
def test_force_stop_and_purge_do_not_wait_behind_a_readiness_wait(
    env: Env, path: str, body: dict[str, Any]
) -> None:
    start = readiness_waiting_start(env)
    forced: list[dict[str, Any]] = []
    env.client.stream(f"/v1/instances/alpha/{path}", body, forced.append)
    assert {
        "type": "waiting",
        "message": f'cancelled the wait of start (operation {start.id}) on "alpha" for its guest '
        "to be ready",
    } in forced
    with pytest.raises(RemoteError) as err:
        start.future.result(WAIT)
    kind = "force-stop" if path == "stop" else "purge"
    assert err.value.code == "cancelled"
    assert err.value.message == (
        f'stopped waiting for "alpha" to be ready: {kind} (operation {forced[0]["id"]}) '
        "cancelled the wait; it was started and is kept"
    )
    whats = [c.what for c in env.driver.calls]
    assert whats[0] == "start" and whats[-2:] == ["kill:start", "kill:end"]
    if path == "stop":
        assert env.states() == {"alpha": "Stopped"}
        assert [(e.op, e.outcome) for e in env.store.history("alpha")][:2] == [
            ("force-stop", "ok"),
            ("start", "cancelled"),
        ]
    else:
        assert env.states() == {}
    assert env.store.unfinished() == []


def test_cancelling_a_readiness_wait_keeps_the_instance_running(env: Env) -> None:
    start = readiness_waiting_start(env)
    reply = env.client.cancel(start.id)
    assert reply["cancelled"] is True and reply["outcome"] == "failed"
    assert reply["message"] == (
        f'stopped waiting for "alpha" to be ready: DELETE /v1/operations/{start.id} cancelled '
        "the wait; it was started and is kept"
    )
    with pytest.raises(RemoteError) as err:
        start.future.result(WAIT)
    assert err.value.code == "cancelled" and err.value.hint == "see 'ketch info alpha'"
    assert env.states() == {"alpha": "Running"}
    assert env.store.get("alpha").intent is Intent.RUN
    assert env.store.history("alpha")[0].outcome == "cancelled"


# -- the CLI after Ctrl-C -------------------------------------------------------------------------


def test_ctrl_c_on_a_waiting_operation_cancels_it(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.add("alpha")
    gate = env.driver.hold("alpha", "powerdown")
    stop = Streamed(env, "/v1/instances/alpha/stop", {})
    wait(env.driver.started("alpha", "powerdown"), "powerdown started")
    suspend = Streamed(env, "/v1/instances/alpha/suspend", {})
    env.client.operation = suspend.id  # what the interrupted stream had seen
    interrupted(env.client)
    assert capsys.readouterr().err == (
        f'cancelled: suspend (operation {suspend.id}) on "alpha" was cancelled before it '
        "began; nothing was done\n"
    )
    env.client.operation = stop.id
    interrupted(env.client)
    assert capsys.readouterr().err == (
        f"interrupted: the operation goes on in the daemon (operation {stop.id}); "
        "see 'ketch list'\n"
    )
    gate.set()
    stop.future.result(WAIT)
    interrupted(env.client)
    assert capsys.readouterr().err.startswith(f'interrupted: stop (operation {stop.id}) on "alpha"')
