"""``ketch doctor`` dispatches on the inconsistency code through one table.

Every :class:`~ketch.model.InconsistencyCode` has a rule in
``service/doctor/rules.RULES`` (a repair, or explicitly "report only"), every code
and finding is explained in ``ketch.codes``, and the two agree on which are
repaired.  :func:`~ketch.service.doctor.examine` is run for real on an
instance showing every inconsistency at once (nothing is repaired: the
repairs are only built).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.codes import CODES
from ketch.layout import Root
from ketch.model import (
    BootSpec,
    Derived,
    FindingCode,
    ImageInfo,
    Inconsistency,
    InconsistencyCode,
    InstanceSpec,
    Intent,
    Observation,
    PidStatus,
    State,
)
from ketch.progress import Reporter
from ketch.runtime.qemu_driver import QemuDriver
from ketch.service import doctor
from ketch.service.context import Context
from ketch.service.inspect import View
from ketch.store.db import Record, Store

# the package's every module: its findings are made in more than one
DOCTOR_SRC = "\n".join(p.read_text() for p in sorted(Path(doctor.__file__).parent.glob("*.py")))


def test_every_inconsistency_code_has_a_rule() -> None:
    assert set(doctor.RULES) == set(InconsistencyCode)


def test_every_code_and_finding_is_explained() -> None:
    assert set(CODES) == set(InconsistencyCode) | set(FindingCode)
    assert all(c.meaning and c.fix for c in CODES.values())


@pytest.mark.parametrize("code", list(InconsistencyCode))
def test_report_only_rules_are_the_codes_said_not_to_be_repaired(
    code: InconsistencyCode,
) -> None:
    assert (doctor.RULES[code].fix is None) is (not CODES[code].repairs)
    if not CODES[code].repairs:
        assert CODES[code].fix.startswith("none")


def test_every_finding_doctor_makes_by_itself_is_a_finding_code() -> None:
    """Its own checks name their codes as literals: each must be in the vocabulary."""
    named = set(re.findall(r'Finding\(\s*\w+(?:\.name)?,\s*"([a-z-]+)"', DOCTOR_SRC))
    assert {"disk-leaks", "port-taken", "orphan-qemu", "stray-directory"} <= named
    assert named <= set(FindingCode)
    assert named == set(FindingCode)


class NoImages:
    async def resolve(self, ref: str, reporter: Reporter) -> ImageInfo:
        raise AssertionError("doctor's examination resolves no image")

    def probe_kernel(self) -> Path | None:
        return None


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    root = Root(tmp_path / "root")
    root.path.mkdir()
    store = Store(root.database)
    yield Context(root, store, QemuDriver(), NoImages())
    store.close()


def _view(quarantine: str | None) -> View:
    spec = InstanceSpec(
        name="vm",
        image="tiny",
        image_id="ketch:tiny@1",
        release="tiny",
        cpus=1,
        memory=2**29,
        disk=2**30,
        boot=BootSpec(),
        base_disk="/nonexistent/base.qcow2",
        ssh_port=1,
        mac="52:54:00:00:00:01",
        instance_id="i-1",
    )
    obs = Observation(
        pid=4242,
        pid_status=PidStatus.OURS,
        qmp_status="paused",
        qmp_error=None,
        suspend_tag=True,
        tag_error=None,
        disk_exists=False,
    )
    every = tuple(Inconsistency(c, f"message of {c}", f"action of {c}") for c in InconsistencyCode)
    # running: the costly checks (qemu-img, ports, sockets) are skipped; the disk is absent
    derived = Derived(State.UNKNOWN, every, running=True)
    return View(Record(spec, Intent.RUN, False, None, quarantine), obs, derived)


def test_examine_turns_every_inconsistency_into_its_finding(ctx: Context) -> None:
    found = asyncio.run(doctor.examine(ctx, _view(None)))
    reported = [c for c in InconsistencyCode if CODES[c].reported]
    assert [f.code for f in found] == reported
    for f in found:
        code = InconsistencyCode(f.code)
        assert f.fix == CODES[code].fix
        assert f.message == f"message of {code}"
        assert (f.repair is not None) is CODES[code].repairs
    assert InconsistencyCode.UNEXPECTED_QMP_STATUS in [f.code for f in found]


def test_a_quarantined_instance_is_not_quarantined_again(ctx: Context) -> None:
    codes = [f.code for f in asyncio.run(doctor.examine(ctx, _view("disk corrupted")))]
    assert InconsistencyCode.MISSING_DISK not in codes
    assert InconsistencyCode.UNREADABLE_TAGS not in codes
    assert InconsistencyCode.QUARANTINED not in codes
    assert InconsistencyCode.PAUSED in codes
