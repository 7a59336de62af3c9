"""Launch details from issue 4: timeouts keep the instance, the socket, the primary instance."""

from __future__ import annotations

import stat
import sys
import time

import pexpect
import pytest
from ketchcli import Ketch, unique

pytestmark = pytest.mark.vm


def test_launch_timeout_exits_5_and_keeps_the_instance(ketch: Ketch) -> None:
    name = unique("slow")
    done = ketch.run(
        "launch", "tiny", "--name", name, "--memory", "512M", "--timeout", "0.5", check=False
    )
    try:
        assert done.returncode == 5
        assert "timed out" in done.stderr and "kept" in done.stderr
        listed = {i["name"]: i["state"] for i in ketch.json("list")["list"]}
        assert name in listed
        # The guest carries on booting; once it is up, exec reaches it.
        deadline = time.monotonic() + 180
        while (late := ketch.run("exec", name, "--", "echo", "late", check=False)).returncode:
            assert time.monotonic() < deadline, late.stderr
            time.sleep(1)
        assert late.stdout == "late\n"
    finally:
        ketch.run("delete", "--purge", name, check=False)


def test_socket_is_private(ketch: Ketch) -> None:
    ketch.run("list")
    mode = (ketch.root / "ketchd.sock").stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_shell_without_a_name_launches_and_opens_the_primary(ketch: Ketch) -> None:
    child = pexpect.spawn(
        sys.executable, ["-m", "ketch.cli.main", "shell"], env=ketch.env, timeout=300
    )
    try:
        child.expect("Launching primary")
        child.expect(r"[$#] ")
        child.sendline("hostname")
        child.expect("primary")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
        ketch.run("delete", "--purge", "primary", check=False)
    assert child.exitstatus == 0
