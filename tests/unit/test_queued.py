"""``stop --force`` and ``delete --purge`` of an instance whose host does not answer: queued
in the store (a reopened store still has it), said (exit 2), and carried out once the host
answers (service/queued.py, store/queued.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import FakeDriver
from test_host_drivers import LV
from test_placement import World as Base
from test_store import make_spec

from ketch.errors import EXIT_FAILED, Queued
from ketch.layout import InstanceDir
from ketch.model import InstanceSpec, Intent, Observation, OperationKind, State
from ketch.progress import ListReporter
from ketch.service import delete, inspect, lifecycle, queued, recovery
from ketch.store.db import Store

WHY = "Failed to connect socket to '/run/libvirt/libvirt-sock'"


class Flaky(FakeDriver):
    """A libvirt host's driver whose host answers, or not (``down``)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def observe(
        self, spec: InstanceSpec, idir: InstanceDir, *, probe_qmp: bool = True
    ) -> Observation:
        obs = await super().observe(spec, idir, probe_qmp=probe_qmp)
        if not self.down:
            return obs
        why = f'host "{spec.host}" could not be asked: {WHY}'
        return replace(obs, pid=None, suspend_tag=None, host_error=why)


class World(Base):
    """The instance "b", running on the libvirt host "lv", whose host does not answer."""

    lv: Flaky

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, Flaky())
        self.store.add_host(LV)
        self.store.add(make_spec("b", host="lv"), Intent.RUN)
        self.root.instance("b").path.mkdir(parents=True)
        self.lv.add("b", running=True, tags=set())

    def state(self) -> inspect.View:
        return asyncio.run(inspect.get(self.ctx, "b"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with World(tmp_path) as w:
        yield w


def test_an_unreachable_host_makes_the_instance_unknown_with_its_code(world: World) -> None:
    v = world.state()
    assert v.state is State.UNKNOWN and [i.code for i in v.derived.inconsistencies] == [
        "host-unreachable"
    ]
    assert v.derived.inconsistencies[0].message == f'host "lv" could not be asked: {WHY}'


def test_stop_force_is_queued_said_and_survives_a_restarted_store(world: World) -> None:
    rep = ListReporter()
    with pytest.raises(Queued) as err:
        asyncio.run(lifecycle.force_stop(world.ctx, "b", rep))
    assert err.value.message == (
        "host lv is unreachable: stop --force of b is queued; it runs when the host answers"
    )
    assert err.value.exit_code == EXIT_FAILED and err.value.code == "queued"
    assert world.lv.calls == []  # nothing was asked of the host
    assert world.store.unfinished() == []  # nothing journaled: it has not begun
    world.store.close()
    world.store = world.ctx.store = Store(world.root.database)  # a ketchd started again
    (q,) = world.store.queued_ops()
    assert (q.instance, q.op) == ("b", OperationKind.FORCE_STOP)
    action = world.state().derived.inconsistencies[0].action
    assert action.startswith("'stop --force' is queued (since ")


def test_once_the_host_answers_the_queued_stop_is_due_and_runs(world: World) -> None:
    with pytest.raises(Queued):
        asyncio.run(lifecycle.force_stop(world.ctx, "b", ListReporter()))
    assert asyncio.run(queued.due(world.ctx, set())) == []  # still down
    world.lv.down = False
    (q,) = asyncio.run(queued.due(world.ctx, set()))
    assert asyncio.run(queued.due(world.ctx, {"b"})) == []  # its lock is held: next round
    asyncio.run(lifecycle.force_stop(world.ctx, q.instance, ListReporter()))
    assert world.store.queued_ops() == [] and world.state().state is State.STOPPED


def test_a_purge_outranks_a_queued_stop_and_removes_the_row_with_the_record(
    world: World,
) -> None:
    with pytest.raises(Queued):
        asyncio.run(lifecycle.force_stop(world.ctx, "b", ListReporter()))
    with pytest.raises(Queued, match="delete --purge of b is queued"):
        asyncio.run(delete.delete(world.ctx, "b", ListReporter(), purge=True))
    with pytest.raises(Queued, match="delete --purge of b is already queued"):
        asyncio.run(lifecycle.force_stop(world.ctx, "b", ListReporter()))
    assert [q.op for q in world.store.queued_ops()] == [OperationKind.PURGE]
    assert world.store.exists("b")  # kept until its host can be asked
    world.lv.down = False
    asyncio.run(lifecycle.force_stop(world.ctx, "b", ListReporter()))  # not the purge: stays
    assert [q.op for q in world.store.queued_ops()] == [OperationKind.PURGE]
    asyncio.run(delete.delete(world.ctx, "b", ListReporter(), purge=True))
    assert not world.store.exists("b") and world.store.queued_ops() == []


def test_purge_of_every_deleted_one_queues_those_whose_host_is_down(world: World) -> None:
    world.store.set_deleted("b", True)
    world.store.add(make_spec("a", ssh_port=42002), Intent.STOP)
    world.store.set_deleted("a", True)
    world.root.instance("a").path.mkdir(parents=True)
    with pytest.raises(Queued, match="delete --purge of b is queued"):
        asyncio.run(delete.purge(world.ctx, ListReporter()))
    assert not world.store.exists("a") and world.store.exists("b")  # the local one is gone


def test_an_interrupted_purge_whose_host_is_down_is_queued_at_start_up(world: World) -> None:
    world.store.begin("b", OperationKind.PURGE)  # a ketchd ended during the purge
    (done,) = asyncio.run(recovery.recover_all(world.ctx, ListReporter()))
    assert done.startswith('purge on b: queued until host lv answers (host "lv" could not')
    assert world.store.unfinished() == [] and world.store.exists("b")
    assert [q.op for q in world.store.queued_ops()] == [OperationKind.PURGE]


def test_a_start_asked_since_drops_a_queued_stop(world: World) -> None:
    with pytest.raises(Queued):
        asyncio.run(lifecycle.force_stop(world.ctx, "b", ListReporter()))
    world.lv.down = False
    rep = ListReporter()
    asyncio.run(lifecycle.start(world.ctx, "b", rep))  # it runs: nothing to do but that
    assert world.store.queued_ops() == [] and world.state().state is State.RUNNING
    assert rep.warnings == ["the stop --force queued while its host did not answer is dropped"]
