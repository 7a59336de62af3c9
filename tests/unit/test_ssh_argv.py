"""ssh argv builders, quoting, failure detection, and the transfer logic.

The transfer tests run the real guest-side scripts through a fake ``ssh``
placed first on PATH: it runs the remote command with ``sh`` in a directory
standing in for the guest user's home, so every rule except the network is
exercised without a VM.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.cli import transfer as transfer_cli
from ketch.cli import transfer_scripts
from ketch.cli.guest import exec_command
from ketch.cli.locations import GuestPath, parse_location
from ketch.cli.transfer import transfer
from ketch.errors import GuestError, HostKeyMismatch, InvalidArgument
from ketch.host import ssh
from ketch.host.ssh import (
    StderrWatch,
    connection_failure,
    generate_keypair,
    is_host_key_failure,
    known_hosts_line,
    remote_command,
    ssh_argv,
    write_known_hosts,
)
from ketch.sshtarget import SshTarget

TARGET = SshTarget(
    name="vm1",
    host="127.0.0.1",
    port=2222,
    user="ubuntu",
    identity="/keys/id_ed25519",
    known_hosts="/inst/vm1/known_hosts",
)

# What OpenSSH 9.2 prints (LogLevel=ERROR) when the pinned key does not match.
CHANGED = b"""\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:n1Qv0dXWb4dKk6m0Qm1qk0dJYQ8xq3Jm2mYV2oQ0F0c.
Please contact your system administrator.
Add correct host key in /inst/vm1/known_hosts to get rid of this message.
Offending ED25519 key in /inst/vm1/known_hosts:1
  remove with:
  ssh-keygen -f "/inst/vm1/known_hosts" -R "vm1"
Host key for vm1 has changed and you have requested strict checking.
Host key verification failed.
"""


def options(argv: list[str]) -> dict[str, str]:
    out = {}
    for i, arg in enumerate(argv):
        if arg == "-o":
            key, _, value = argv[i + 1].partition("=")
            out[key] = value
    return out


# --- ssh_argv ----------------------------------------------------------------


def test_argv_pins_the_host_key() -> None:
    argv = ssh_argv(TARGET, "true", tty=False)
    opts = options(argv)
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    assert opts["HostKeyAlias"] == "vm1"
    assert opts["StrictHostKeyChecking"] == "yes"
    assert opts["UserKnownHostsFile"] == "/inst/vm1/known_hosts"
    assert opts["GlobalKnownHostsFile"] == "/dev/null"
    assert opts["HostKeyAlgorithms"] == "ssh-ed25519"
    assert opts["UpdateHostKeys"] == "no"


def test_argv_authenticates_with_ketchs_key_only() -> None:
    opts = options(ssh_argv(TARGET, "true", tty=False))
    assert opts["IdentityFile"] == "/keys/id_ed25519"
    assert opts["IdentitiesOnly"] == "yes"
    assert opts["IdentityAgent"] == "none"
    assert opts["PasswordAuthentication"] == "no"
    assert opts["LogLevel"] == "ERROR"
    assert int(opts["ConnectTimeout"]) > 0


def test_argv_ends_with_port_user_host_and_the_remote_string() -> None:
    argv = ssh_argv(TARGET, "echo 'a b'", tty=False)
    assert argv[-7:] == ["-p", "2222", "-l", "ubuntu", "--", "127.0.0.1", "echo 'a b'"]


def test_argv_without_remote_is_a_login_shell() -> None:
    argv = ssh_argv(TARGET, None, tty=True, batch=False)
    assert argv[-1] == "127.0.0.1"
    assert "-t" in argv and "-T" not in argv
    assert options(argv)["BatchMode"] == "no"


@pytest.mark.parametrize(("tty", "flag"), [(True, "-t"), (False, "-T"), (None, None)])
def test_argv_tty_flags(tty: bool | None, flag: str | None) -> None:
    argv = ssh_argv(TARGET, "true", tty=tty)
    flags = {a for a in argv if a in ("-t", "-T", "-tt")}
    assert flags == ({flag} if flag else set())
    assert options(argv)["BatchMode"] == "yes"


@pytest.mark.parametrize(
    "bad",
    [
        SshTarget("-oProxyCommand=x", "127.0.0.1", 22, "u", "/k", "/kh"),
        SshTarget("vm", "-oProxyCommand=x", 22, "u", "/k", "/kh"),
        SshTarget("vm", "127.0.0.1", 0, "u", "/k", "/kh"),
    ],
)
def test_argv_refuses_option_like_targets(bad: SshTarget) -> None:
    with pytest.raises(InvalidArgument):
        ssh_argv(bad, "true", tty=False)


def test_openssh_accepts_the_argv() -> None:
    """``ssh -G`` parses the options without connecting."""
    argv = ssh_argv(TARGET, None, tty=False)
    i = argv.index("--")
    done = subprocess.run([*argv[:i], "-G", *argv[i:]], capture_output=True, text=True, check=True)
    conf = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert conf["hostkeyalias"] == "vm1"
    assert conf["stricthostkeychecking"] in ("true", "yes")
    assert conf["port"] == "2222"
    assert conf["user"] == "ubuntu"


# --- remote_command ------------------------------------------------------------


def run_like_the_guest(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """What the guest's login shell does with the string ssh sends."""
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=cwd)


def test_hostile_argument_stays_one_literal_argument(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    hostile = f"'; touch {pwned}"
    command = remote_command(["printf", "[%s]\\n", hostile, "$(id)", "a b", "*", ""])
    done = run_like_the_guest(command, tmp_path)
    assert done.stdout == f"[{hostile}]\n[$(id)]\n[a b]\n[*]\n[]\n"
    assert not pwned.exists()


def test_newlines_and_quotes_survive(tmp_path: Path) -> None:
    args = ["line1\nline2", "it's", '"dq"', "back\\slash", "tab\there"]
    done = run_like_the_guest(remote_command(["printf", "%s|", *args]), tmp_path)
    assert done.stdout == "|".join(args) + "|"


def test_command_starting_with_a_dash_is_not_a_shell_option(tmp_path: Path) -> None:
    command = remote_command(["--version", "x"])
    assert not command.startswith("-")
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 127  # "--version: not found", not sh's own --version


def test_workdir_cd_and_exec(tmp_path: Path) -> None:
    (tmp_path / "my dir").mkdir()
    command = remote_command(["pwd"], workdir="my dir")
    assert command == "cd 'my dir' && exec pwd"
    assert run_like_the_guest(command, tmp_path).stdout.strip() == str(tmp_path / "my dir")


def test_workdir_missing_fails_without_running(tmp_path: Path) -> None:
    done = run_like_the_guest(remote_command(["touch", "x"], workdir="nope"), tmp_path)
    assert done.returncode != 0
    assert not (tmp_path / "x").exists()


def test_remote_command_refuses_empty_and_nul() -> None:
    with pytest.raises(InvalidArgument):
        remote_command([])
    with pytest.raises(InvalidArgument):
        remote_command(["echo", "a\0b"])
    with pytest.raises(InvalidArgument):
        remote_command(["true"], workdir="")


# --- failure detection -----------------------------------------------------------


def test_host_key_failure_detected() -> None:
    assert is_host_key_failure(255, CHANGED)
    assert is_host_key_failure(
        255,
        b"No ED25519 host key is known for vm1 and you have requested strict checking.\r\n"
        b"Host key verification failed.\r\n",
    )
    assert is_host_key_failure(
        255,
        b"Unable to negotiate with 127.0.0.1 port 2222: no matching host key type found. "
        b"Their offer: rsa-sha2-512\n",
    )


def test_host_key_failure_needs_ssh_exit_code() -> None:
    assert not is_host_key_failure(1, CHANGED)
    assert not is_host_key_failure(0, b"")
    assert not is_host_key_failure(255, b"ssh: connect to host 127.0.0.1 port 2222: refused\n")


def test_connection_failure() -> None:
    refused = b"ssh: connect to host 127.0.0.1 port 2222: Connection refused\r\n"
    assert connection_failure(255, refused) == (
        "ssh: connect to host 127.0.0.1 port 2222: Connection refused"
    )
    assert connection_failure(255, b"my program failed\n") is None
    assert connection_failure(3, refused) is None


def test_stderr_watch_holds_a_host_key_failure() -> None:
    watch = StderrWatch()
    shown = b"".join(watch.feed(CHANGED[i : i + 7]) for i in range(0, len(CHANGED), 7))
    assert shown == b""
    assert watch.finish(255) == (b"", None, True)


def test_stderr_watch_unknown_line_amid_a_host_key_failure() -> None:
    """An ssh version printing a line not known here still ends as a host-key failure."""
    watch = StderrWatch()
    head, rest = CHANGED.split(b"Please contact", 1)
    shown = watch.feed(head) + watch.feed(b"Some new OpenSSH advice.\nPlease contact" + rest)
    assert b"Some new OpenSSH advice" in shown
    assert watch.finish(255) == (b"", None, True)


def test_stderr_watch_passes_program_output_through() -> None:
    watch = StderrWatch()
    assert watch.feed(b"warning: x\n") == b"warning: x\n"
    assert watch.feed(b"Host key verification failed.\n") == b"Host key verification failed.\n"
    assert watch.finish(255) == (b"", None, False)


def test_stderr_watch_releases_a_prompt_without_newline() -> None:
    watch = StderrWatch()
    assert watch.feed(b"name? ") == b"name? "


def test_stderr_watch_holds_a_partial_ssh_line_then_releases() -> None:
    watch = StderrWatch()
    assert watch.feed(b"Connection clo") == b""
    assert watch.feed(b"sed by peer\n") == b""
    assert watch.feed(b"ok\n") == b"Connection closed by peer\nok\n"


def test_stderr_watch_returns_held_lines_when_the_program_succeeded() -> None:
    watch = StderrWatch()
    assert watch.feed(b"Permission denied (x)\n") == b""
    assert watch.finish(0) == (b"Permission denied (x)\n", None, False)


def test_stderr_watch_reports_connection_failure() -> None:
    watch = StderrWatch()
    watch.feed(b"ssh: connect to host 127.0.0.1 port 9: Connection refused\r\n")
    out, failure, host_key = watch.finish(255)
    assert out == b"" and not host_key
    assert failure == "ssh: connect to host 127.0.0.1 port 9: Connection refused"


# --- keys and known_hosts ------------------------------------------------------------


def test_generate_keypair_is_idempotent(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    line = generate_keypair(key, "ketch@test")
    assert line.startswith("ssh-ed25519 ") and line.endswith(" ketch@test")
    assert key.stat().st_mode & 0o777 == 0o600
    assert generate_keypair(key, "other") == line
    key.with_name("id_ed25519.pub").unlink()
    assert generate_keypair(key, "x").split()[:2] == line.split()[:2]
    assert sorted(p.name for p in key.parent.iterdir()) == ["id_ed25519", "id_ed25519.pub"]


def test_known_hosts_line(tmp_path: Path) -> None:
    line = generate_keypair(tmp_path / "k", "comment here")
    kind, blob = line.split()[:2]
    assert known_hosts_line("vm1", line) == f"vm1 {kind} {blob}"
    path = tmp_path / "known_hosts"
    write_known_hosts(path, "vm1", line)
    assert path.read_text() == f"vm1 {kind} {blob}\n"
    assert path.stat().st_mode & 0o777 == 0o600
    # ssh-keygen finds the key under the alias.
    done = subprocess.run(
        ["ssh-keygen", "-F", "vm1", "-f", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0 and blob in done.stdout


@pytest.mark.parametrize("alias", ["", "*", "a b", "!vm", "@cert-authority", "vm,other", "|1|x"])
def test_known_hosts_line_refuses_patterns(alias: str) -> None:
    with pytest.raises(InvalidArgument):
        known_hosts_line(alias, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== c")


@pytest.mark.parametrize(
    "key", ["", "ssh-ed25519", "ssh-dss AAAA", "ssh-ed25519 !!!", "ssh-rsa AAAAC3NzaC1lZDI1NTE5"]
)
def test_known_hosts_line_refuses_bad_keys(key: str) -> None:
    with pytest.raises(InvalidArgument):
        known_hosts_line("vm1", key)


# --- guest path parsing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "path", "is_dir"),
    [
        ("vm:", ".", False),
        ("vm:~", ".", False),
        ("vm:~/", ".", False),
        ("vm:~/a/b", "a/b", False),
        ("vm:/etc/", "/etc", True),
        ("vm:a//b/./c", "a/b/c", False),
        ("vm-2:/x", "/x", False),
        ("vm://x", "/x", False),
    ],
)
def test_parse_guest_location(arg: str, path: str, is_dir: bool) -> None:
    loc = parse_location(arg)
    assert isinstance(loc, GuestPath)
    assert (loc.path, loc.is_dir_hint) == (path, is_dir)


@pytest.mark.parametrize("arg", ["file", "./a:b", "/abs:x", "-", "dir/vm:x"])
def test_parse_host_location(arg: str) -> None:
    assert parse_location(arg) == arg


@pytest.mark.parametrize("arg", ["vm:..", "vm:../x", "vm:a/../../etc", "vm:/tmp/.."])
def test_guest_paths_with_dotdot_are_refused(arg: str) -> None:
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        parse_location(arg)


def test_guest_path_dirname_is_never_option_like() -> None:
    loc = parse_location("vm:-x/y")
    assert isinstance(loc, GuestPath)
    assert loc.dirname == "./-x"


# --- a fake ssh: the guest is a local directory -------------------------------------

FAKE_SSH = """#!/bin/sh
# Fake ssh for tests: run the remote command (the last argument) with sh in
# $FAKE_GUEST_HOME; FAKE_SSH_FAIL=hostkey|refused simulates ssh failures.
for a; do last=$a; done
case "$FAKE_SSH_FAIL" in
hostkey) cat "$FAKE_SSH_CHANGED" >&2; exit 255 ;;
refused) echo "ssh: connect to host 127.0.0.1 port 2222: Connection refused" >&2; exit 255 ;;
esac
cd "$FAKE_GUEST_HOME" || exit 255
exec sh -c "$last"
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake guest home; ``ssh`` on PATH runs commands in it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ssh").write_text(FAKE_SSH)
    (bindir / "ssh").chmod(0o755)
    (tmp_path / "changed.txt").write_bytes(CHANGED)
    home = tmp_path / "guest"
    home.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GUEST_HOME", str(home))
    monkeypatch.setenv("FAKE_SSH_CHANGED", str(tmp_path / "changed.txt"))
    monkeypatch.chdir(tmp_path)
    yield home


def resolve(name: str) -> SshTarget:
    return SshTarget(name, "127.0.0.1", 2222, "ubuntu", "/k", "/kh")


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "-dash").write_bytes(b"\0\1\2")
    (root / "sub" / "b.bin").write_bytes(os.urandom(5000))
    (root / "sub" / "deeper" / "sp ace").write_text("x")
    (root / "sub" / "link").symlink_to("b.bin")
    (root / "empty").mkdir()


def test_exec_passes_exit_code_and_arguments(
    fake: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert exec_command(resolve("vm"), ["sh", "-c", "exit 7"], workdir=None) == 7
    hostile = "'; touch pwned"
    assert exec_command(resolve("vm"), ["printf", "%s", hostile], workdir=None) == 0
    assert capfdbinary.readouterr().out == hostile.encode()
    assert not (fake / "pwned").exists()


def test_exec_workdir(fake: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    (fake / "w").mkdir()
    assert exec_command(resolve("vm"), ["pwd"], workdir="w") == 0
    assert capfdbinary.readouterr().out.decode().strip() == str(fake / "w")


def test_exec_forwards_program_stderr(
    fake: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert exec_command(resolve("vm"), ["sh", "-c", "echo oops >&2; exit 3"], workdir=None) == 3
    assert capfdbinary.readouterr().err == b"oops\n"


def test_exec_host_key_failure(
    fake: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    monkeypatch.setenv("FAKE_SSH_FAIL", "hostkey")
    with pytest.raises(HostKeyMismatch, match='host key for "vm" changed'):
        exec_command(resolve("vm"), ["true"], workdir=None)
    assert capfdbinary.readouterr().err == b""


def test_exec_connection_refused(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SSH_FAIL", "refused")
    with pytest.raises(GuestError, match="Connection refused"):
        exec_command(resolve("vm"), ["true"], workdir=None)


def test_transfer_host_key_failure(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Path("f").write_text("x")
    monkeypatch.setenv("FAKE_SSH_FAIL", "hostkey")
    with pytest.raises(HostKeyMismatch):
        transfer(["f"], "vm:", resolve=resolve, recursive=False, parents=False)
    with pytest.raises(HostKeyMismatch):
        transfer(["vm:f"], "out", resolve=resolve, recursive=False, parents=False)
    assert not Path("out").exists()


def test_put_and_get_file(fake: Path) -> None:
    data = os.urandom(300_000)
    Path("f.bin").write_bytes(data)
    transfer(["f.bin"], "vm:", resolve=resolve, recursive=False, parents=False)
    assert (fake / "f.bin").read_bytes() == data
    transfer(["f.bin"], "vm:renamed", resolve=resolve, recursive=False, parents=False)
    assert (fake / "renamed").read_bytes() == data
    transfer(["vm:renamed"], "back.bin", resolve=resolve, recursive=False, parents=False)
    assert Path("back.bin").read_bytes() == data
    Path("d").mkdir()
    transfer(["vm:renamed", "vm:f.bin"], "d", resolve=resolve, recursive=False, parents=False)
    assert sorted(p.name for p in Path("d").iterdir()) == ["f.bin", "renamed"]
    assert not list(Path(".").glob(".*ketch-part"))


def test_put_into_missing_directory_needs_parents(fake: Path) -> None:
    Path("f").write_text("x")
    with pytest.raises(InvalidArgument, match="no such directory") as info:
        transfer(["f"], "vm:a/b/f", resolve=resolve, recursive=False, parents=False)
    assert "-p" in (info.value.hint or "")
    transfer(["f"], "vm:a/b/f", resolve=resolve, recursive=False, parents=True)
    assert (fake / "a/b/f").read_text() == "x"
    transfer(["f"], "vm:c/d/", resolve=resolve, recursive=False, parents=True)
    assert (fake / "c/d/f").read_text() == "x"


def test_get_into_missing_directory_needs_parents(fake: Path) -> None:
    (fake / "f").write_text("x")
    with pytest.raises(InvalidArgument, match="no such directory"):
        transfer(["vm:f"], "x/y/f", resolve=resolve, recursive=False, parents=False)
    transfer(["vm:f"], "x/y/f", resolve=resolve, recursive=False, parents=True)
    assert Path("x/y/f").read_text() == "x"


def test_directories_need_r(fake: Path) -> None:
    Path("d").mkdir()
    (fake / "gd").mkdir()
    with pytest.raises(InvalidArgument, match="is a directory") as info:
        transfer(["d"], "vm:", resolve=resolve, recursive=False, parents=False)
    assert info.value.hint == "use -r to copy directories"
    with pytest.raises(InvalidArgument, match="is a directory") as info:
        transfer(["vm:gd"], "out", resolve=resolve, recursive=False, parents=False)
    assert info.value.hint == "use -r to copy directories"


def test_get_missing_file(fake: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such file"):
        transfer(["vm:nope"], "out", resolve=resolve, recursive=False, parents=False)
    assert not Path("out").exists()


def test_tree_round_trip(fake: Path) -> None:
    src = Path("tree")
    make_tree(src)
    want = tree_digest(src)
    transfer(["tree"], "vm:", resolve=resolve, recursive=True, parents=False)
    assert tree_digest(fake / "tree") == want
    transfer(["tree"], "vm:copy", resolve=resolve, recursive=True, parents=False)
    assert tree_digest(fake / "copy") == want
    transfer(["vm:copy"], "back", resolve=resolve, recursive=True, parents=False)
    assert tree_digest(Path("back")) == want
    Path("into").mkdir()
    transfer(["vm:copy"], "into", resolve=resolve, recursive=True, parents=False)
    assert tree_digest(Path("into/copy")) == want


def test_tree_to_missing_parent(fake: Path) -> None:
    make_tree(Path("t"))
    with pytest.raises(InvalidArgument, match="no such directory"):
        transfer(["t"], "vm:p/q/t", resolve=resolve, recursive=True, parents=False)
    transfer(["t"], "vm:p/q/t", resolve=resolve, recursive=True, parents=True)
    assert tree_digest(fake / "p/q/t") == tree_digest(Path("t"))


def test_stdin_and_stdout(fake: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    data = os.urandom(100_000)
    Path("in.bin").write_bytes(data)
    saved = os.dup(0)
    try:
        with open("in.bin", "rb") as f:
            os.dup2(f.fileno(), 0)
        transfer(["-"], "vm:from-stdin", resolve=resolve, recursive=False, parents=False)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert (fake / "from-stdin").read_bytes() == data
    capfdbinary.readouterr()
    transfer(["vm:from-stdin"], "-", resolve=resolve, recursive=False, parents=False)
    assert capfdbinary.readouterr().out == data


@pytest.mark.parametrize(
    ("sources", "destination", "message"),
    [
        (["vm:a"], "vm2:b", "instance to an instance"),
        (["a"], "b", "no instance named"),
        (["-", "a"], "vm:", "only source"),
        (["vm:a", "vm:b"], "-", "only one source"),
        ([], "vm:", "nothing to transfer"),
        (["vm:"], "out", "as a whole"),
        (["vm:/"], "out", "as a whole"),
    ],
)
def test_transfer_argument_rules(sources: list[str], destination: str, message: str) -> None:
    def no_resolve(name: str) -> SshTarget:
        raise AssertionError("must not connect")

    with pytest.raises(InvalidArgument, match=message):
        transfer(sources, destination, resolve=no_resolve, recursive=True, parents=False)


# --- hostile archives from the guest ---------------------------------------------------


def archive(*members: tuple[str, str, str]) -> io.BytesIO:
    """A tar with (kind, name, target-or-content) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for kind, name, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra.encode()))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = extra
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = extra
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
            tar.addfile(info)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    "members",
    [
        [("file", "./top/../../evil", "x")],
        [("file", "../evil", "x")],
        [("file", "/tmp/evil", "x")],
        [("file", "./other/evil", "x")],
        [("dir", "./top", ""), ("hard", "./top/h", "/etc/passwd")],
        [("dir", "./top", ""), ("chr", "./top/dev", "")],
    ],
)
def test_hostile_archive_is_refused(tmp_path: Path, members: list[tuple[str, str, str]]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(GuestError):
        transfer_cli._receive_tree(archive(*members), dest, "top", "top")
    assert not (tmp_path / "evil").exists()
    assert list(dest.rglob("evil")) == []


def test_symlink_leading_outside_is_skipped_with_a_warning(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    members = [("dir", "./top", ""), ("sym", "./top/ok", "f"), ("sym", "./top/abs", "/etc/passwd")]
    transfer_cli._receive_tree(archive(*members), tmp_path, "top", "renamed")
    assert os.readlink(tmp_path / "renamed" / "ok") == "f"
    assert not os.path.lexists(tmp_path / "renamed" / "abs")
    err = capfd.readouterr().err
    assert "ketch: skipped ./top/abs: a symbolic link to the absolute path '/etc/passwd'" in err


def test_archive_top_is_renamed(tmp_path: Path) -> None:
    members = [("dir", "./top", ""), ("file", "./top/a", "1"), ("hard", "./top/b", "./top/a")]
    transfer_cli._receive_tree(archive(*members), tmp_path, "top", "new")
    assert (tmp_path / "new/a").read_text() == "1"
    assert (tmp_path / "new/b").read_text() == "1"


def test_quote_helper_is_posix() -> None:
    # The guest-side scripts are passed as one quoted argument to sh -c.
    argv = shlex.split(
        remote_command(["sh", "-c", transfer_scripts.GET, "ketch", "d", "n", "0", "1"])
    )
    assert argv[2] == transfer_scripts.GET
    assert ssh.BOOT_FINISHED == "/var/lib/cloud/instance/boot-finished"


# --- wait_ready without a guest ------------------------------------------------------------


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wait_ready_times_out_saying_what_it_saw() -> None:
    import asyncio

    from ketch.errors import Timeout
    from ketch.progress import ListReporter

    target = SshTarget("vm1", "127.0.0.1", closed_port(), "u", "/k", "/kh")
    reporter = ListReporter()
    with pytest.raises(Timeout, match="refused") as info:
        asyncio.run(ssh.wait_ready(target, timeout=1.0, reporter=reporter))
    assert "vm1" in info.value.message
    assert reporter.steps[0].startswith("Waiting for SSH")


def test_wait_ready_port_that_sends_no_banner() -> None:
    """QEMU's user networking accepts TCP before the guest listens."""
    import asyncio

    from ketch.errors import Timeout
    from ketch.progress import NULL

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = SshTarget("vm1", "127.0.0.1", port, "u", "/k", "/kh")
        async with server:
            await ssh.wait_ready(target, timeout=1.0, reporter=NULL)

    with pytest.raises(Timeout, match=r"before an SSH banner|sent no banner"):  # (load decides)
        asyncio.run(main())


def test_read_banner_skips_preamble_lines() -> None:
    import asyncio

    async def main() -> str:
        async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello\r\nSSH-2.0-dropbear_2022.83\r\n")
            await writer.drain()
            await reader.read()
            writer.close()

        server = await asyncio.start_server(talk, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await ssh.read_banner("127.0.0.1", port, timeout=30)

    assert asyncio.run(main()) == "SSH-2.0-dropbear_2022.83"
