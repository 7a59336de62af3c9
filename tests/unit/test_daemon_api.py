"""ketchd's HTTP API, served for real on a Unix socket, driven by the real client.

The aiohttp application from ``ketch.daemon.api`` and the operation table from
``ketch.daemon.ops`` run in a background thread with their own event loop,
over a real :class:`~ketch.store.db.Store` file.  Only the hypervisor is
fake: ``fakes.FakeDriver`` (``tests/fakes.py``) implements the
``ketch.runtime.driver.Driver`` protocol, keeps each instance's "process" in
memory, and records every call in order.  Its long calls (``powerdown``,
``suspend``, ``kill``) can be held at a gate that the test opens, so ordering
is asserted without any timing threshold.  The CLI's own
:class:`~ketch.client.Client` (``autostart=False``) talks to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fakes import GATE_POLLS, FakeDriver, FakeImages

from ketch.api.openapi import document as openapi_document
from ketch.client import Client, request
from ketch.daemon.api import Api
from ketch.daemon.ops import Operations
from ketch.errors import RemoteError
from ketch.layout import Root
from ketch.model import BootSpec, InstanceSpec, Intent
from ketch.runtime.driver import SUSPEND_TAG
from ketch.service import guestlink
from ketch.service.context import Context
from ketch.store.db import Store

WAIT = 20.0  # upper bound for a test thread waiting on the server; never a pass criterion


# -- the server in a thread ------------------------------------------------------------------


class Daemon:
    """The real API app + operations, on a real Unix socket, in a background event loop."""

    def __init__(self, root: Root, db: Path, driver: FakeDriver) -> None:
        self.root, self.db, self.driver = root, db, driver
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        # The daemon's Store lives in the loop thread (sqlite3 objects stay in their thread).
        self.store = Store(self.db)
        ctx = Context(root=self.root, store=self.store, driver=self.driver, images=FakeImages())
        self.ops = Operations(ctx)
        self.app = Api(self.ops, FakeImages()).app()  # type: ignore[arg-type]
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.root.socket)).start()

    async def _stop(self) -> None:
        await asyncio.wait_for(self.ops.drain(), WAIT)
        await self.runner.cleanup()
        self.store.close()

    def stop(self) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            self.loop.close()


@dataclass
class Env:
    daemon: Daemon
    driver: FakeDriver
    store: Store  # the test's own connection to the same database file
    client: Client
    root: Root

    def add(
        self,
        name: str,
        intent: Intent = Intent.RUN,
        *,
        running: bool = True,
        qmp: str = "running",
        tags: set[str] | None = None,
        port: int = 42001,
    ) -> None:
        self.store.add(spec(name, port), intent)
        self.driver.add(name, running=running, qmp=qmp, tags=tags or set())

    def in_background(self, fn: Callable[[], Any]) -> Future[Any]:
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return fut

    def states(self) -> dict[str, str]:
        return {i["name"]: i["state"] for i in self.client.get("/v1/instances")["list"]}


def spec(name: str, port: int = 42001) -> InstanceSpec:
    return InstanceSpec(
        name=name,
        image="tiny",
        image_id="ketch:tiny@20261126",
        release="ketch tiny 2026-11-26",
        cpus=1,
        memory=512 * 1024**2,
        disk=1024**3,
        boot=BootSpec(kernel="/vault/vmlinuz"),
        base_disk="/vault/tiny.qcow2",
        ssh_port=port,
        mac="52:54:00:00:00:01",
        instance_id=f"i-{name}",
        created=1795670361.0,
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with serving(tmp_path) as running:
        yield running


@contextlib.contextmanager
def serving(tmp_path: Path) -> Iterator[Env]:
    """A real daemon on a fake driver, stopped and cleaned up afterwards."""
    # A short directory for the socket: AF_UNIX paths are limited to ~107 bytes.
    short = Path(tempfile.mkdtemp(prefix="kd-", dir="/tmp"))
    root = Root(short)
    db = tmp_path / "ketch.db"
    store = Store(db)
    store.set_setting("local.accel", "tcg")  # never probe KVM here
    driver = FakeDriver()
    daemon = Daemon(root, db, driver)
    daemon.start()
    try:
        yield Env(daemon, driver, store, Client(root, autostart=False), root)
    finally:
        for gate in driver.gates.values():
            gate.set()  # never leave an operation held
        daemon.stop()
        store.close()
        shutil.rmtree(short, ignore_errors=True)


def raw(env: Env, method: str, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """One HTTP request on the socket without the client's interpretation."""
    resp = request(str(env.root.socket), method, path, body, WAIT)
    return resp.status, resp.getheader("Content-Type") or "", resp.read()


# -- reads ------------------------------------------------------------------------------------


def test_list_shape(env: Env) -> None:
    env.add("alpha", Intent.RUN, running=True, port=42001)
    env.add("bravo", Intent.STOP, running=False, port=42002)
    env.add("charlie", Intent.SUSPEND, running=False, tags={SUSPEND_TAG}, port=42003)
    env.add("delta", Intent.RUN, running=False, port=42004)  # crashed
    doc = env.client.get("/v1/instances")
    assert list(doc) == ["list", "hosts"] and doc["hosts"] == 1  # 'local' only
    by_name = {i["name"]: i for i in doc["list"]}
    assert [i["name"] for i in doc["list"]] == ["alpha", "bravo", "charlie", "delta"]
    assert by_name["alpha"] == {
        "name": "alpha",
        "state": "Running",
        "ipv4": ["10.0.2.15"],
        "release": "ketch tiny 2026-11-26",
        "ssh_port": 42001,
        "inconsistencies": 0,
        "forwards": [],
        "host": "local",
    }
    assert by_name["bravo"]["state"] == "Stopped" and by_name["bravo"]["ipv4"] == []
    assert by_name["charlie"]["state"] == "Suspended"
    assert by_name["delta"]["state"] == "Stopped" and by_name["delta"]["inconsistencies"] == 1


def test_list_empty(env: Env) -> None:
    assert env.client.get("/v1/instances") == {"list": [], "hosts": 1}


def test_info_unknown_name_is_not_found_with_multipass_wording(env: Env) -> None:
    with pytest.raises(RemoteError) as err:
        env.client.get("/v1/info", names="ghost")
    assert err.value.code == "not-found"
    assert err.value.message == 'instance "ghost" does not exist'
    assert err.value.exit_code == 2
    status, ctype, body = raw(env, "GET", "/v1/info?names=ghost")
    assert status == 404 and "json" in ctype
    assert json.loads(body)["error"]["message"] == 'instance "ghost" does not exist'


def test_info_known_and_unknown_lists_the_error(env: Env) -> None:
    env.add("alpha", Intent.STOP, running=False)
    doc = env.client.get("/v1/info", names="alpha,ghost")
    assert list(doc) == ["errors", "info", "hosts"]
    assert doc["errors"] == ['instance "ghost" does not exist']
    alpha = doc["info"]["alpha"]
    assert alpha["state"] == "Stopped"
    assert alpha["ssh"] == {"host": "127.0.0.1", "port": 42001, "user": "ubuntu"}
    assert alpha["accel"] == ""  # not running
    assert alpha["host"] == "local"
    assert alpha["ipv4"] == []
    assert alpha["inconsistencies"] == []


def test_info_of_a_running_instance_whose_guest_cannot_be_reached(env: Env) -> None:
    """Guest statistics are best effort: the instance is shown, the failure is listed."""
    env.add("alpha", port=guestlink.free_port(set()))  # nothing listens there
    doc = env.client.get("/v1/info", names="alpha")
    assert doc["info"]["alpha"]["state"] == "Running"
    assert doc["info"]["alpha"]["accel"] == "tcg"
    assert doc["info"]["alpha"]["ipv4"] == ["10.0.2.15"]
    assert len(doc["errors"]) == 1 and '"alpha"' in doc["errors"][0]


def test_info_without_runtime_information_asks_nothing_of_the_guest(env: Env) -> None:
    """Multipass's --no-runtime-information: the same guest, no statistics, no error."""
    env.add("alpha", port=guestlink.free_port(set()))  # nothing listens there
    doc = env.client.get("/v1/info", names="alpha", no_runtime_information="true")
    assert doc["errors"] == []
    alpha = doc["info"]["alpha"]
    assert (alpha["state"], alpha["ipv4"], alpha["load"]) == ("Running", ["10.0.2.15"], [])


def test_info_without_names_is_every_instance(env: Env) -> None:
    env.add("alpha", Intent.SUSPEND, running=False, tags={SUSPEND_TAG})
    env.add("bravo", Intent.STOP, running=False, port=42002)
    doc = env.client.get("/v1/info")
    assert doc["errors"] == [] and set(doc["info"]) == {"alpha", "bravo"}


def test_info_shows_inconsistencies(env: Env) -> None:
    env.add("paused", Intent.RUN, running=True, qmp="paused")
    incs = env.client.get("/v1/info", names="paused")["info"]["paused"]["inconsistencies"]
    assert [i["code"] for i in incs] == ["paused"]
    assert incs[0]["message"] and incs[0]["action"]


def test_openapi_lists_every_route(env: Env) -> None:
    doc = env.client.get("/openapi.json")
    assert doc == openapi_document()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "ketchd" and doc["info"]["version"]
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in env.daemon.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served - {("get", "/openapi.json")} == documented
    for path_ops in doc["paths"].values():
        for op in path_ops.values():
            assert op["summary"] and "200" in op["responses"]
    error = doc["components"]["schemas"]["ErrorDetail"]["properties"]
    assert set(error) == {"code", "message", "hint", "exit_code"}


def test_version(env: Env) -> None:
    doc = env.client.get("/v1/version")
    assert doc["ketchd"] and doc["started"] > 0


def test_ssh_target_of_a_running_instance(env: Env) -> None:
    env.add("alpha")
    doc = env.client.get("/v1/instances/alpha/ssh")
    assert doc["host"] == "127.0.0.1" and doc["port"] == 42001 and doc["name"] == "alpha"
    assert doc["known_hosts"].endswith("instances/alpha/known_hosts")


def test_ssh_target_of_a_stopped_instance_is_invalid_state(env: Env) -> None:
    env.add("bravo", Intent.STOP, running=False)
    with pytest.raises(RemoteError) as err:
        env.client.get("/v1/instances/bravo/ssh")
    assert err.value.code == "invalid-state"
    assert err.value.hint == "'ketch start bravo' first"


def test_find_passes_the_provider_rows(env: Env) -> None:
    assert env.client.get("/v1/find")["images"][0]["aliases"] == ["tiny"]


def test_settings_round_trip_and_validation(env: Env) -> None:
    env.client.put("/v1/settings/client.primary-name", {"value": "main"})
    assert env.client.get("/v1/settings/client.primary-name")["value"] == "main"
    assert env.store.get_setting("client.primary-name") == "main"  # really in the database
    with pytest.raises(RemoteError) as err:
        env.client.put("/v1/settings/local.accel", {"value": "warp"})
    assert err.value.code == "invalid-argument" and err.value.exit_code == 1
    with pytest.raises(RemoteError) as err:
        env.client.get("/v1/settings/no.such.key")
    assert err.value.code == "not-found"


# -- operations and their streams --------------------------------------------------------------


def test_streamed_force_stop_returns_a_result(env: Env) -> None:
    env.add("alpha")
    events: list[dict[str, Any]] = []
    result = env.client.stream("/v1/instances/alpha/stop", {"force": True}, events.append)
    assert result == {"name": "alpha"}
    assert {"type": "step", "message": "Ended alpha's QEMU"} in events
    assert [c.what for c in env.driver.calls] == ["kill:start", "kill:end"]
    assert env.states() == {"alpha": "Stopped"}
    assert env.store.get("alpha").intent is Intent.STOP
    assert env.store.unfinished() == []
    assert env.store.history("alpha")[0].op == "force-stop"


def test_stream_is_ndjson_ending_in_a_result(env: Env) -> None:
    env.add("alpha")
    status, ctype, body = raw(env, "POST", "/v1/instances/alpha/stop", b'{"force": true}')
    assert status == 200 and ctype.startswith("application/x-ndjson")
    events = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert events[0]["type"] == "operation" and len(events[0]["id"]) == 8
    assert set(events[0]) == {"type", "id"}
    assert events[-1] == {"type": "result", "result": {"name": "alpha"}}
    assert all(e["type"] in {"step", "progress", "warning", "waiting"} for e in events[1:-1])


def test_graceful_stop(env: Env) -> None:
    env.add("alpha")
    assert env.client.stream("/v1/instances/alpha/stop", {}) == {"name": "alpha"}
    whats = [c.what for c in env.driver.calls]
    assert whats[:2] == ["powerdown:start", "powerdown:end"]
    assert env.states() == {"alpha": "Stopped"}


def test_suspend_then_force_stop_discards_the_saved_state(env: Env) -> None:
    env.add("alpha")
    env.client.stream("/v1/instances/alpha/suspend", {})
    assert env.states() == {"alpha": "Suspended"}
    assert env.store.get("alpha").intent is Intent.SUSPEND
    env.client.stream("/v1/instances/alpha/stop", {"force": True})
    assert env.states() == {"alpha": "Stopped"}
    assert "delete_tag:suspend" in [c.what for c in env.driver.calls]


def test_error_event_carries_code_message_hint_exit_code(env: Env) -> None:
    env.add("susp", Intent.SUSPEND, running=False, tags={SUSPEND_TAG})
    status, _, body = raw(env, "POST", "/v1/instances/susp/stop", b"{}")
    assert status == 200  # the stream had started; the error is its last event
    last = json.loads(body.splitlines()[-1])
    assert last["type"] == "error"
    err = last["error"]
    assert set(err) == {"code", "message", "hint", "exit_code"}
    assert err["code"] == "invalid-state" and err["exit_code"] == 2
    assert err["message"] == 'cannot stop "susp": it is Suspended'
    assert "stop --force susp" in err["hint"] and "discards the suspended state" in err["hint"]
    with pytest.raises(RemoteError) as remote:  # and the client rebuilds it faithfully
        env.client.stream("/v1/instances/susp/stop", {})
    assert (remote.value.code, remote.value.message, remote.value.hint, remote.value.exit_code) == (
        err["code"], err["message"], err["hint"], err["exit_code"],
    )  # fmt: skip


def test_timeout_error_event_has_exit_code_5(env: Env) -> None:
    env.add("stuck")
    env.driver.powerdown_exits = False
    with pytest.raises(RemoteError) as err:
        env.client.stream("/v1/instances/stuck/stop", {})
    assert err.value.code == "timeout" and err.value.exit_code == 5
    assert err.value.hint == "use 'ketch stop --force stuck' to end it at once"
    assert env.store.history("stuck")[0].outcome == "timeout"


def test_unknown_action_is_an_error_event(env: Env) -> None:
    env.add("alpha")
    with pytest.raises(RemoteError) as err:
        env.client.stream("/v1/instances/alpha/frobnicate", {})
    assert err.value.code == "not-found" and "frobnicate" in err.value.message


def test_operation_on_an_unknown_instance_is_404_before_any_stream(env: Env) -> None:
    status, ctype, body = raw(env, "POST", "/v1/instances/ghost/stop", b"{}")
    assert status == 404 and "json" in ctype
    assert json.loads(body)["error"]["message"] == 'instance "ghost" does not exist'
    with pytest.raises(RemoteError) as err:
        env.client.stream("/v1/instances/ghost/start", {})
    assert err.value.code == "not-found"


def test_bad_bodies_are_400_invalid_argument(env: Env) -> None:
    env.add("alpha")
    for body in (b"{not json", b"[1, 2]"):
        status, _, answer = raw(env, "POST", "/v1/instances/alpha/stop", body)
        assert status == 400
        assert json.loads(answer)["error"]["code"] == "invalid-argument"


def test_launch_with_an_invalid_name_is_refused_before_the_stream(env: Env) -> None:
    with pytest.raises(RemoteError) as err:
        env.client.stream("/v1/instances", {"name": "1bad"})
    assert err.value.code == "invalid-argument" and err.value.exit_code == 1
    with pytest.raises(RemoteError) as err:
        env.client.stream("/v1/instances", {"name": "ok", "colour": "blue"})
    assert "unknown field colour" in err.value.message
    assert env.store.all() == []


def test_delete_recover_purge(env: Env) -> None:
    env.add("alpha", Intent.STOP, running=False)
    env.client.stream("/v1/instances/alpha/delete", {})
    assert env.states() == {"alpha": "Deleted"}
    env.client.stream("/v1/instances/alpha/recover", {})
    assert env.states() == {"alpha": "Stopped"}
    env.client.stream("/v1/instances/alpha/delete", {})
    assert env.client.stream("/v1/purge") == {"purged": ["alpha"]}
    assert env.states() == {}


# -- concurrency: one instance serialized, two instances in parallel ------------------------------


def wait(event: threading.Event, what: str) -> None:
    assert event.wait(WAIT), f"never happened: {what}"


def test_two_operations_on_one_instance_are_serialized(env: Env) -> None:
    env.add("alpha")
    gate = env.driver.hold("alpha", "suspend")
    first_events: list[dict[str, Any]] = []
    first = env.in_background(
        lambda: env.client.stream("/v1/instances/alpha/suspend", {}, first_events.append)
    )
    wait(env.driver.started("alpha", "suspend"), "suspend started")

    second_events: list[dict[str, Any]] = []
    second_waits = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        second_events.append(event)
        if event["type"] == "waiting":
            second_waits.set()

    second = env.in_background(
        lambda: env.client.stream("/v1/instances/alpha/stop", {"force": True}, on_event)
    )
    wait(second_waits, "second operation told it waits")
    assert not env.driver.started("alpha", "kill").is_set()  # still held behind the first
    assert not first.done() and not second.done()

    gate.set()
    assert first.result(WAIT) == {"name": "alpha"}
    assert second.result(WAIT) == {"name": "alpha"}

    waiting = [e for e in second_events if e["type"] == "waiting"]
    suspend_id = first_events[0]["id"]
    assert first_events[0] == {"type": "operation", "id": suspend_id}
    assert second_events[0]["type"] == "operation" and second_events[0]["id"] != suspend_id
    assert waiting == [
        {
            "type": "waiting",
            "message": f'waiting for "suspend" on "alpha" to finish (operation {suspend_id})',
        }
    ]
    d = env.driver
    assert (
        d.seq("alpha", "suspend:start")
        < d.seq("alpha", "suspend:end")
        < d.seq("alpha", "kill:start")
    )
    assert env.states() == {"alpha": "Stopped"}  # the force stop ran last, on the suspended VM


def test_operations_on_two_instances_overlap(env: Env) -> None:
    env.add("alpha", port=42001)
    env.add("bravo", port=42002)
    gate_a = env.driver.hold("alpha", "powerdown")
    gate_b = env.driver.hold("bravo", "powerdown")
    events_b: list[dict[str, Any]] = []
    a = env.in_background(lambda: env.client.stream("/v1/instances/alpha/stop", {}))
    wait(env.driver.started("alpha", "powerdown"), "alpha's powerdown started")
    b = env.in_background(
        lambda: env.client.stream("/v1/instances/bravo/stop", {}, events_b.append)
    )
    # bravo's operation gets going while alpha's is still held: they run side by side
    wait(env.driver.started("bravo", "powerdown"), "bravo's powerdown started")
    assert not a.done()
    gate_b.set()
    assert b.result(WAIT) == {"name": "bravo"}
    gate_a.set()
    assert a.result(WAIT) == {"name": "alpha"}

    d = env.driver
    assert d.seq("alpha", "powerdown:start") < d.seq("bravo", "powerdown:start")
    assert d.seq("bravo", "powerdown:end") < d.seq("alpha", "powerdown:end")
    assert not any(e["type"] == "waiting" for e in events_b)
    assert env.states() == {"alpha": "Stopped", "bravo": "Stopped"}


def test_a_client_that_goes_away_does_not_cancel_the_operation(env: Env) -> None:
    env.add("alpha")
    gate = env.driver.hold("alpha", "powerdown")
    resp = request(str(env.root.socket), "POST", "/v1/instances/alpha/stop", b"{}", WAIT)
    wait(env.driver.started("alpha", "powerdown"), "powerdown started")
    resp.close()  # the CLI was interrupted
    gate.set()
    for _ in range(GATE_POLLS):  # bounded: wait until the operation has run to its end
        if not env.store.unfinished() and env.store.history("alpha")[0].outcome:
            break
        time.sleep(0.005)
    assert env.store.history("alpha")[0].outcome == "ok"
    assert env.states() == {"alpha": "Stopped"}


def test_an_instance_being_stopped_is_not_shown_as_unresponsive(env: Env) -> None:
    env.add("alpha")
    gate = env.driver.hold("alpha", "powerdown")
    fut = env.in_background(lambda: env.client.stream("/v1/instances/alpha/stop", {}))
    try:
        wait(env.driver.started("alpha", "powerdown"), "powerdown started")
        info = env.client.get("/v1/info", names="alpha")["info"]["alpha"]
        codes = [i["code"] for i in info["inconsistencies"]]
        assert "qmp-unresponsive" not in codes
        assert info["state"] != "Unknown"
    finally:
        gate.set()
        fut.result(WAIT)
