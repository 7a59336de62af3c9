"""Every ``-o`` value of the ssh argv reaches ssh as it is (issue 12 item 8).

ssh reads a ``-o`` argument as a configuration line: a space splits the value,
and ``%d`` in a file option is the home directory.  These tests run the real
OpenSSH client on argvs built for storage roots named with a space, a ``%``
and other characters ssh's parser treats specially: ``ssh -G`` must read back
the exact known_hosts path, and a real connection (to a listener on
127.0.0.1 that sends a banner and hangs up) must load the exact key file.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.errors import InvalidArgument
from ketch.host.ssh import generate_keypair, ssh_argv, ssh_option
from ketch.sshtarget import SshTarget

needs_ssh = pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="needs the OpenSSH client",
)

ROOTS = [
    pytest.param("my vms", id="space"),
    pytest.param("100%d", id="percent-token"),
    pytest.param("100%%d", id="double-percent"),
    pytest.param("%h %p %r", id="tokens-and-spaces"),
    pytest.param("it's", id="single-quote"),
    pytest.param('say "hi"', id="double-quote"),
    pytest.param("back\\slash", id="backslash"),
    pytest.param("back\\ space", id="backslash-space"),
    pytest.param("hash #x", id="hash"),
    pytest.param("a=b,c", id="equals"),
    pytest.param("$HOME $", id="dollar-without-brace"),
]


def target(root: Path, port: int = 22) -> SshTarget:
    return SshTarget(
        name="vm1",
        host="127.0.0.1",
        port=port,
        user="ubuntu",
        identity=str(root / "id_ed25519"),
        known_hosts=str(root / "known_hosts"),
    )


def ssh_config(argv: list[str]) -> dict[str, list[str]]:
    """What ``ssh -G`` makes of ``argv``: each option's values."""
    assert argv[0] == "ssh"
    done = subprocess.run(
        ["ssh", "-G", *argv[1:]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    config: dict[str, list[str]] = {}
    for line in done.stdout.decode().splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key, []).append(value)
    return config


@pytest.fixture
def banner_port() -> Iterator[int]:
    """A port on 127.0.0.1 that sends an SSH banner to one client, then hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(60)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                conn.sendall(b"SSH-2.0-ketch-test\r\n")
                conn.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes a pending accept()
        server.close()
        thread.join(timeout=30)


# -- the pure quoting ---------------------------------------------------------------------------


def test_plain_values_are_written_as_they_are() -> None:
    assert ssh_option("HostKeyAlias", "vm1") == "HostKeyAlias=vm1"
    assert (
        ssh_option("IdentityFile", "/srv/ketch/id_ed25519") == "IdentityFile=/srv/ketch/id_ed25519"
    )
    assert ssh_option("ControlPath", "none") == "ControlPath=none"


def test_values_are_quoted_and_escaped() -> None:
    assert ssh_option("IdentityFile", "/srv/my vms/k") == 'IdentityFile="/srv/my vms/k"'
    assert ssh_option("IdentityFile", "/srv/100%d/k") == "IdentityFile=/srv/100%%d/k"
    assert ssh_option("UserKnownHostsFile", '/a "b"\\c') == 'UserKnownHostsFile="/a \\"b\\"\\\\c"'
    # Only the options ssh expands get their % doubled.
    assert ssh_option("HostKeyAlgorithms", "a%b") == "HostKeyAlgorithms=a%b"


@pytest.mark.parametrize(
    "value",
    ["/srv/${HOME}/k", "~/k", "/srv/a\nb/k", "/srv/a\tb/k", ""],
    ids=["env-var", "tilde", "newline", "tab", "empty"],
)
def test_what_ssh_cannot_be_told_literally_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        ssh_option("IdentityFile", value)
    assert "IdentityFile" in err.value.message


def test_a_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    t = SshTarget("vm1", "127.0.0.1", 22, "ubuntu", "~/id", "kh")
    argv = ssh_argv(t, None, tty=None)
    assert ssh_option("IdentityFile", f"{tmp_path}/~/id") in argv  # no ~ expansion
    assert ssh_option("UserKnownHostsFile", f"{tmp_path}/kh") in argv


# -- what the real ssh reads ----------------------------------------------------------------


@needs_ssh
def test_unescaped_values_break_ssh(tmp_path: Path) -> None:
    """The bug as it was: the values written raw."""
    root = tmp_path / "my vms"
    broken = subprocess.run(
        ["ssh", "-G", "-F", "/dev/null", "-o", f"IdentityFile={root}/id", "127.0.0.1"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert broken.returncode != 0 and b"extra arguments" in broken.stderr
    expanded = ssh_config(
        ["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={tmp_path}/100%d/kh", "x"]
    )
    assert expanded["userknownhostsfile"] != [f"{tmp_path}/100%d/kh"]


@needs_ssh
@pytest.mark.parametrize("name", ROOTS)
def test_ssh_reads_back_the_known_hosts_path(tmp_path: Path, name: str) -> None:
    root = tmp_path / name
    config = ssh_config(ssh_argv(target(root), "true", tty=False))
    assert config["userknownhostsfile"] == [str(root / "known_hosts")]
    assert config["hostkeyalias"] == ["vm1"]
    assert config["globalknownhostsfile"] == ["/dev/null"]
    assert config["identityagent"] == ["none"]


@needs_ssh
@pytest.mark.parametrize("name", ROOTS)
def test_ssh_loads_the_key_from_the_path(tmp_path: Path, name: str, banner_port: int) -> None:
    root = tmp_path / name
    root.mkdir()
    generate_keypair(root / "id_ed25519", "test")
    argv = ssh_argv(target(root, banner_port), "true", tty=False)
    argv.insert(1, "-v")  # before the LogLevel option: the first value wins
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
    )
    # ssh's log writes a backslash as two (strnvis).
    loaded = [
        line.removeprefix("debug1: identity file ").replace("\\\\", "\\")
        for line in done.stderr.decode().splitlines()
        if line.startswith("debug1: identity file ")
    ]
    key = str(root / "id_ed25519")
    assert f"{key} type 3" in loaded, loaded  # type 3: ed25519, read from that very file
    assert all(entry.startswith(key) for entry in loaded), loaded
