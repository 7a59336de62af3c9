"""The libvirt driver's pure parts: libvirt's domain states as ketch's observations (and so
its instance states), the metadata check, volume names and backing files, the bounded
call and libvirt's errors translated into ketch's."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ketch.errors import HostUnreachable, LibvirtFailed, NotFound, Timeout
from ketch.host.libvirt import bounded, translate
from ketch.model import InconsistencyCode, Intent, PidStatus, RunState, State
from ketch.runtime import libvirt_state as ls
from ketch.runtime.derive import derive
from ketch.runtime.libvirt_pool import backing_path, base_name, disk_name, seed_name
from ketch.runtime.libvirt_xml import volume_xml


def state_of(state: int | None, reason: int = 0, *, intent: Intent = Intent.RUN) -> State:
    obs = ls.observation(state, reason, ours=True, managed_save=False, disk_exists=True)
    return derive(intent=intent, deleted=False, obs=obs).state


@pytest.mark.parametrize(
    ("state", "reason", "run"),
    [
        (ls.RUNNING, 1, RunState.RUNNING),
        (ls.BLOCKED, 0, RunState.RUNNING),
        (ls.SHUTDOWN, 1, RunState.RUNNING),
        (ls.PAUSED, ls.PAUSED_USER, RunState.PAUSED),
        (ls.PAUSED, ls.PAUSED_IOERROR, RunState.IO_ERROR),
        (ls.PAUSED, ls.PAUSED_WATCHDOG, RunState.WATCHDOG),
        (ls.PAUSED, ls.PAUSED_SAVE, RunState.SAVE_VM),
        (ls.PAUSED, ls.PAUSED_STARTING_UP, RunState.PRELAUNCH),
        (ls.PAUSED, ls.PAUSED_CRASHED, RunState.GUEST_PANICKED),
        (ls.PAUSED, 99, RunState.PAUSED),  # a reason newer than this table
        (ls.CRASHED, 1, RunState.GUEST_PANICKED),
        (ls.PMSUSPENDED, 0, RunState.SUSPENDED),
        (ls.SHUTOFF, 1, None),
        (ls.NOSTATE, 0, None),
    ],
)
def test_each_domain_state_is_a_qmp_run_state(state: int, reason: int, run: RunState) -> None:
    assert ls.run_state(state, reason) == run


def test_every_paused_reason_is_mapped() -> None:
    assert set(ls.PAUSED_AS) == set(range(14))


def test_states_derive_as_the_qemu_drivers_do() -> None:
    assert state_of(ls.RUNNING) is State.RUNNING
    assert state_of(ls.SHUTOFF, intent=Intent.STOP) is State.STOPPED
    assert state_of(None, intent=Intent.STOP) is State.STOPPED  # not defined: not running
    assert state_of(ls.PAUSED, ls.PAUSED_USER) is State.UNKNOWN  # paused: 'start' resumes


def test_a_paused_on_io_error_domain_says_so() -> None:
    obs = ls.observation(ls.PAUSED, ls.PAUSED_IOERROR, ours=True, managed_save=False,
                         disk_exists=True)  # fmt: skip
    codes = {i.code for i in derive(intent=Intent.RUN, deleted=False, obs=obs).inconsistencies}
    assert codes == {InconsistencyCode.PAUSED_IO_ERROR}


def test_nostate_is_a_monitor_that_does_not_answer() -> None:
    obs = ls.observation(ls.NOSTATE, 0, ours=True, managed_save=False, disk_exists=True)
    assert obs.pid_status is PidStatus.OURS and obs.qmp_status is None
    assert obs.qmp_error == "libvirt reports state 'nostate'"
    d = derive(intent=Intent.RUN, deleted=False, obs=obs)
    assert d.state is State.UNKNOWN
    assert [i.code for i in d.inconsistencies] == [InconsistencyCode.QMP_UNRESPONSIVE]


def test_a_managed_save_is_the_suspend_tag() -> None:
    obs = ls.observation(ls.SHUTOFF, 0, ours=True, managed_save=True, disk_exists=True)
    assert derive(intent=Intent.SUSPEND, deleted=False, obs=obs).state is State.SUSPENDED
    obs = ls.observation(None, 0, ours=True, managed_save=None, disk_exists=True,
                         tag_error="no")  # fmt: skip
    codes = [i.code for i in derive(intent=Intent.STOP, deleted=False, obs=obs).inconsistencies]
    assert codes == [InconsistencyCode.UNREADABLE_TAGS]


def test_another_instances_domain_is_foreign_and_never_running() -> None:
    obs = ls.observation(ls.RUNNING, 1, ours=False, managed_save=False, disk_exists=True)
    assert obs.pid_status is PidStatus.FOREIGN
    d = derive(intent=Intent.STOP, deleted=False, obs=obs)
    assert not d.running and InconsistencyCode.FOREIGN_PID in {i.code for i in d.inconsistencies}


def test_the_instance_id_is_read_from_ketchs_metadata() -> None:
    meta = '<ketch:instance xmlns:ketch="urn:x-ketch:instance:1" name="a" instance-id="i-1"/>'
    assert ls.instance_id(meta) == "i-1"
    assert ls.instance_id(None) is None and ls.instance_id("<not") is None


def test_volume_documents() -> None:
    raw = volume_xml("base-0123.qcow2", 6741504, "raw")
    assert '<capacity unit="bytes">6741504</capacity>' in raw and backing_path(raw) is None
    overlay = volume_xml("vm.qcow2", 2**30, "qcow2", backing="/p/base.qcow2",
                         backing_format="qcow2")  # fmt: skip
    assert backing_path(overlay) == "/p/base.qcow2"
    assert '<format type="qcow2" />' in overlay
    with pytest.raises(ValueError, match="positive"):
        volume_xml("x", 0, "raw")
    with pytest.raises(ValueError, match="overlay"):
        volume_xml("x", 1, "raw", backing="/p/b", backing_format="raw")


def test_volume_names() -> None:
    sha = "ab" * 32
    assert base_name(sha, "qcow2") == "base-abababababababab.qcow2"
    assert (disk_name("vm1"), seed_name("vm1")) == ("vm1.qcow2", "vm1-seed.iso")


def test_libvirt_errors_become_ketchs() -> None:
    assert isinstance(translate(42, "Domain not found: no domain", "start"), NotFound)
    assert isinstance(translate(50, "Storage volume not found", "volume"), NotFound)
    assert isinstance(translate(38, "Failed to connect socket", "open"), HostUnreachable)
    assert isinstance(translate(39, "Cannot recv data: End of file", "state"), HostUnreachable)
    failed = translate(1, "internal error: qemu unexpectedly closed the monitor", "start")
    assert isinstance(failed, LibvirtFailed) and failed.code == "host-command"
    assert (
        str(failed) == "libvirt: start failed: internal error: qemu unexpectedly closed the monitor"
    )


def test_a_call_past_its_deadline_is_a_timeout_and_is_left_to_end() -> None:
    release = threading.Event()

    async def main() -> None:
        with pytest.raises(Timeout, match="libvirt: define did not answer within 0 s"):
            await bounded(lambda: release.wait(10), timeout=0.1, what="define")
        assert await bounded(lambda: 7, timeout=5, what="x") == 7
        with pytest.raises(NotFound):
            await bounded(_raise, timeout=5, what="x")

    asyncio.run(main())
    release.set()


def _raise() -> None:
    raise NotFound("gone")
