"""Mount health as ``list``/``info``/``doctor`` see it, on real processes and directories.

A real detached supervisor (``python -m ketch.host.sftp --pidfile``, confined as
ketchd runs it; ``sleep`` stands in for its ssh) serves a real share: while it
does, the mount's host side is fine; killed, it is dead; with the share removed
and made again, the server still serves the old directory, and that is dead too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.host import procs
from ketch.host.sftp.launch import supervisor_argv
from ketch.layout import InstanceDir, Root
from ketch.model import BootSpec, InconsistencyCode, InstanceSpec, MountSpec, MountType
from ketch.service import mounts_classic, mounts_health

IC = InconsistencyCode
TARGET = "/mnt/share"


def spec(*mounts: MountSpec) -> InstanceSpec:
    return InstanceSpec(
        name="vm", image="tiny", image_id="ketch:tiny@1", release="tiny", cpus=1,
        memory=2**29, disk=2**30, boot=BootSpec(), base_disk="/nonexistent", ssh_port=1,
        mac="52:54:00:00:00:01", instance_id="i-1", mounts=mounts,
    )  # fmt: skip


@pytest.fixture
def idir(tmp_path: Path) -> InstanceDir:
    d = Root(tmp_path / "root").instance("vm")
    d.mounts.mkdir(parents=True)
    return d


@pytest.fixture
def share(tmp_path: Path) -> Path:
    path = tmp_path / "share"
    path.mkdir()
    return path


def start_supervisor(idir: InstanceDir, share: Path, ssh: list[str]) -> int:
    """A detached supervisor of ``share`` as ketchd starts one (``ssh`` stands in for its
    ssh); its pid, from its pid file."""
    if os.geteuid() != 0:
        pytest.skip("the server's confinement needs root")
    pidfile, log = idir.mount_pidfile(TARGET), idir.mount_log(TARGET)
    argv = supervisor_argv(
        str(share), uid=os.getuid(), gid=os.getgid(), uid_maps=[], gid_maps=[],
        pidfile=str(pidfile), log=str(log), ssh=ssh,
    )  # fmt: skip
    subprocess.run(argv, check=True, timeout=60)
    pid = procs.read_pidfile(pidfile)
    assert pid is not None
    return pid


@pytest.fixture
def supervisor(idir: InstanceDir, share: Path) -> Iterator[int]:
    pid = start_supervisor(idir, share, ["sleep", "600"])
    log = idir.mount_log(TARGET)
    # the server is confined (its root is the share) once it has forked and pivoted
    deadline = time.monotonic() + 60
    while not any(
        _root_is(child, share) for child in mounts_classic._children(pid)
    ):  # bounded wait for the fork
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield pid
    if procs.alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while procs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _root_is(pid: int, path: Path) -> bool:
    try:
        a, b = os.stat(f"/proc/{pid}/root"), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def classic(share: Path) -> MountSpec:
    return MountSpec(source=str(share), target=TARGET, type=MountType.CLASSIC)


def test_a_serving_supervisor_is_a_healthy_host_side(
    idir: InstanceDir, share: Path, supervisor: int
) -> None:
    assert mounts_classic.host_side(idir, classic(share)) is None
    assert mounts_health.host_problems(idir, spec(classic(share))) == ()


def test_a_killed_supervisor_is_a_dead_mount(
    idir: InstanceDir, share: Path, supervisor: int
) -> None:
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while procs.alive(supervisor):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (found,) = mounts_health.host_problems(idir, spec(classic(share)))
    assert found.code is IC.MOUNT_DEAD and found.mount == TARGET
    assert "SFTP server" in found.message and "doctor --fix" in found.action


def test_a_source_removed_and_made_again_is_served_stale(
    idir: InstanceDir, share: Path, supervisor: int
) -> None:
    share.rmdir()
    (gone,) = mounts_health.host_problems(idir, spec(classic(share)))
    assert gone.code is IC.MOUNT_SOURCE_MISSING and str(share) in gone.message
    share.mkdir()
    assert mounts_classic.serves_stale_source(supervisor, str(share))
    (dead,) = mounts_health.host_problems(idir, spec(classic(share)))
    assert dead.code is IC.MOUNT_DEAD and "no longer" in dead.message


def test_a_native_mount_without_virtiofsd_says_restart(idir: InstanceDir, share: Path) -> None:
    native = MountSpec(source=str(share), target="/mnt/n", type=MountType.NATIVE)
    (found,) = mounts_health.host_problems(idir, spec(native))
    assert found.code is IC.MOUNT_DEAD and "virtiofsd" in found.message
    assert "'ketch restart vm'" in found.action


def test_guest_problems_are_the_unmounted_ones_the_host_side_did_not_explain(
    idir: InstanceDir, share: Path
) -> None:
    a = MountSpec(source=str(share), target="/mnt/a")
    b = MountSpec(source=str(share), target="/mnt/b")
    c = MountSpec(source=str(share), target="/mnt/c")
    s = spec(a, b, c)
    host = mounts_health.host_problems(idir, spec(a))  # /mnt/a: no supervisor
    active: dict[str, bool | None] = {"/mnt/a": False, "/mnt/b": False, "/mnt/c": True}
    (found,) = mounts_health.guest_problems(s, active, host)
    assert found.code is IC.MOUNT_DEAD and found.mount == "/mnt/b"
    assert "no longer has it mounted" in found.message
    assert mounts_health.guest_problems(s, {"/mnt/b": None}, ()) == []


def test_a_supervisor_on_its_way_out_is_still_found(idir: InstanceDir, share: Path) -> None:
    """Its ssh ending ends the supervisor: until the process has gone, its pid file names it
    (a pid file it removed before exiting had ``stop --force`` leave it running, in CI),
    and ending it then removes the file."""
    pid = start_supervisor(idir, share, ["sleep", "1"])
    pidfile, log = idir.mount_pidfile(TARGET), idir.mount_log(TARGET)
    deadline, looks = time.monotonic() + 60, 0
    while procs.cmdline(pid):
        found = mounts_classic.supervisor_pid(idir, TARGET)
        if found is None:  # said "gone": then it is
            assert not procs.cmdline(pid), "the supervisor runs but its pid file lost it"
        assert time.monotonic() < deadline, log.read_text()
        looks += 1
    assert looks > 0 and pidfile.exists()
    mounts_classic.end_supervisor(idir, TARGET)
    assert not pidfile.exists()
