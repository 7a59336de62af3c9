"""Issue 5 through the real CLI: ``ketch launch --cloud-init``, ``exec``, ``shell``, ``transfer``.

The instance is launched by ketch itself, so these tests cover the whole
path: user data merged with ketch's vendor data, the seed ISO, the pinned
host key, the daemon handing out the SSH target, and the system ssh.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from ketchcli import Ketch

pytestmark = pytest.mark.vm

USER_DATA = """#cloud-config
write_files:
  - path: /etc/ketch-test/greeting
    content: |
      ahoy from cloud-init
    permissions: '0644'
runcmd:
  - [sh, -c, "echo ran > /var/tmp/runcmd-marker"]
"""


@pytest.fixture(scope="module")
def guest(ketch: Ketch) -> Iterator[str]:
    with ketch.launched(
        "guest", "--memory", "512M", "--cloud-init", "-", input=USER_DATA.encode()
    ) as name:
        yield name


def raw(ketch: Ketch, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ketch.cli.main", *args],
        input=data,
        capture_output=True,
        env=ketch.env,
        timeout=300,
        check=False,
    )


def test_cloud_init_user_data_took_effect(ketch: Ketch, guest: str) -> None:
    assert ketch.exec(guest, "cat", "/etc/ketch-test/greeting") == "ahoy from cloud-init\n"
    assert ketch.exec(guest, "cat", "/var/tmp/runcmd-marker") == "ran\n"
    assert ketch.exec(guest, "hostname").strip() == guest
    assert ketch.exec(guest, "sudo", "-n", "id", "-u").strip() == "0"


def test_exit_code_passes_through(ketch: Ketch, guest: str) -> None:
    assert raw(ketch, "exec", guest, "--", "sh", "-c", "exit 7").returncode == 7
    assert raw(ketch, "exec", guest, "--", "true").returncode == 0


def test_binary_bytes_through_cat_are_identical(ketch: Ketch, guest: str) -> None:
    data = os.urandom(1024 * 1024)
    done = raw(ketch, "exec", guest, "--", "cat", data=data)
    assert done.returncode == 0
    assert done.stdout == data


def test_hostile_argument_stays_one_literal_argument(ketch: Ketch, guest: str) -> None:
    hostile = "'; touch /tmp/pwned; echo '"
    out = raw(ketch, "exec", guest, "--", "printf", "%s\\n", hostile, "$(id)").stdout.decode()
    assert out == f"{hostile}\n$(id)\n"
    assert raw(ketch, "exec", guest, "--", "test", "-e", "/tmp/pwned").returncode == 1


def test_working_directory(ketch: Ketch, guest: str) -> None:
    assert ketch.run("exec", guest, "-d", "/etc", "--", "pwd").stdout == "/etc\n"
    assert ketch.run("exec", "--working-directory", "/tmp", guest, "--", "pwd").stdout == "/tmp\n"


def test_shell_through_a_pty(ketch: Ketch, guest: str) -> None:
    child = pexpect.spawn(
        sys.executable, ["-m", "ketch.cli.main", "shell", guest], env=ketch.env, timeout=60
    )
    try:
        child.expect(r"[$#] ")
        child.sendline("echo shell-$((6*7))")
        child.expect("shell-42")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_transfer_file_and_tree_round_trip(ketch: Ketch, guest: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(10 * 1024 * 1024))
    ketch.run("transfer", str(big), f"{guest}:big.bin")
    back = tmp_path / "back.bin"
    ketch.run("transfer", f"{guest}:big.bin", str(back))
    assert back.read_bytes() == big.read_bytes()

    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "deep.txt").write_text("deep\n")
    (tree / "top.bin").write_bytes(os.urandom(4096))
    ketch.run("transfer", "-r", "-p", str(tree), f"{guest}:copies/tree")
    out = tmp_path / "out"
    out.mkdir()
    ketch.run("transfer", "-r", f"{guest}:copies/tree", str(out))
    assert _digest(out / "tree") == _digest(tree)


def test_transfer_stdin_and_stdout(ketch: Ketch, guest: str) -> None:
    data = os.urandom(65536)
    assert raw(ketch, "transfer", "-", f"{guest}:from-stdin", data=data).returncode == 0
    done = raw(ketch, "transfer", f"{guest}:from-stdin", "-")
    assert done.returncode == 0 and done.stdout == data


def test_transfer_refuses_dot_dot(ketch: Ketch, guest: str, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    done = ketch.run("transfer", str(f), f"{guest}:../../etc/evil", check=False)
    assert done.returncode == 1
    assert ".." in done.stderr


def test_tampered_host_key_is_refused(ketch: Ketch, guest: str, tmp_path: Path) -> None:
    known = ketch.root / "instances" / guest / "known_hosts"
    pinned = known.read_text()
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    alias = pinned.split()[0]
    known.write_text(f"{alias} ssh-ed25519 {other.with_suffix('.pub').read_text().split()[1]}\n")
    try:
        ketch.end_ssh_master(guest)  # a new connection checks the pin; ketchd's new master fails
        done = ketch.run("exec", guest, "--", "true", check=False)
        assert done.returncode == 2
        assert f'host key for "{guest}" changed' in done.stderr
    finally:
        known.write_text(pinned)
    assert ketch.exec(guest, "echo", "ok") == "ok\n"
