"""The journal guard: whatever step of an operation fails, no journal entry stays open.

Every state-changing use case runs below the daemon on a real store and real
qcow2 disks, with the fake hypervisor of ``tests/fakes.py`` wrapped in a
:class:`~fakes.FaultyDriver`: each driver call and each reported step of the
operation is a numbered step, and the run with the fault at step N raises
there.  A first run without a fault counts the steps, then every step fails
in turn, with every kind of failure: a host command failing, a timeout, a bug
(``RuntimeError``), a cancellation, and a host command failing while the
database cannot be written either (``PRAGMA query_only``: SQLite refuses the
journal's own writes then, as on a full disk).

After each run: the exception raised is the injected one (or wraps it), never
a journal error; no entry is left open (unless the database refused every
write: then a warning says so); the newest entry's outcome matches how the
operation ended; a launch or clone that failed leaves no half-made instance;
the disk's snapshot tags match the snapshot records.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes import FakeDriver, FakeImages, Faults, FaultyDriver, FaultyReporter, InjectedFault

from ketch.errors import KetchError, Timeout
from ketch.host import qemu_img
from ketch.layout import Root
from ketch.model import BootSpec, ImageInfo, InstanceSpec, Intent, OperationKind
from ketch.progress import NULL, ListReporter, Reporter
from ketch.runtime.driver import SUSPEND_TAG
from ketch.service import clone, delete, guestlink, lifecycle, recovery, settings, snapshots
from ketch.service.context import Context
from ketch.service.journal import journal, outcome_of
from ketch.service.launch import LaunchRequest, launch
from ketch.store.db import Store

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")

MiB = 1024**2


def qi(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "base.qcow2"
    qi("create", "-q", "-f", "qcow2", str(path), "64M")
    return path


class World:
    """A storage root on a real store, a fake hypervisor, real disks; faults on request."""

    def __init__(self, tmp: Path, base: Path, faults: Faults) -> None:
        self.root = Root(tmp / "root")
        self.root.path.mkdir(parents=True)
        self.store = Store(self.root.database)
        self.store.set_setting("local.accel", "tcg")  # never probe KVM here
        self.base, self.faults = base, faults
        self.inner = FakeDriver()
        image = ImageInfo(
            id="test:base", release="test base", disk=str(base), disk_format="qcow2",
            boot=BootSpec(kernel="/nonexistent/vmlinuz"),
        )  # fmt: skip
        self.ctx = Context(
            self.root, self.store, FaultyDriver(self.inner, faults), FakeImages(image),
            boot_timeout=0.01, stop_timeout=1.0,
        )  # fmt: skip
        self.quiet = Context(self.root, self.store, self.inner, FakeImages(image))  # no faults
        self.reporter = FaultyReporter(faults)
        self.open_at_fault: list[int] = []  # the entries open when the fault was raised
        self.unwritable_at_fault = False
        faults.before = self._on_fault

    def _on_fault(self) -> None:
        self.open_at_fault = [e.id for e in self.store.unfinished()]
        if self.unwritable_at_fault:
            self.unwritable()

    def add(
        self,
        name: str,
        intent: Intent = Intent.STOP,
        *,
        running: bool = False,
        qmp: str = "running",
        tags: set[str] | None = None,
        deleted: bool = False,
    ) -> None:
        idir = self.root.instance(name)
        idir.path.mkdir(parents=True)
        qi("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.base), str(idir.disk))
        self.store.add(
            InstanceSpec(
                name=name, image="test", image_id="test:base", release="test base", cpus=1,
                memory=256 * MiB, disk=64 * MiB, boot=BootSpec(kernel="/nonexistent/vmlinuz"),
                base_disk=str(self.base), ssh_port=guestlink.free_port(self.store.used_ports()),
                mac="52:54:00:00:00:01", instance_id=f"i-{name}",
            ),
            intent,
        )  # fmt: skip
        if deleted:
            self.store.set_deleted(name, True)
        self.inner.add(name, running=running, qmp=qmp, tags=tags or set())

    def take(self, snapshot: str) -> None:
        """A snapshot made before the operation under test (no faults)."""
        asyncio.run(snapshots.take(self.quiet, "vm", snapshot, "", NULL))

    def unwritable(self) -> None:
        """From now on SQLite refuses every write of the service's store."""
        self.store._db.execute("PRAGMA query_only = ON")


@dataclass(frozen=True)
class Scenario:
    setup: Callable[[World], None]
    run: Callable[[Context, Reporter], Awaitable[object]]
    makes: str | None = None  # the instance the operation creates (launch, clone)


def running(w: World) -> None:
    w.add("vm", Intent.RUN, running=True)


def stopped(w: World) -> None:
    w.add("vm")


def deleted(w: World) -> None:
    w.add("vm", deleted=True)


def hung(w: World) -> None:
    """Running, and its guest ignores the power button."""
    running(w)
    w.inner.powerdown_exits = False


def with_snapshot(w: World) -> None:
    w.add("vm")
    w.take("first")


SCENARIOS: dict[str, Scenario] = {
    "launch": Scenario(
        lambda w: None,
        lambda c, r: launch(
            c, LaunchRequest(image="test", name="fresh", memory="256M", disk="64M", timeout=0.01), r
        ),
        makes="fresh",
    ),
    "start": Scenario(stopped, lambda c, r: lifecycle.start(c, "vm", r)),
    "start-stale-tag": Scenario(
        lambda w: w.add("vm", tags={SUSPEND_TAG}), lambda c, r: lifecycle.start(c, "vm", r)
    ),
    "start-resume": Scenario(
        lambda w: w.add("vm", Intent.SUSPEND, tags={SUSPEND_TAG}),
        lambda c, r: lifecycle.start(c, "vm", r),
    ),
    "start-paused": Scenario(
        lambda w: w.add("vm", Intent.RUN, running=True, qmp="paused"),
        lambda c, r: lifecycle.start(c, "vm", r),
    ),
    "stop": Scenario(running, lambda c, r: lifecycle.stop(c, "vm", r)),
    "stop-timeout": Scenario(hung, lambda c, r: lifecycle.stop(c, "vm", r)),
    "force-stop": Scenario(
        lambda w: w.add("vm", Intent.SUSPEND, tags={SUSPEND_TAG}),
        lambda c, r: lifecycle.force_stop(c, "vm", r),
    ),
    "force-stop-running": Scenario(running, lambda c, r: lifecycle.force_stop(c, "vm", r)),
    "suspend": Scenario(running, lambda c, r: lifecycle.suspend(c, "vm", r)),
    "restart": Scenario(running, lambda c, r: lifecycle.restart(c, "vm", r)),
    "delete": Scenario(running, lambda c, r: delete.delete(c, "vm", r, purge=False)),
    "purge": Scenario(running, lambda c, r: delete.delete(c, "vm", r, purge=True)),
    "purge-all": Scenario(lambda w: w.add("vm", deleted=True), lambda c, r: delete.purge(c, r)),
    "recover": Scenario(
        lambda w: w.add("vm", deleted=True), lambda c, r: delete.recover(c, "vm", r)
    ),
    "snapshot": Scenario(stopped, lambda c, r: snapshots.take(c, "vm", "snap", "", r)),
    "restore": Scenario(
        with_snapshot,
        lambda c, r: snapshots.restore(c, "vm", "first", snapshot_first=False, reporter=r),
    ),
    "restore-snapshot-first": Scenario(
        with_snapshot,
        lambda c, r: snapshots.restore(c, "vm", "first", snapshot_first=True, reporter=r),
    ),
    "delete-snapshot": Scenario(with_snapshot, lambda c, r: snapshots.delete(c, "vm", "first", r)),
    "clone": Scenario(stopped, lambda c, r: clone.clone(c, "vm", "copy", r), makes="copy"),
    "set-disk": Scenario(stopped, lambda c, r: settings.set_instance(c, "vm", "disk", "128M", r)),
    "set-cpus": Scenario(stopped, lambda c, r: settings.set_instance(c, "vm", "cpus", "2", r)),
}

KINDS: dict[str, Callable[[str], BaseException]] = {
    "host-command": InjectedFault,
    "timeout": lambda what: Timeout(f"injected timeout at {what}"),
    "bug": lambda what: RuntimeError(f"injected bug at {what}"),
    "cancelled": lambda what: asyncio.CancelledError(f"injected cancellation at {what}"),
    "database-too": InjectedFault,  # and the store refuses every write from then on
}


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (``raise ... from``)."""
    out = [exc]
    while len(out) < 20:
        cause = out[-1].__cause__
        if cause is None:
            break
        out.append(cause)
    return out


def contexts(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised while handling, or from."""
    out = [exc]
    while len(out) < 20:
        nxt = out[-1].__cause__ or out[-1].__context__
        if nxt is None:
            break
        out.append(nxt)
    return out


def attempt(w: World, scenario: Scenario) -> BaseException | None:
    async def go() -> object:
        return await scenario.run(w.ctx, w.reporter)

    try:
        asyncio.run(go())
    except BaseException as exc:  # CancelledError included: it is what we inject
        return exc
    return None


def count_steps(tmp: Path, base: Path, scenario: Scenario) -> tuple[int, BaseException | None]:
    faults = Faults()
    w = World(tmp, base, faults)
    try:
        scenario.setup(w)
        natural = attempt(w, scenario)
        assert w.store.unfinished() == []
        return len(faults.seen), natural
    finally:
        w.store.close()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("op", list(SCENARIOS))
def test_a_failure_at_any_step_leaves_no_open_entry_and_is_the_error_raised(
    tmp_path: Path, base: Path, op: str, kind: str
) -> None:
    scenario = SCENARIOS[op]
    steps, natural = count_steps(tmp_path / "count", base, scenario)
    assert steps >= 1, f"{op}: no step to fail at"
    for at in range(1, steps + 1):
        faults = Faults(at=at, make=KINDS[kind])
        w = World(tmp_path / f"at{at}", base, faults)
        w.unwritable_at_fault = kind == "database-too"
        try:
            scenario.setup(w)
            before = max((e.id for e in w.store.history("vm", 1000)), default=0)
            raised = attempt(w, scenario)
            where = f"{op}, {kind} at step {at} ({faults.seen[at - 1]})"
            check(w, scenario, faults, raised, natural, before, where, kind)
        finally:
            w.store.close()


def check(
    w: World,
    scenario: Scenario,
    faults: Faults,
    raised: BaseException | None,
    natural: BaseException | None,
    before: int,
    where: str,
    kind: str,
) -> None:
    injected = faults.raised
    assert injected is not None, where
    if raised is not None and injected in causes(raised):
        # it propagated (maybe wrapped, "raise ... from"): never replaced by a journal error
        if isinstance(raised, KetchError):
            assert "cannot write ketch's database" not in raised.message, (where, raised)
        if kind == "cancelled":
            assert raised is injected, (where, "a cancellation is never wrapped", raised)
    elif raised is not None:
        # The service handled the fault and went on to its usual end (the readiness
        # timeout every start here ends in), or to a write of its own to a database
        # that refuses writes; the fault was not replaced by another error.
        assert injected not in contexts(raised), (where, "replaced by", raised)
        own_write = kind == "database-too" and isinstance(raised, KetchError)
        assert own_write or (natural is not None and type(raised) is type(natural)), (
            where,
            raised,
        )

    check_store = Store(w.root.database)  # a connection of its own: it can read
    try:
        entries = [e for n in ("vm", "fresh", "copy") for e in check_store.history(n, 1000)]
        new = sorted((e for e in entries if e.id > before), key=lambda e: e.id)
        if kind == "database-too":
            if check_store.unfinished():
                warned = " ".join(w.reporter.warnings)
                assert "could not mark this" in warned and "journal" in warned, where
                # what ketchd does when it starts again (the database writable again)
                later = Context(w.root, check_store, w.inner, FakeImages())
                asyncio.run(recovery.recover_all(later, NULL))
                assert check_store.unfinished() == [], (where, check_store.unfinished())
        else:
            assert check_store.unfinished() == [], (where, check_store.unfinished())
            by_id = {e.id: e for e in entries}
            if raised is not None and injected in causes(raised):
                for entry in w.open_at_fault:  # the operation the fault hit
                    assert by_id[entry].outcome == outcome_of(raised), (where, by_id[entry])
            elif raised is None:
                assert all(e.outcome == "ok" for e in new), (where, new)
            elif new:
                assert new[-1].outcome == outcome_of(raised), (where, new[-1], raised)
        made = scenario.makes
        if made is not None and kind != "database-too":
            assert check_store.exists(made) == w.root.instance(made).path.exists(), where
        disk = w.root.instance("vm").disk
        if check_store.exists("vm") and disk.exists():
            tags = set(qemu_img.read_snapshot_names(disk)) - {SUSPEND_TAG}
            assert tags == {s.tag for s in check_store.snapshots("vm")}, where
    finally:
        check_store.close()


# -- the guard itself ------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_the_guard_marks_ok_failed_and_timeout(tmp_path: Path, base: Path) -> None:
    w = World(tmp_path, base, Faults())
    w.add("vm")
    ctx, rep = w.quiet, ListReporter()

    async def go() -> None:
        async with journal(ctx, "vm", OperationKind.START, step="one", reporter=rep) as j:
            assert [e.step for e in w.store.unfinished()] == ["one"]
            j.step("two")
            assert [e.step for e in w.store.unfinished()] == ["two"]
        with pytest.raises(Boom):
            async with journal(ctx, "vm", OperationKind.STOP, reporter=rep):
                raise Boom
        with pytest.raises(Timeout):
            async with journal(ctx, "vm", OperationKind.STOP, reporter=rep):
                raise Timeout("slow")

    asyncio.run(go())
    assert [(e.op, e.outcome) for e in w.store.history("vm")] == [
        ("stop", "timeout"), ("stop", "failed"), ("start", "ok"),
    ]  # fmt: skip
    assert w.store.unfinished() == [] and rep.warnings == []
    w.store.close()


def test_undo_steps_run_newest_first_once_each_and_one_failing_is_a_warning(
    tmp_path: Path, base: Path
) -> None:
    w = World(tmp_path, base, Faults())
    w.add("vm")
    ran: list[str] = []
    rep = ListReporter()

    async def undo_async(what: str) -> None:
        ran.append(what)

    def undo_broken() -> None:
        ran.append("broken")
        raise OSError("no such file")

    async def go() -> None:
        async with journal(w.quiet, "vm", OperationKind.CLONE, reporter=rep) as j:
            j.undo(ran.append, "first")
            j.undo(undo_broken)
            j.undo(undo_async, "third")
            raise Boom

    with pytest.raises(Boom):
        asyncio.run(go())
    assert ran == ["third", "broken", "first"]
    assert rep.warnings == ["could not undo a step of this clone: OSError: no such file"]
    assert w.store.history("vm")[0].outcome == "failed"

    async def kept() -> None:
        async with journal(w.quiet, "vm", OperationKind.LAUNCH, reporter=rep) as j:
            j.undo(ran.append, "never")
            j.keep()
            raise Boom

    with pytest.raises(Boom):
        asyncio.run(kept())
    assert "never" not in ran
    w.store.close()


def test_the_original_error_is_raised_when_the_journal_cannot_be_written(
    tmp_path: Path, base: Path
) -> None:
    w = World(tmp_path, base, Faults())
    w.add("vm")
    rep = ListReporter()

    async def go() -> None:
        async with journal(w.quiet, "vm", OperationKind.SUSPEND, reporter=rep) as j:
            j.undo(w.store.remove, "vm")  # fails too: a warning, not the error
            w.unwritable()
            raise Boom("the operation's own failure")

    with pytest.raises(Boom, match="own failure"):
        asyncio.run(go())
    assert len(rep.warnings) == 2
    assert rep.warnings[0].startswith("could not undo a step of this suspend: cannot write")
    assert rep.warnings[1].startswith("could not mark this suspend as failed in the journal")
    w.store.close()
    reopened = Store(w.root.database)
    assert [e.op for e in reopened.unfinished()] == ["suspend"]  # recovery finds it next start
    reopened.close()


def test_a_finished_operation_whose_ok_cannot_be_written_is_a_warning(
    tmp_path: Path, base: Path
) -> None:
    w = World(tmp_path, base, Faults())
    w.add("vm")
    rep = ListReporter()

    async def go() -> None:
        async with journal(w.quiet, "vm", OperationKind.STOP, reporter=rep):
            w.unwritable()

    asyncio.run(go())
    assert rep.warnings and "could not mark this stop as ok" in rep.warnings[0]
    w.store.close()


def test_an_unwritable_journal_stops_an_operation_before_it_starts_unless_quiet(
    tmp_path: Path, base: Path
) -> None:
    w = World(tmp_path, base, Faults())
    w.add("vm")
    w.unwritable()
    rep = ListReporter()
    body: list[str] = []

    async def go(quiet: bool) -> None:
        async with journal(w.quiet, "vm", OperationKind.FORCE_STOP, reporter=rep, quiet=quiet) as j:
            j.step("ending QEMU")
            body.append("ran")

    with pytest.raises(KetchError, match="cannot write ketch's database"):
        asyncio.run(go(False))
    assert body == []
    asyncio.run(go(True))
    assert body == ["ran"]
    assert rep.warnings[0].endswith("carrying on without journaling this force-stop")
    w.store.close()


def test_a_stop_cut_short_is_finished_by_recovery(tmp_path: Path, base: Path) -> None:
    """ketchd died during a stop (perhaps after the ACPI power-off): the next one finishes
    it, where it once left the intent at run, so the guest's power-off then read as an
    unexpected exit (and a host reboot would have started it again)."""
    w = World(tmp_path, base, Faults())
    w.add("vm", Intent.RUN, running=True)
    w.store.begin("vm", "stop", "powerdown")
    done = asyncio.run(recovery.recover_all(w.quiet, NULL))
    assert done == ["stop on vm: stop finished: the guest powered off"]
    assert w.store.get("vm").intent is Intent.STOP and not w.inner.vm("vm").running
    assert w.store.unfinished() == []
    w.store.close()


def test_a_stop_cut_short_whose_guest_does_not_power_off_says_so(
    tmp_path: Path, base: Path
) -> None:
    w = World(tmp_path, base, Faults())
    w.add("vm", Intent.RUN, running=True)
    w.inner.powerdown_exits = False
    w.store.begin("vm", "stop")
    (line,) = asyncio.run(recovery.recover_all(w.quiet, NULL))
    assert line.startswith("stop on vm: stop not finished: the guest did not power off")
    assert "'ketch stop vm' again" in line
    assert w.store.get("vm").intent is Intent.RUN and w.inner.vm("vm").running
    assert w.store.unfinished() == []  # said once, not again at every start
    w.store.close()
