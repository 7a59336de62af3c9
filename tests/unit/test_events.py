"""``GET /v1/events`` on a real daemon (Unix socket, real store, fake hypervisor).

The stream is read by the CLI's own client in a thread; every event is checked
against what ``list`` says at the same moment.  A slow reader is made by not
reading while the daemon publishes: its buffer stays bounded and it is sent
``lagged`` and a fresh ``snapshot``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import pytest
from test_daemon_api import WAIT, Env, serving

from ketch.api import models as m
from ketch.api.routes import WATCH
from ketch.client import request
from ketch.daemon.events import Hub, Subscriber
from ketch.model import Intent
from ketch.runtime.driver import SUSPEND_TAG


class Watcher:
    """``ketch watch``'s reading, in a thread: the decoded events as they come."""

    def __init__(self, env: Env) -> None:
        self.events: queue.Queue[m.AnyWatchEvent | None] = queue.Queue()
        self.resp = request(str(env.root.socket), "GET", WATCH.path, None, None)
        assert self.resp.status == 200
        self.lines = self.resp.lines()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.lines:
                if line.strip():
                    self.events.put(m.decode_watch_event(line))
        except Exception:
            pass
        finally:
            self.events.put(None)

    def close(self) -> None:
        """The client goes (its socket shut, as a killed 'ketch watch' leaves it)."""
        import socket

        self.resp._sock.shutdown(socket.SHUT_RDWR)

    def next(self) -> m.AnyWatchEvent:
        event = self.events.get(timeout=WAIT)
        assert event is not None, "the stream ended"
        return event

    def until(self, wanted: Callable[[m.AnyWatchEvent], bool]) -> list[m.AnyWatchEvent]:
        """Every event up to and with the first that ``wanted`` (bounded by WAIT each)."""
        seen = [self.next()]
        while not wanted(seen[-1]):
            seen.append(self.next())
        return seen


@pytest.fixture
def env(tmp_path: object) -> Iterator[Env]:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    with serving(tmp_path) as running:
        yield running


def _hub(env: Env) -> Hub:
    observer = env.daemon.ops.observers[0]
    hub = getattr(observer, "__self__", None)
    assert isinstance(hub, Hub)
    return hub


def test_the_stream_starts_with_what_list_shows(env: Env) -> None:
    env.add("alpha")
    env.add("bravo", Intent.STOP, running=False, port=42002)
    first = Watcher(env).next()
    assert isinstance(first, m.SnapshotEvent)
    assert {i.name: i.state for i in first.instances} == env.states()
    alpha = next(i for i in first.instances if i.name == "alpha")
    assert alpha.ipv4 == ["10.0.2.15"] and alpha.cpus == 1 and alpha.memory == 512 * 1024**2
    assert first.operations == []


def test_a_stop_is_an_operation_and_a_state_change(env: Env) -> None:
    env.add("alpha")
    watcher = Watcher(env)
    assert isinstance(watcher.next(), m.SnapshotEvent)
    env.client.stream("/v1/instances/alpha/stop", {"force": True})
    seen = watcher.until(lambda e: isinstance(e, m.InstanceEvent) and e.instance.state == "Stopped")
    started = [e for e in seen if isinstance(e, m.StartedEvent)]
    ended = [e for e in seen if isinstance(e, m.EndedEvent)]
    assert [e.operation.kind for e in started] == ["force-stop"]
    assert [(e.operation.kind, e.operation.outcome) for e in ended] == [("force-stop", "ok")]
    assert started[0].operation.instances == ["alpha"]
    last = seen[-1]
    assert isinstance(last, m.InstanceEvent) and last.previous is not None
    assert env.states() == {"alpha": "Stopped"}  # what list says, the stream said


def test_a_failed_operation_ends_with_the_clis_error(env: Env) -> None:
    env.add("susp", Intent.SUSPEND, running=False, tags={SUSPEND_TAG})
    watcher = Watcher(env)
    watcher.next()
    from ketch.errors import RemoteError

    with pytest.raises(RemoteError) as raised:
        env.client.stream("/v1/instances/susp/stop", {})
    seen = watcher.until(lambda e: isinstance(e, m.EndedEvent))
    ended = seen[-1]
    assert isinstance(ended, m.EndedEvent) and ended.operation.outcome == "failed"
    assert ended.operation.error is not None
    assert ended.operation.error.message == raised.value.message


def test_an_inconsistency_appears_when_the_suspend_tag_goes(env: Env) -> None:
    env.add("susp", Intent.SUSPEND, running=False, tags={SUSPEND_TAG})
    watcher = Watcher(env)
    first = watcher.next()
    assert isinstance(first, m.SnapshotEvent) and first.instances[0].state == "Suspended"
    assert first.instances[0].inconsistencies == []
    env.driver.vms["susp"].tags.discard(SUSPEND_TAG)  # as 'qemu-img snapshot -d suspend' does
    seen = watcher.until(lambda e: isinstance(e, m.InconsistencyEvent))
    found = seen[-1]
    assert isinstance(found, m.InconsistencyEvent) and found.name == "susp"
    info = env.client.get("/v1/info", names="susp")["info"]["susp"]
    assert [i["code"] for i in info["inconsistencies"]] == [found.inconsistency.code]


def test_a_purged_instance_is_removed(env: Env) -> None:
    env.add("gone", Intent.STOP, running=False)
    watcher = Watcher(env)
    watcher.next()
    env.client.stream("/v1/instances/gone/delete", {"purge": True})
    seen = watcher.until(lambda e: isinstance(e, m.RemovedEvent))
    assert seen[-1] == m.RemovedEvent(time=seen[-1].time, name="gone")
    assert env.states() == {}


def test_a_slow_reader_is_lagged_and_resynced_with_its_buffer_bounded(env: Env) -> None:
    """The client reads nothing while the daemon publishes far more than the socket holds."""
    env.add("alpha")
    watcher = Watcher(env)
    watcher.next()
    hub = _hub(env)
    flood = m.RemovedEvent(time=0.0, name="x" * 200)  # never a real one: time 0
    sizes: list[int] = []

    async def publish() -> None:
        for _ in range(50 * hub.buffer):
            hub.publish(flood)
            sizes.append(max(len(s.queue) for s in hub.subscribers))

    env.daemon.call(publish())
    assert max(sizes) <= hub.buffer  # memory bounded, whatever the reader does
    seen = watcher.until(lambda e: isinstance(e, m.LaggedEvent))
    lagged = seen[-1]
    assert isinstance(lagged, m.LaggedEvent) and lagged.dropped > 0
    resync = watcher.next()
    assert isinstance(resync, m.SnapshotEvent)
    assert {i.name: i.state for i in resync.instances} == env.states()
    # every flood event was either delivered or counted as dropped
    delivered = sum(1 for e in seen if isinstance(e, m.RemovedEvent) and e.time == 0.0)
    assert delivered + lagged.dropped == 50 * hub.buffer


def test_subscriber_buffer_alone() -> None:
    """The bounded buffer without a daemon: overflow empties it and counts what was lost."""

    class NoHub:
        def snapshot(self) -> m.SnapshotEvent:
            return m.SnapshotEvent(time=1.0, instances=[], operations=[])

    import asyncio

    async def main() -> list[m.WatchEvent]:
        sub = Subscriber(NoHub(), 3)  # type: ignore[arg-type]
        for n in range(10):
            sub.put(m.RemovedEvent(time=float(n), name=f"i{n}"))
            assert len(sub.queue) <= 3
        return sub.take() + sub.take()

    taken = asyncio.run(main())
    assert taken == [m.LaggedEvent(time=taken[0].time, dropped=10), NoHub().snapshot()]


def test_nobody_watching_means_no_polling(env: Env) -> None:
    env.add("alpha")
    watcher = Watcher(env)
    watcher.next()
    hub = _hub(env)
    assert len(hub.subscribers) == 1
    watcher.close()  # the client goes
    # the daemon notices (its stream looks every GONE_POLL) and stops looking
    for _ in range(int(WAIT / 0.05)):
        if not hub.subscribers and hub._task is None:
            break
        threading.Event().wait(0.05)
    assert not hub.subscribers and hub._task is None


def test_the_clis_client_reads_the_stream(env: Env) -> None:
    env.add("alpha")
    lines = env.client.watch(WATCH)
    first = m.decode_watch_event(next(lines))
    assert isinstance(first, m.SnapshotEvent) and first.instances[0].name == "alpha"
    lines.close()


def test_no_inconsistency_is_announced_while_an_operation_holds_the_instance(env: Env) -> None:
    """A launch's disk is 'missing' until made: told only if it still is once the op ends."""
    from ketch.model import OperationKind

    env.add("susp", Intent.SUSPEND, running=False, tags={SUSPEND_TAG})
    watcher = Watcher(env)
    watcher.next()
    ops = env.daemon.ops
    held = env.daemon.call(ops.acquire(["susp"], OperationKind.START))
    env.driver.vms["susp"].tags.discard(SUSPEND_TAG)
    hub = _hub(env)
    env.daemon.call(hub.refresh())  # a look while the lock is held: nothing announced
    env.daemon.call(hub.refresh())
    assert hub.announced.get("susp", set()) == set()

    async def release() -> None:
        ops.release(held)

    env.daemon.call(release())
    seen = watcher.until(lambda e: isinstance(e, m.InconsistencyEvent))
    assert isinstance(seen[-1], m.InconsistencyEvent) and seen[-1].name == "susp"
    assert [e for e in seen[:-1] if isinstance(e, m.InconsistencyEvent)] == []


def _cli_watch(env: Env, *args: str) -> list[str]:
    """The first lines ``ketch watch`` prints after a force stop, then it is interrupted."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "ketch.cli.main", "watch", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "KETCH_STORAGE": str(env.root.path)},
    )
    try:
        assert proc.stdout is not None
        out = [proc.stdout.readline()]
        if "--format" not in args:
            out.append(proc.stdout.readline())  # the snapshot's instance line
        env.client.stream("/v1/instances/alpha/stop", {"force": True})
        while "Stopped" not in out[-1]:
            out.append(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0  # Ctrl-C ends a watch quietly
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)


def test_ketch_watch_prints_the_changes(env: Env) -> None:
    env.add("alpha")
    out = _cli_watch(env)
    assert "1 instance(s), 0 operation(s)" in out[0]
    assert "alpha: Running 10.0.2.15" in out[1]
    assert any("force-stop on alpha started" in line for line in out)
    assert any("force-stop on alpha ended (ok)" in line for line in out)
    assert "alpha: Stopped (Running -> Stopped)" in out[-1]


def test_ketch_watch_json_is_the_stream_as_sent(env: Env) -> None:
    env.add("alpha")
    out = _cli_watch(env, "--format", "json")
    events = [m.decode_watch_event(line.encode()) for line in out]
    assert isinstance(events[0], m.SnapshotEvent)
    last = events[-1]
    assert isinstance(last, m.InstanceEvent) and last.instance.state == "Stopped"
