"""The operation table (``ketch.daemon.ops``): ids, what each waits for, cancel, pre-emption,
replay, and operations dropped when their client goes before they begin.

Real asyncio locks and tasks on a real event loop; the operations' work is
plain coroutines that wait on events the test sets, so every ordering is
asserted without a timing threshold (``BOUND`` only stops a broken test from
hanging).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from ketch.daemon import ops as ops_mod
from ketch.daemon.ops import AlreadyEnded, Follow, NotCancellable, Operations, QueueReporter
from ketch.errors import NotFound
from ketch.layout import Root
from ketch.model import OperationKind
from ketch.service.context import Context
from ketch.service.waits import WATCHER, Cancelled, Wait, WaitCancelled

BOUND = 20.0  # never a pass criterion: only a bound on a test that would otherwise hang

Work = Callable[[QueueReporter], Awaitable[dict[str, Any]]]


def table(tmp_path: Path) -> Operations:
    ctx = Context(
        root=Root(tmp_path), store=cast(Any, None), driver=cast(Any, None), images=cast(Any, None)
    )
    return Operations(ctx)


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, BOUND)

    asyncio.run(bounded())


async def events(follow: Follow) -> list[dict[str, Any]]:
    return [e async for e in follow]


async def settle() -> None:
    """Let every ready task run until it blocks (a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


def held(gate: asyncio.Event, log: list[str], what: str) -> Work:
    """Work that logs its start, waits for ``gate``, logs its end."""

    async def work(rep: QueueReporter) -> dict[str, Any]:
        log.append(f"{what}:start")
        rep.step(f"{what} working")
        await gate.wait()
        log.append(f"{what}:end")
        return {"done": what}

    return work


def ready_wait(
    instance: str, log: list[str], what: str, before: asyncio.Event | None = None
) -> Work:
    """Work like a launch: (optionally wait for ``before``, then) wait for readiness forever.

    Cut short, it says so as the use cases do (Cancelled, the instance kept).
    """

    async def work(rep: QueueReporter) -> dict[str, Any]:
        log.append(f"{what}:start")
        if before is not None:
            await before.wait()
        try:
            async with Wait(instance, "readiness"):
                await asyncio.Event().wait()  # a guest that never answers
        except WaitCancelled as exc:
            log.append(f"{what}:cut")
            raise Cancelled(f"stopped waiting: {exc.reason}; the instance is kept") from exc
        return {}

    return work


# -- ids, the first event, what is listed ---------------------------------------------------------


def test_every_operation_has_an_id_sent_as_its_first_event(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        log: list[str] = []
        gate = asyncio.Event()
        gate.set()
        got = [
            await events(ops.submit(["a"], OperationKind.START, held(gate, log, "w")))
            for _ in range(20)
        ]
        ids = [e[0]["id"] for e in got]
        assert all(e[0] == {"type": "operation", "id": i} for e, i in zip(got, ids, strict=True))
        assert len(set(ids)) == 20 and all(len(i) == 8 and int(i, 16) >= 0 for i in ids)
        assert got[0][1:] == [
            {"type": "step", "message": "w working"},
            {"type": "result", "result": {"done": "w"}},
        ]
        assert ops.in_flight() == []  # all ended
        assert ops.get(ids[0]).outcome == "ok"  # but kept a while

    run(main())


def test_a_queued_operation_says_which_operation_holds_its_lock(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        log: list[str] = []
        gate = asyncio.Event()
        first = ops.submit(["a"], OperationKind.SUSPEND, held(gate, log, "first"))
        second = ops.submit(["b", "a"], OperationKind.STOP, held(gate, log, "second"))
        await settle()
        one, two = first.op, second.op
        listed = [o.describe() for o in ops.in_flight()]
        assert [d["id"] for d in listed] == [one.id, two.id]
        assert listed[0]["state"] == "running" and listed[0]["waits_for"] is None
        assert listed[0]["kind"] == "suspend" and listed[0]["instances"] == ["a"]
        assert listed[0]["step"] == "first working" and listed[0]["started"] > 0
        assert listed[1]["state"] == "waiting"
        assert listed[1]["waits_for"] == {
            "type": "lock", "instance": "a", "operation": one.id, "kind": "suspend",
        }  # fmt: skip
        assert listed[1]["instances"] == ["b", "a"]
        assert log == ["first:start"]
        gate.set()
        assert (await events(second))[-1]["type"] == "result"
        assert [e["type"] for e in await events(first)] == ["operation", "step", "result"]
        assert log == ["first:start", "first:end", "second:start", "second:end"]

    run(main())


def test_the_waiting_event_names_the_holder(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        gate = asyncio.Event()
        first = ops.submit(["a"], OperationKind.LAUNCH, held(gate, [], "first"))
        second = ops.submit(["a"], OperationKind.START, held(gate, [], "second"))
        assert (await second.next())["type"] == "operation"  # type: ignore[index]
        waiting = await second.next()
        assert waiting == {
            "type": "waiting",
            "message": f'waiting for "launch" on "a" to finish (operation {first.op.id})',
        }
        gate.set()
        await events(second)
        await events(first)

    run(main())


# -- cancel --------------------------------------------------------------------------------------


def test_cancelling_an_operation_waiting_for_a_lock_means_it_never_runs(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        log: list[str] = []
        gate = asyncio.Event()
        first = ops.submit(["a"], OperationKind.STOP, held(gate, log, "first"))
        second = ops.submit(["a"], OperationKind.PURGE, held(gate, log, "second"))
        await settle()
        reply = await ops.cancel(second.op.id)
        assert reply["cancelled"] is True and reply["outcome"] == "cancelled"
        assert reply["message"] == (
            f'purge (operation {second.op.id}) on "a" was cancelled before it began; '
            "nothing was done"
        )
        final = (await events(second))[-1]
        assert final["type"] == "error" and final["error"]["code"] == "cancelled"
        assert final["error"]["hint"] == "nothing was done"
        assert [o.id for o in ops.in_flight()] == [first.op.id]
        gate.set()
        await events(first)
        third = await events(ops.submit(["a"], OperationKind.START, held(gate, log, "third")))
        assert third[-1]["type"] == "result"  # the lock was left free
        assert log == ["first:start", "first:end", "third:start", "third:end"]
        again = await ops.cancel(second.op.id)  # asking again says the same
        assert again["cancelled"] is True

    run(main())


def test_a_running_operation_is_not_cancellable_and_an_ended_one_says_so(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        gate = asyncio.Event()
        first = ops.submit(["a"], OperationKind.SNAPSHOT, held(gate, [], "first"))
        await settle()
        with pytest.raises(NotCancellable) as err:
            await ops.cancel(first.op.id)
        assert err.value.code == "not-cancellable"
        assert err.value.message == (
            f'snapshot (operation {first.op.id}) on "a" cannot be cancelled: it is running '
            "(first working) and past the point of no return; it goes on in the daemon"
        )
        assert (
            err.value.hint == f"follow it with GET /v1/operations/{first.op.id}; see 'ketch list'"
        )
        gate.set()
        assert (await events(first))[-1]["type"] == "result"  # it ran to its end
        with pytest.raises(AlreadyEnded) as ended:
            await ops.cancel(first.op.id)
        assert ended.value.code == "operation-ended" and "already ended (ok)" in ended.value.message
        with pytest.raises(NotFound):
            await ops.cancel("00000000")

    run(main())


def test_cancelling_a_readiness_wait_ends_it_and_keeps_what_was_made(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        log: list[str] = []
        launch = ops.submit(["a"], OperationKind.LAUNCH, ready_wait("a", log, "launch"))
        await settle()
        (listed,) = [o.describe() for o in ops.in_flight()]
        assert listed["state"] == "waiting"
        assert listed["waits_for"] == {"type": "readiness", "instance": "a"}
        reply = await ops.cancel(launch.op.id)
        assert reply["cancelled"] is True
        assert reply["message"] == (
            f"stopped waiting: DELETE /v1/operations/{launch.op.id} cancelled the wait; "
            "the instance is kept"
        )
        got = await events(launch)
        assert got[-1]["error"]["code"] == "cancelled"
        assert any(
            e["type"] == "waiting" and e["message"].startswith('waiting for "a" to be ready')
            for e in got
        )
        assert log == ["launch:start", "launch:cut"]
        assert not ops.lock("a").locked()

    run(main())


# -- pre-emption ---------------------------------------------------------------------------------


def test_force_stop_and_purge_pre_empt_a_readiness_wait(tmp_path: Path) -> None:
    async def main() -> None:
        for kind, preemptor in (
            (OperationKind.LAUNCH, OperationKind.FORCE_STOP),
            (OperationKind.START, OperationKind.PURGE),
            (OperationKind.RESTART, OperationKind.PURGE),
        ):
            ops = table(tmp_path)
            log: list[str] = []
            waiting = ops.submit(["a"], kind, ready_wait("a", log, kind))
            await settle()
            go = asyncio.Event()
            go.set()
            forced = await events(ops.submit(["a"], preemptor, held(go, log, preemptor)))
            assert log == [f"{kind}:start", f"{kind}:cut", f"{preemptor}:start", f"{preemptor}:end"]
            assert forced[-1]["type"] == "result"
            assert {
                "type": "waiting",
                "message": f'cancelled the wait of {kind} (operation {waiting.op.id}) on "a" '
                "for its guest to be ready",
            } in forced
            final = (await events(waiting))[-1]
            assert final["error"]["code"] == "cancelled"
            assert final["error"]["message"] == (
                f"stopped waiting: {preemptor} (operation {forced[0]['id']}) cancelled the wait; "
                "the instance is kept"
            )

    run(main())


def test_a_pre_emptor_queued_early_cuts_the_wait_as_soon_as_it_begins(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        log: list[str] = []
        booting = asyncio.Event()
        launch = ops.submit(
            ["a"], OperationKind.LAUNCH, ready_wait("a", log, "launch", before=booting)
        )
        await settle()
        go = asyncio.Event()
        go.set()
        forced = ops.submit(["a"], OperationKind.FORCE_STOP, held(go, log, "force"))
        await settle()
        assert log == ["launch:start"]  # still preparing: not pre-emptible yet, the stop waits
        booting.set()  # the launch reaches its readiness wait, and is cut at once
        assert (await events(forced))[-1]["type"] == "result"
        assert log == ["launch:start", "launch:cut", "force:start", "force:end"]
        assert (await events(launch))[-1]["error"]["code"] == "cancelled"

    run(main())


def test_a_graceful_stop_does_not_pre_empt(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        log: list[str] = []
        launch = ops.submit(["a"], OperationKind.LAUNCH, ready_wait("a", log, "launch"))
        await settle()
        go = asyncio.Event()
        go.set()
        stop = ops.submit(["a"], OperationKind.STOP, held(go, log, "stop"))
        await settle()
        assert launch.op.wait is not None and launch.op.wait.reason is None
        assert stop.op.waits_for and stop.op.waits_for["type"] == "lock"
        await ops.cancel(launch.op.id)  # only then does the stop go ahead
        assert (await events(stop))[-1]["type"] == "result"
        assert log == ["launch:start", "launch:cut", "stop:start", "stop:end"]

    run(main())


# -- clients that go away --------------------------------------------------------------------------


def test_an_operation_whose_client_goes_before_it_began_is_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        log: list[str] = []
        gate = asyncio.Event()
        first = ops.submit(["a"], OperationKind.LAUNCH, held(gate, log, "launch"))
        purge = ops.submit(["a"], OperationKind.PURGE, held(gate, log, "purge"))
        await settle()
        purge.close()  # its client was killed while it waited for the lock
        await settle()
        assert purge.op.outcome == "dropped"
        assert purge.op.final is not None
        assert (
            "was dropped: its client went away before it began"
            in (purge.op.final["error"]["message"])
        )
        first.close()  # the launch has begun: it goes on without its client
        gate.set()
        await settle()
        assert first.op.outcome == "ok"
        assert log == ["launch:start", "launch:end"]  # the purge never ran
        reply = await ops.cancel(purge.op.id)
        assert reply["cancelled"] is True and reply["outcome"] == "dropped"

    run(main())


def test_an_operation_someone_re_attached_to_is_not_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        log: list[str] = []
        gate = asyncio.Event()
        first = ops.submit(["a"], OperationKind.STOP, held(gate, log, "stop"))
        second = ops.submit(["a"], OperationKind.START, held(gate, log, "start"))
        await settle()
        other = ops.follow(second.op.id, replay=True)
        second.close()
        await settle()
        assert second.op.final is None  # still followed
        other.close()
        await settle()
        assert second.op.outcome == "dropped"
        gate.set()
        await events(first)
        assert log == ["stop:start", "stop:end"]

    run(main())


def test_internal_callers_run_to_the_end(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        gate = asyncio.Event()
        gate.set()
        assert await ops.run(["a"], OperationKind.STOP, held(gate, [], "x")) == {
            "type": "result",
            "result": {"done": "x"},
        }

    run(main())


# -- re-attaching: replay, the bound, a finished operation ----------------------------------------


def test_re_attaching_replays_a_bounded_history_then_follows(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        gate = asyncio.Event()
        more = asyncio.Event()
        n = ops_mod.REPLAY + 50

        async def chatty(rep: QueueReporter) -> dict[str, Any]:
            for i in range(n):
                rep.progress("disk", i, n)
            await more.wait()
            rep.step("after")
            await gate.wait()
            return {}

        mine = ops.submit(["a"], OperationKind.BUILD, chatty)
        await settle()
        late = ops.follow(mine.op.id, replay=True)
        live = ops.follow(mine.op.id, replay=False)
        more.set()
        gate.set()
        replayed = await events(late)
        assert replayed[0] == {
            "type": "operation", "id": mine.op.id, "replayed": ops_mod.REPLAY, "dropped": 50,
        }  # fmt: skip
        progress = [e for e in replayed if e["type"] == "progress"]
        assert [e["done"] for e in progress] == list(range(50, n))  # the oldest fell out
        assert replayed[-2:] == [
            {"type": "step", "message": "after"},
            {"type": "result", "result": {}},
        ]
        assert await events(live) == [
            {"type": "operation", "id": mine.op.id, "replayed": 0, "dropped": 0},
            {"type": "step", "message": "after"},
            {"type": "result", "result": {}},
        ]
        assert len(await events(mine)) == n + 3  # the requester saw everything

    run(main())


def test_a_finished_operation_is_kept_a_while_with_its_final_event(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        gate = asyncio.Event()
        gate.set()
        mine = ops.submit(["a"], OperationKind.START, held(gate, [], "x"))
        await events(mine)
        got = await events(ops.follow(mine.op.id, replay=False))
        assert got[-1] == {"type": "result", "result": {"done": "x"}}
        assert ops.get(mine.op.id).describe()["state"] == "done"
        assert mine.op.finished is not None
        mine.op.finished -= ops_mod.KEEP_DONE + 1  # as if it had ended long ago
        with pytest.raises(NotFound) as err:
            ops.get(mine.op.id)
        assert err.value.message == f'no operation "{mine.op.id}"'

    run(main())


# -- waits outside the daemon, cancellation from elsewhere ---------------------------------------


def test_a_wait_without_a_watcher_changes_nothing() -> None:
    async def main() -> None:
        assert WATCHER.get() is None
        async with Wait("a", "readiness") as w:
            assert w.active
        assert not w.active and not w.cancel("late")

    run(main())


def test_a_cancellation_from_elsewhere_is_not_turned_into_wait_cancelled(tmp_path: Path) -> None:
    async def main() -> None:
        ops = table(tmp_path)
        mine = ops.submit(["a"], OperationKind.LAUNCH, ready_wait("a", [], "launch"))
        await settle()
        task = mine.op.task
        assert task is not None
        task.cancel()  # the daemon shutting down, say
        await asyncio.wait([task])
        assert task.cancelled()
        final = (await events(mine))[-1]
        assert final["error"]["code"] == "internal" and "cancelled" in final["error"]["message"]
        assert not ops.lock("a").locked()

    run(main())
