"""``exec``'s working directory: the mapping through mounts, ``-d``/``-n``, the guest command.

Multipass's exec.cpp maps the host's directory when it is inside a mount's
source (compared component by component), runs ``cd DIR && COMMAND`` and,
for a command starting with ``sudo``, changes directory as root.  ketch
picks the longest source among nested mounts (Multipass takes the last one
it lists).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from ketch.cli import guest, verbs_guest
from ketch.cli import main as cli
from ketch.cli.parser import build_parser
from ketch.errors import InvalidArgument

MOUNTS = [("/home/u/src", "/src"), ("/home/u/src/web", "/srv/web"), ("/data", "/mnt/data/")]


@pytest.mark.parametrize(
    ("cwd", "expected"),
    [
        pytest.param("/home/u/src", "/src", id="cwd-is-the-source"),
        pytest.param("/home/u/src/", "/src", id="trailing-slash"),
        pytest.param("/home/u/src/lib/x", "/src/lib/x", id="below"),
        pytest.param("/home/u/src/web", "/srv/web", id="nested-longest-wins"),
        pytest.param("/home/u/src/web/static", "/srv/web/static", id="below-nested"),
        pytest.param("/home/u/src/webby", "/src/webby", id="prefix-name-is-not-nested"),
        pytest.param("/home/u/srcs", None, id="prefix-of-a-source-is-not-inside"),
        pytest.param("/home/u", None, id="above-a-source"),
        pytest.param("/data", "/mnt/data", id="target-with-trailing-slash"),
        pytest.param("/data/a b/it's", "/mnt/data/a b/it's", id="odd-characters"),
        pytest.param("//home/u/./src//lib", "/src/lib", id="repeated-slashes-and-dots"),
        pytest.param("/", None, id="root"),
    ],
)
def test_map_workdir(cwd: str, expected: str | None) -> None:
    assert guest.map_workdir(cwd, MOUNTS) == expected


def test_map_workdir_order_does_not_matter_for_nesting() -> None:
    assert guest.map_workdir("/home/u/src/web/x", list(reversed(MOUNTS))) == "/srv/web/x"


def test_map_workdir_sources_with_trailing_slashes() -> None:
    assert guest.map_workdir("/a/b/c", [("/a/b/", "/t")]) == "/t/c"
    assert guest.map_workdir("/a/bc", [("/a/b/", "/t")]) is None


def test_map_workdir_root_mounted() -> None:
    assert guest.map_workdir("/etc", [("/", "/host")]) == "/host/etc"
    assert guest.map_workdir("/etc", [("/", "/host"), ("/etc", "/e")]) == "/e"


def test_map_workdir_equal_sources_take_the_first() -> None:
    assert guest.map_workdir("/a", [("/a", "/one"), ("/a", "/two")]) == "/one"


def test_mapped_workdir_resolves_a_symlinked_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real / "sub")
    monkeypatch.chdir(tmp_path / "link")
    assert guest.mapped_workdir([(str(real), "/t")]) == "/t/sub"
    # and a source given through a symbolic link maps what it points to
    (tmp_path / "srclink").symlink_to(real)
    assert guest.mapped_workdir([(str(tmp_path / "srclink"), "/t")]) == "/t/sub"


def test_mapped_workdir_in_a_removed_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert guest.mapped_workdir([(str(tmp_path), "/t")]) is None


# -- the guest command ------------------------------------------------------------------------


def sh(remote: str, tmp_path: Path) -> str:
    """Run the string as the guest's login shell would (``sh -c``), with sudo a stand-in."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "sudo").write_text('#!/bin/sh\necho "sudo:$*"; exec "$@"\n')
    (fake / "sudo").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", remote], capture_output=True, text=True, env=env)
    return done.stdout + done.stderr


def test_guest_command_changes_directory_then_execs(tmp_path: Path) -> None:
    odd = tmp_path / "a b" / "it's; $(touch x)"
    odd.mkdir(parents=True)
    remote = guest.guest_command(["pwd"], str(odd))
    assert remote == f"cd {shlex.quote(str(odd))} && exec pwd"
    assert sh(remote, tmp_path).strip() == str(odd)
    assert not (tmp_path / "x").exists()


def test_guest_command_in_a_missing_directory_does_not_run(tmp_path: Path) -> None:
    out = sh(guest.guest_command(["touch", str(tmp_path / "ran")], "/nonexistent/d"), tmp_path)
    assert "/nonexistent/d" in out
    assert not (tmp_path / "ran").exists()


def test_guest_command_with_sudo_changes_directory_under_sudo(tmp_path: Path) -> None:
    odd = tmp_path / "it's here"
    odd.mkdir()
    remote = guest.guest_command(["sudo", "pwd"], str(odd))
    assert remote.startswith("sudo sh -c ")
    out = sh(remote, tmp_path).splitlines()
    assert out[0].startswith("sudo:sh -c")  # the cd happens inside sudo
    assert out[-1] == str(odd)


def test_guest_command_without_workdir_is_the_plain_command() -> None:
    assert guest.guest_command(["sudo", "ls"], None) == "sudo ls"
    with pytest.raises(InvalidArgument):
        guest.guest_command(["sudo", "ls"], "")


# -- parsing -----------------------------------------------------------------------------


def exec_of(*argv: str) -> tuple[str | None, bool, list[str]]:
    ns = cli.parse_args(build_parser(), ["exec", *argv])
    return verbs_guest.exec_request(ns)


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "vm", "--", "pwd"],
        ["vm", "-n", "--", "pwd"],
        ["--no-map-working-directory", "vm", "--", "pwd"],
        ["vm", "--no-map-working-directory", "--", "pwd"],
    ],
)
def test_exec_no_map_flag(argv: list[str]) -> None:
    assert exec_of(*argv) == (None, True, ["pwd"])


def test_exec_n_after_the_double_dash_belongs_to_the_command() -> None:
    assert exec_of("vm", "--", "echo", "-n", "x") == (None, False, ["echo", "-n", "x"])


def test_exec_d_and_n_clash(capsys: pytest.CaptureFixture[str]) -> None:
    # exec.cpp: "Options --working-directory and --no-map-working-directory clash"
    assert cli.main(["exec", "vm", "-d", "/x", "-n", "--", "pwd"]) == 1
    assert "Options --working-directory and --no-map-working-directory clash" in (
        capsys.readouterr().err
    )
