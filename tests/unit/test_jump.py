"""host/ssh/jump.py: the relay of a remote libvirt host's guest SSH port (the argv, pure;
finding it again by its pid file and /proc; ending only a jump), on real processes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.errors import HostUnreachable
from ketch.host import procs
from ketch.host.ssh import jump
from ketch.host.ssh.jump import Via

VIA = Via(Path("/root/hosts/big1/ssh"), "big1", user="ops", port=2222)


def test_the_argv_listens_on_loopback_and_relays_to_the_hosts_loopback() -> None:
    argv = jump.jump_argv(VIA, 40001, 50002)
    assert argv[:3] == ["/root/hosts/big1/ssh", "-N", "-T"]
    assert "ExitOnForwardFailure=yes" in argv and "ControlPath=none" in argv
    assert argv[argv.index("-L") + 1] == "127.0.0.1:40001:127.0.0.1:50002"
    assert argv[-6:] == ["-p", "2222", "-l", "ops", "--", "big1"]
    bare = jump.jump_argv(Via(Path("/w"), "h"), 1, 2)
    assert "-p" not in bare and "-l" not in bare and bare[-2:] == ["--", "h"]


@pytest.mark.parametrize(
    ("via", "ports"),
    [(Via(Path("/w"), "-oProxyCommand=x"), (1, 2)), (VIA, (0, 2)), (VIA, (1, 65536))],
)
def test_what_ssh_would_misread_is_refused(via: Via, ports: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        jump.jump_argv(via, *ports)


def test_a_process_is_the_jump_only_when_ssh_runs_its_very_options() -> None:
    argv = jump.jump_argv(VIA, 40001, 50002)
    run = ["ssh", "-F", "/root/hosts/big1/ssh_config", *argv[1:]]
    assert jump.is_jump(run, argv)
    assert not jump.is_jump(["sh", "-F", "c", *argv[1:]], argv)  # not ssh
    assert not jump.is_jump(["ssh", "-F", "c", *jump.jump_argv(VIA, 40001, 50003)[1:]], argv)
    assert not jump.is_jump(argv[1:], argv) and not jump.is_jump(None, argv)


def test_a_pid_file_naming_another_process_is_not_a_jump_and_is_left_running(
    tmp_path: Path,
) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pidfile = tmp_path / "ssh-jump.pid"
        procs.write_pidfile(pidfile, other.pid)
        argv = jump.jump_argv(VIA, 40001, 50002)
        assert jump.running(pidfile, argv) is None
        asyncio.run(jump.end(pidfile, argv))
        asyncio.run(jump.end(pidfile))
        assert other.poll() is None and not pidfile.exists()
    finally:
        other.kill()
        other.wait()


def test_a_jump_that_cannot_connect_says_why(tmp_path: Path) -> None:
    wrapper = tmp_path / "ssh"  # the host's wrapper: ssh with an ssh_config of its own
    (tmp_path / "ssh_config").write_text("BatchMode yes\nConnectTimeout 5\n")
    wrapper.write_text(f'#!/bin/sh\nexec ssh -F {tmp_path / "ssh_config"} "$@"\n')
    wrapper.chmod(0o755)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = int(s.getsockname()[1])
    argv = jump.jump_argv(Via(wrapper, "127.0.0.1", port=closed), 40001, 50002)
    pidfile, log = tmp_path / "ssh-jump.pid", tmp_path / "ssh-jump.log"
    with pytest.raises(HostUnreachable, match=r"SSH relay .* failed \(it exited\).*refused"):
        asyncio.run(jump.start(argv, pidfile, log, 40001, timeout=20))
    assert not pidfile.exists()
