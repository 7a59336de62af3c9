"""The test suite's fakes, in one place, each implementing the real protocol.

- :class:`FakeDriver`: a :class:`~ketch.runtime.driver.Driver` whose
  hypervisor is pretend (each instance's "process" lives in memory, every
  call is recorded in order, long calls can be held at a gate the test opens)
  and whose disks are real: it inherits the qcow2 half of the QEMU driver
  (:class:`~ketch.runtime.qcow2.Qcow2Disks`), so snapshots, clones and disk
  sizes are done by ``qemu-img`` on real files.
- :class:`FaultyDriver` and :class:`FaultyReporter`: wrap a driver and a
  reporter and raise at the N-th step of an operation (:class:`Faults`), to
  show what an exception at any step leaves behind.
- :class:`FakeImages`: an :class:`~ketch.service.context.ImageProvider` with
  at most one image, a real qcow2 base file when one is given.
- :class:`FakeClock`: a :class:`~ketch.clock.Clock` that moves only when the
  test moves it (``Context(..., clock=FakeClock())``).

The ``CHECK_*`` assignments at the end make mypy check each fake against its
protocol (``mypy tests``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ketch.api import models as m
from ketch.clock import Clock
from ketch.errors import HostCommandError, ImageError
from ketch.layout import InstanceDir
from ketch.model import DiskCheck, DiskInfo, ImageInfo, InstanceSpec, Observation, PidStatus
from ketch.progress import ListReporter, Reporter
from ketch.runtime.driver import SUSPEND_TAG, Driver
from ketch.runtime.qcow2 import Qcow2Disks
from ketch.service.context import ImageProvider

GATE_POLLS = 2000  # how often a held call looks at its gate before giving up (bounded)


# -- the fake hypervisor ---------------------------------------------------------------------


@dataclass
class FakeVm:
    """One instance's pretend QEMU."""

    running: bool = False
    qmp: str = "running"
    tags: set[str] = field(default_factory=set)  # tags only the pretend QEMU knows (suspend)
    pid: int = 0


@dataclass(frozen=True)
class Call:
    seq: int
    at: float  # time.monotonic(), for the record only
    name: str
    what: str  # e.g. "powerdown:start", "powerdown:end", "kill"


class FakeDriver(Qcow2Disks):
    """A Driver with in-memory processes and real qcow2 disks; records the process calls.

    An instance unknown to the fake (never :meth:`add`-ed: one a launch or a
    clone makes) starts out not running.
    """

    name = "fake"

    def __init__(self) -> None:
        self.vms: dict[str, FakeVm] = {}
        self.calls: list[Call] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._pids = itertools.count(10_000)
        self.gates: dict[str, threading.Event] = {}  # "name:what" -> gate (closed until set)
        self.entered: dict[str, threading.Event] = {}  # "name:what" -> set when the call starts
        self.powerdown_exits = True

    # test-side helpers
    def add(self, name: str, *, running: bool, qmp: str = "running", tags: set[str]) -> None:
        self.vms[name] = FakeVm(running, qmp, set(tags), next(self._pids) if running else 0)

    def vm(self, name: str) -> FakeVm:
        return self.vms.setdefault(name, FakeVm())

    def hold(self, name: str, what: str) -> threading.Event:
        """Close the gate of ``what`` on ``name``; returns the event the test sets to open it."""
        self.entered[f"{name}:{what}"] = threading.Event()
        gate = self.gates[f"{name}:{what}"] = threading.Event()
        return gate

    def started(self, name: str, what: str) -> threading.Event:
        return self.entered.setdefault(f"{name}:{what}", threading.Event())

    def log(self, name: str, what: str) -> None:
        with self._lock:
            self.calls.append(Call(next(self._seq), time.monotonic(), name, what))

    def seq(self, name: str, what: str) -> int:
        (call,) = [c for c in self.calls if c.name == name and c.what == what]
        return call.seq

    async def _held(self, name: str, what: str) -> None:
        self.log(name, f"{what}:start")
        self.started(name, what).set()
        gate = self.gates.get(f"{name}:{what}")
        for _ in range(GATE_POLLS):
            if gate is None or gate.is_set():
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"gate {name}:{what} never opened")
        self.log(name, f"{what}:end")

    # the Driver protocol (the disk methods are the real ones, from Qcow2Disks)
    async def observe(
        self, spec: InstanceSpec, idir: InstanceDir, *, probe_qmp: bool = True
    ) -> Observation:
        vm = self.vm(spec.name)
        return Observation(
            pid=vm.pid if vm.running else None,
            pid_status=PidStatus.OURS if vm.running else PidStatus.NONE,
            qmp_status=vm.qmp if vm.running and probe_qmp else None,
            qmp_error=None,
            suspend_tag=SUSPEND_TAG in vm.tags,
            tag_error=None,
            disk_exists=True,
        )

    async def start(
        self, spec: InstanceSpec, idir: InstanceDir, *, accel: str, resume: bool
    ) -> None:
        self.log(spec.name, "start")
        vm = self.vm(spec.name)
        vm.running, vm.qmp, vm.pid = True, "running", next(self._pids)

    async def powerdown(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> bool:
        await self._held(spec.name, "powerdown")
        if self.powerdown_exits:
            self.vm(spec.name).running = False
        return self.powerdown_exits

    async def kill(self, spec: InstanceSpec, idir: InstanceDir) -> bool:
        await self._held(spec.name, "kill")
        vm = self.vm(spec.name)
        was, vm.running = vm.running, False
        return was

    async def suspend(
        self, spec: InstanceSpec, idir: InstanceDir, *, reporter: Reporter, timeout: float
    ) -> None:
        reporter.step("Saving the guest's state into its disk")
        await self._held(spec.name, "suspend")
        vm = self.vm(spec.name)
        vm.tags.add(SUSPEND_TAG)
        vm.running = False

    async def cont(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        self.log(spec.name, "cont")
        self.vm(spec.name).qmp = "running"

    async def settle(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> None:
        """No block jobs ever run in the pretend QEMU: nothing to wait for."""

    async def delete_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        """The pretend QEMU's tag, and the disk's (real) one while no "process" holds it."""
        self.log(spec.name, f"delete_tag:{tag}")
        vm = self.vm(spec.name)
        vm.tags.discard(tag)
        if not vm.running and idir.disk.exists() and tag in await self.disk_tags(spec, idir):
            await self.remove_tag(idir, tag)


# -- faults at the N-th step -------------------------------------------------------------------


class InjectedFault(HostCommandError):
    """The failure :class:`Faults` raises (a host command failing, as ketch sees most)."""

    def __init__(self, what: str) -> None:
        super().__init__(["injected", what], 1, f"injected failure at {what}")


@dataclass
class Faults:
    """Counts the steps of an operation and raises at step ``at`` (1-based; None: never).

    ``make`` builds the exception from the step's name; ``before`` runs just
    before it is raised (e.g. to make the database unwritable too).
    """

    at: int | None = None
    make: Callable[[str], BaseException] = InjectedFault
    before: Callable[[], None] | None = None
    seen: list[str] = field(default_factory=list)
    raised: BaseException | None = None

    def tick(self, what: str) -> None:
        self.seen.append(what)
        if len(self.seen) == self.at:
            if self.before is not None:
                self.before()
            self.raised = self.make(what)
            raise self.raised


class FaultyDriver:
    """A driver that counts each call as a step of :class:`Faults`, then delegates."""

    def __init__(self, inner: Driver, faults: Faults) -> None:
        self.inner, self.faults = inner, faults
        self.name = inner.name

    async def observe(
        self, spec: InstanceSpec, idir: InstanceDir, *, probe_qmp: bool = True
    ) -> Observation:
        self.faults.tick("observe")
        return await self.inner.observe(spec, idir, probe_qmp=probe_qmp)

    async def start(
        self, spec: InstanceSpec, idir: InstanceDir, *, accel: str, resume: bool
    ) -> None:
        self.faults.tick("start")
        await self.inner.start(spec, idir, accel=accel, resume=resume)

    async def powerdown(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> bool:
        self.faults.tick("powerdown")
        return await self.inner.powerdown(spec, idir, timeout=timeout)

    async def kill(self, spec: InstanceSpec, idir: InstanceDir) -> bool:
        self.faults.tick("kill")
        return await self.inner.kill(spec, idir)

    async def suspend(
        self, spec: InstanceSpec, idir: InstanceDir, *, reporter: Reporter, timeout: float
    ) -> None:
        self.faults.tick("suspend")
        await self.inner.suspend(spec, idir, reporter=reporter, timeout=timeout)

    async def cont(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        self.faults.tick("cont")
        await self.inner.cont(spec, idir)

    async def settle(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> None:
        self.faults.tick("settle")
        await self.inner.settle(spec, idir, timeout=timeout)

    async def delete_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        self.faults.tick("delete_tag")
        await self.inner.delete_tag(spec, idir, tag)

    async def create_disk(
        self, idir: InstanceDir, *, base: Path, base_format: str, size: int
    ) -> None:
        self.faults.tick("create_disk")
        await self.inner.create_disk(idir, base=base, base_format=base_format, size=size)

    async def disk_info(self, idir: InstanceDir) -> DiskInfo:
        self.faults.tick("disk_info")
        return await self.inner.disk_info(idir)

    async def grow_disk(self, idir: InstanceDir, size: int) -> None:
        self.faults.tick("grow_disk")
        await self.inner.grow_disk(idir, size)

    async def copy_disk(self, src: InstanceDir, dst: InstanceDir) -> None:
        self.faults.tick("copy_disk")
        await self.inner.copy_disk(src, dst)

    async def check_disk(self, idir: InstanceDir, *, repair_leaks: bool = False) -> DiskCheck:
        self.faults.tick("check_disk")
        return await self.inner.check_disk(idir, repair_leaks=repair_leaks)

    async def rebase_disk(self, idir: InstanceDir, *, base: Path, base_format: str) -> None:
        self.faults.tick("rebase_disk")
        await self.inner.rebase_disk(idir, base=base, base_format=base_format)

    async def disk_tags(self, spec: InstanceSpec, idir: InstanceDir) -> tuple[str, ...]:
        self.faults.tick("disk_tags")
        return await self.inner.disk_tags(spec, idir)

    async def create_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        self.faults.tick("create_tag")
        await self.inner.create_tag(spec, idir, tag)

    async def apply_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        self.faults.tick("apply_tag")
        await self.inner.apply_tag(spec, idir, tag)


class FaultyReporter(ListReporter):
    """A reporter whose every ``step`` is a step of :class:`Faults` too."""

    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    def step(self, message: str) -> None:
        self.faults.tick(f"step {message!r}")
        super().step(message)


# -- images ---------------------------------------------------------------------------------------


class FakeImages:
    """The image provider: ``image`` (a real base file) for every reference, or none at all."""

    def __init__(self, image: ImageInfo | None = None) -> None:
        self.image = image

    async def resolve(self, ref: str, reporter: Reporter) -> ImageInfo:
        if self.image is None:
            raise ImageError(f"no image '{ref}' in this test")
        return self.image

    def probe_kernel(self) -> Path | None:
        return None

    async def find(
        self, query: str | None, *, show_unsupported: bool = False, force_update: bool = False
    ) -> list[m.FindRow]:
        return [m.FindRow(remote="ketch", aliases=["tiny"], release="ketch tiny", error=None)]

    def list_cached(self) -> list[m.CachedImage]:
        return []


# -- time -----------------------------------------------------------------------------------------


class FakeClock:
    """Wall and monotonic time that stand still until :meth:`advance` moves both."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:  # 2027-01-15, a fixed "now"
        self.now = start
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


# mypy checks each fake against the protocol it stands in for
CHECK_DRIVER: Driver = FakeDriver()
CHECK_FAULTY: Driver = FaultyDriver(CHECK_DRIVER, Faults())
CHECK_IMAGES: ImageProvider = FakeImages()
CHECK_CLOCK: Clock = FakeClock()
