"""Pid files, /proc cmdlines, classification, bounded termination, quiet removal.

Real processes throughout: the test process itself, ``sleep`` children, a
child that ignores SIGTERM, a zombie, and a reaped (dead) pid.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.host.procs import (
    alive,
    classify,
    cmdline,
    open_pidfd,
    parse_start_time,
    read_pidfile,
    remove_quietly,
    start_time,
    terminate,
    terminate_pidfd,
    wait_exit,
)
from ketch.model import PidStatus


def start_sleep() -> subprocess.Popen[bytes]:
    """A ``sleep 60`` whose /proc cmdline is already filled in.

    Right after fork+exec the kernel shows an empty cmdline for a moment (the
    parent is released before the new argv is mapped), so wait for it.
    """
    proc = subprocess.Popen(["sleep", "60"])
    wait_for(lambda: cmdline(proc.pid) is not None)
    return proc


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = start_sleep()
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=10)
    return proc.pid


def proc_state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) S ..."; comm may hold spaces, so split after ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_for(predicate: Callable[[], bool], *, tries: int = 400) -> None:
    """Poll (bounded by count, not by time) until ``predicate()`` holds."""
    for _ in range(tries):
        if predicate():
            return
        time.sleep(0.025)
    raise AssertionError("condition never held")


# -- read_pidfile ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "pid"),
    [
        pytest.param("1234", 1234, id="bare"),
        pytest.param("1234\n", 1234, id="newline"),
        pytest.param("  1234 \n", 1234, id="spaces"),
        pytest.param("", None, id="empty"),
        pytest.param("\n", None, id="blank-line"),
        pytest.param("abc", None, id="garbage"),
        pytest.param("12ab", None, id="digits-then-garbage"),
        pytest.param("12 34", None, id="two-numbers"),
        pytest.param("-5", None, id="negative"),
        pytest.param("0", None, id="zero"),
        pytest.param("1.5", None, id="decimal"),
        pytest.param("0x10", None, id="hex"),
    ],
)
def test_read_pidfile(tmp_path: Path, content: str, pid: int | None) -> None:
    f = tmp_path / "qemu.pid"
    f.write_text(content)
    assert read_pidfile(f) == pid


def test_read_pidfile_missing(tmp_path: Path) -> None:
    assert read_pidfile(tmp_path / "absent.pid") is None


def test_read_pidfile_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert read_pidfile(tmp_path / "file" / "qemu.pid") is None


def test_read_pidfile_is_a_directory(tmp_path: Path) -> None:
    assert read_pidfile(tmp_path) is None


def test_read_pidfile_binary_garbage(tmp_path: Path) -> None:
    f = tmp_path / "qemu.pid"
    f.write_bytes(b"\xff\xfe\x00\x01")
    assert read_pidfile(f) is None


# -- cmdline / alive -------------------------------------------------------------------------


def test_cmdline_of_this_process() -> None:
    assert cmdline(os.getpid()) == sys.orig_argv
    assert alive(os.getpid())


def test_cmdline_of_a_child_keeps_every_argument(tmp_path: Path) -> None:
    args = ["with space", "ünïcödé", "", "--flag=a,b"]
    code = "import sys, time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert cmdline(proc.pid) == [sys.executable, "-c", code, *args]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_cmdline_of_a_dead_pid() -> None:
    pid = dead_pid()
    assert cmdline(pid) is None
    assert not alive(pid)


def test_cmdline_of_a_zombie_is_none() -> None:
    proc = subprocess.Popen(["true"])
    try:
        wait_for(lambda: proc_state(proc.pid) == "Z")
        assert cmdline(proc.pid) is None
        assert not alive(proc.pid)
    finally:
        proc.wait(timeout=10)


def test_cmdline_of_a_kernel_thread_is_none() -> None:
    # pid 2 is kthreadd on Linux, unless the test runs in a pid namespace.
    if not Path("/proc/2/stat").exists() or "kthreadd" not in Path("/proc/2/stat").read_text():
        pytest.skip("no kthreadd visible at pid 2 here")
    assert cmdline(2) is None


# -- classify ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pid", "argv", "ours", "status"),
    [
        pytest.param(None, None, False, PidStatus.NONE, id="no-pidfile"),
        pytest.param(None, ["qemu"], True, PidStatus.NONE, id="no-pidfile-ignores-rest"),
        pytest.param(42, None, False, PidStatus.STALE, id="dead"),
        pytest.param(42, None, True, PidStatus.STALE, id="dead-even-if-ours-claimed"),
        pytest.param(42, ["qemu-system-x86_64"], True, PidStatus.OURS, id="ours"),
        pytest.param(42, ["/usr/bin/sleep", "60"], False, PidStatus.FOREIGN, id="foreign"),
    ],
)
def test_classify(pid: int | None, argv: list[str] | None, ours: bool, status: PidStatus) -> None:
    assert classify(pid, argv, ours) is status


def test_classify_a_real_sleep_as_foreign(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    pidfile = tmp_path / "qemu.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    pid = read_pidfile(pidfile)
    argv = cmdline(pid) if pid else None
    assert argv is not None and argv[0] == "sleep"
    assert classify(pid, argv, ours=False) is PidStatus.FOREIGN


def test_classify_a_real_dead_pid_as_stale(tmp_path: Path) -> None:
    pidfile = tmp_path / "qemu.pid"
    pidfile.write_text(f"{dead_pid()}\n")
    pid = read_pidfile(pidfile)
    assert classify(pid, cmdline(pid) if pid else None, ours=False) is PidStatus.STALE


# -- terminate --------------------------------------------------------------------------------


def test_terminate_ends_a_sleep_with_sigterm(sleeper: subprocess.Popen[bytes]) -> None:
    terminate(sleeper.pid, grace=10.0)
    assert not alive(sleeper.pid)
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


def test_terminate_escalates_to_sigkill_when_sigterm_is_ignored() -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        terminate(proc.pid, grace=0.2)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_terminate_of_a_dead_pid_is_quiet() -> None:
    terminate(dead_pid(), grace=0.1)  # no ProcessLookupError escapes


def test_terminate_signals_only_the_given_pid(sleeper: subprocess.Popen[bytes]) -> None:
    other = start_sleep()
    try:
        terminate(sleeper.pid, grace=10.0)
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None and alive(other.pid)
    finally:
        other.kill()
        other.wait(timeout=10)


# -- wait_exit --------------------------------------------------------------------------------


def test_wait_exit_learns_of_the_exit_when_it_happens(sleeper: subprocess.Popen[bytes]) -> None:
    async def main() -> tuple[bool, bool]:
        waiting = asyncio.ensure_future(wait_exit(sleeper.pid, 60.0))
        await asyncio.sleep(0)
        running = not waiting.done()
        sleeper.terminate()  # its exit, not a poll's tick, ends the wait
        return running, await waiting

    assert asyncio.run(main()) == (True, True)


def test_wait_exit_gives_up_after_its_timeout(sleeper: subprocess.Popen[bytes]) -> None:
    assert asyncio.run(wait_exit(sleeper.pid, 0.05)) is False
    assert asyncio.run(wait_exit(sleeper.pid, 0.0)) is False
    assert sleeper.poll() is None


def test_wait_exit_of_a_gone_process_or_a_zombie_is_at_once() -> None:
    assert asyncio.run(wait_exit(dead_pid(), 0.0)) is True
    zombie = subprocess.Popen(["true"])
    wait_for(lambda: proc_state(zombie.pid) == "Z")
    try:
        assert asyncio.run(wait_exit(zombie.pid, 0.0)) is True
    finally:
        zombie.wait(timeout=10)


# -- remove_quietly -----------------------------------------------------------------------------


def test_remove_quietly_is_idempotent(tmp_path: Path) -> None:
    a, b, missing = tmp_path / "a.pid", tmp_path / "b.sock", tmp_path / "never"
    a.write_text("1")
    b.write_text("")
    remove_quietly(a, missing, b)
    assert not a.exists() and not b.exists()
    remove_quietly(a, missing, b)  # again: nothing left, no error
    remove_quietly()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_remove_quietly_removes_a_symlink_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    remove_quietly(link)
    assert not link.is_symlink() and target.read_text() == "keep"


# -- pidfd: signals reach only the process that was checked ------------------------------------


def test_open_pidfd_checks_the_argv(sleeper: subprocess.Popen[bytes]) -> None:
    argv = cmdline(sleeper.pid)
    assert argv == ["sleep", "60"]
    assert open_pidfd(sleeper.pid, ["sleep", "61"]) is None
    handle = open_pidfd(sleeper.pid, argv)
    assert handle is not None
    with handle:
        assert handle.pid == sleeper.pid and not handle.exited()
    assert handle.fd == -1  # closed
    assert open_pidfd(dead_pid()) is None


def test_open_pidfd_of_a_zombie_is_none() -> None:
    proc = subprocess.Popen(["true"])
    try:
        wait_for(lambda: proc_state(proc.pid) == "Z")
        assert open_pidfd(proc.pid) is None
    finally:
        proc.wait(timeout=10)


def test_a_pidfd_sees_the_exit_and_then_refuses_to_signal() -> None:
    first = start_sleep()
    handle = open_pidfd(first.pid, ["sleep", "60"])
    assert handle is not None
    with handle:
        first.kill()
        assert first.wait(timeout=10) == -signal.SIGKILL  # exited and reaped
        assert handle.wait(10.0) and handle.exited()
        second = start_sleep()  # maybe on the same pid one day: the pidfd does not care
        try:
            with pytest.raises(ProcessLookupError):
                handle.send_signal(signal.SIGTERM)
            terminate_pidfd(handle, grace=0.1)  # quiet: nothing left to signal
            assert second.poll() is None and alive(second.pid)
        finally:
            second.kill()
            second.wait(timeout=10)


def test_terminate_leaves_a_pid_that_runs_something_else_alone(
    sleeper: subprocess.Popen[bytes],
) -> None:
    # What the caller verified was "sleep 61"; the pid now runs "sleep 60".
    terminate(sleeper.pid, grace=0.1, expect=["sleep", "61"])
    assert sleeper.poll() is None and alive(sleeper.pid)
    terminate(sleeper.pid, grace=10.0, expect=["sleep", "60"])
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


# The attack, with a pid really reused: in a new PID namespace (nothing else
# forks there), the checked process is killed and reaped, ns_last_pid is set so
# that the next process gets the same pid, and an old pidfd and terminate()
# with the verified argv must both leave the newcomer alone -- where a plain
# kill(pid) would have reached it.
_REUSE = r"""
import os, signal, subprocess, sys
from ketch.host import procs

def start(arg):
    proc = subprocess.Popen(["sleep", arg])
    for _ in range(4000):
        if procs.cmdline(proc.pid) is not None:
            return proc
        os.sched_yield()
    raise SystemExit("no cmdline")

checked = start("60")
argv = procs.cmdline(checked.pid)
handle = procs.open_pidfd(checked.pid, argv)
checked.kill()
checked.wait()
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(checked.pid - 1))
newcomer = start("61")
print("reused" if newcomer.pid == checked.pid else "not-reused", flush=True)
try:
    handle.send_signal(signal.SIGTERM)
    print("pidfd-sent")
except ProcessLookupError:
    print("pidfd-refused")
procs.terminate(checked.pid, grace=0.2, expect=argv)
print("alive" if newcomer.poll() is None else "killed")
os.kill(checked.pid, 0)  # the number alone would have reached the newcomer
print("kill-by-number-reaches-it")
newcomer.kill()
newcomer.wait()
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare for a PID namespace",
)
def test_a_reused_pid_never_gets_the_signal() -> None:
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _REUSE],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == [
        "reused",
        "pidfd-refused",
        "alive",
        "kill-by-number-reaches-it",
    ]


# A /proc/PID/stat line recorded here (a QEMU; its name holds a space and a ')').
STAT = (
    "4242 (qemu) sys x) S 1 4241 4241 0 -1 4194368 5123 0 0 0 812 301 0 0 20 0 5 0 "
    "1838807 1234567168 54321 18446744073709551615 1 1 0 0 0 0 0 4096 17647 0 0 0 17 1 0 0"
)


def test_the_start_time_is_field_22_counted_after_the_name() -> None:
    assert parse_start_time(STAT) == 1838807


def test_the_start_time_of_this_process_and_of_a_dead_pid() -> None:
    started = start_time(os.getpid())
    assert started is not None and started > 0
    assert started == start_time(os.getpid())  # the same run, the same value
    child = subprocess.Popen(["true"])
    child.wait()
    assert start_time(child.pid) is None
