"""Issue 12 item 1 on a real VM: a hostile guest's tar cannot write outside the destination.

Root in the guest makes the login user's shell a script that answers the
guest side of ``transfer -r`` (which packs with ``tar -c``; the tiny image's
``tar`` is a busybox applet that its shell runs without looking at ``PATH``)
with an archive made by the test, whatever was asked for; then
``ketch transfer -r VM:top DEST`` must refuse it with exit code 2, naming
the member, and leave everything beside and inside ``DEST`` as it was; a
symbolic link leading out of the tree is never made (skipped with a warning,
as a legitimate tree with ``bin/python -> /usr/bin/python3`` must still copy),
and nothing is ever written outside ``DEST``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_tar import Member, archive, cve_2025_4517_chain
from ketchcli import Ketch

pytestmark = pytest.mark.vm

EVIL = "/var/tmp/ketch-evil.tar"
EVIL_SH = "/usr/local/bin/ketch-evil-sh"
# sshd runs the login shell as: SHELL -c COMMAND.  The marker is a line of
# ketch's guest-side script for guest -> host copies (cli/transfer_scripts.py: GET).
EVIL_SHELL = f"""#!/bin/sh
case "$2" in
  *'exec tar -c -f - "./$2"'*) printf D; exec cat {EVIL} ;;
esac
exec /bin/sh "$@"
"""
TAKE_OVER = """set -e
printf '%s' "$1" > "$2"
chmod 755 "$2"
echo "$2" >> /etc/shells
sed -i "s|^\\($3:.*:\\)[^:]*\\$|\\1$2|" /etc/passwd
grep "^$3:.*:$2\\$" /etc/passwd
"""


@pytest.fixture(scope="module")
def hostile(ketch: Ketch) -> Iterator[str]:
    """A tiny instance whose login shell sends ``EVIL`` for any ``transfer -r`` from it."""
    with ketch.launched("hostile", "--memory", "512M") as name:
        ketch.exec(name, "mkdir", "-p", "top")
        user = ketch.exec(name, "id", "-un").strip()
        ketch.exec(name, "sudo", "-n", "sh", "-c", TAKE_OVER, "sh", EVIL_SHELL, EVIL_SH, user)
        # The login shell is chosen when a connection authenticates: a new one takes it
        ketch.end_ssh_master(name)
        yield name


def send(ketch: Ketch, name: str, members: list[Member], tmp_path: Path) -> None:
    """Put the archive of ``members`` where the guest's fake tar reads it."""
    local = tmp_path / "evil.tar"
    local.write_bytes(archive(*members).getvalue())
    ketch.run("transfer", str(local), f"{name}:evil.tar")
    ketch.exec(name, "sudo", "-n", "cp", "evil.tar", EVIL)
    local.unlink()


def attack(
    ketch: Ketch, name: str, tmp_path: Path, members: list[Member]
) -> subprocess.CompletedProcess[str]:
    send(ketch, name, members, tmp_path)
    return ketch.run("transfer", "-r", f"{name}:top", str(tmp_path / "dest"), check=False)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside.txt").write_text("host data\n")
    return tmp_path / "dest"


def untouched(tmp_path: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "outside.txt"]
    assert (tmp_path / "outside.txt").read_text() == "host data\n"
    assert list((tmp_path / "dest").iterdir()) == []


def test_the_guest_really_sends_the_crafted_archive(
    ketch: Ketch, hostile: str, tmp_path: Path, dest: Path
) -> None:
    done = attack(ketch, hostile, tmp_path, [("dir", "./top", ""), ("file", "./top/f", "made\n")])
    assert done.returncode == 0, done.stderr
    assert (dest / "top" / "f").read_text() == "made\n"


def nothing_outside(tmp_path: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "outside.txt"]
    assert (tmp_path / "outside.txt").read_text() == "host data\n"
    for path in (tmp_path / "dest").rglob("*"):
        assert path.resolve().is_relative_to(tmp_path / "dest") or path.is_symlink()


def test_cve_2025_4517_chain_from_the_guest_writes_nothing_outside(
    ketch: Ketch, hostile: str, tmp_path: Path, dest: Path
) -> None:
    done = attack(ketch, hostile, tmp_path, cve_2025_4517_chain(dest))
    # The chain's last link leads out: it is not made, so PWNED lands in a plain directory.
    assert done.returncode == 0, done.stderr
    assert "ketch: skipped ./top/escape: a symbolic link to" in done.stderr
    assert not (tmp_path / "PWNED").exists()
    assert not (dest / "top" / "escape").is_symlink()
    nothing_outside(tmp_path)


def test_a_link_out_of_the_tree_is_skipped_and_never_written_through(
    ketch: Ketch, hostile: str, tmp_path: Path, dest: Path
) -> None:
    members = [("dir", "./top", ""), ("sym", "./top/l", "../.."), ("file", "./top/l/x", "x")]
    done = attack(ketch, hostile, tmp_path, members)
    assert done.returncode == 0, done.stderr
    assert "skipped ./top/l: a symbolic link to '../..', which leads outside" in done.stderr
    assert not (dest / "top" / "l").is_symlink()
    assert (dest / "top" / "l" / "x").read_text() == "x"
    nothing_outside(tmp_path)


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([("dir", "./top", ""), ("hard", "./top/h", "/etc/passwd")], "absolute name"),
        ([("file", "./top/../../x", "x")], "'..'"),
    ],
)
def test_hostile_members_from_the_guest_are_refused(
    ketch: Ketch, hostile: str, tmp_path: Path, dest: Path, members: list[Member], why: str
) -> None:
    done = attack(ketch, hostile, tmp_path, members)
    assert done.returncode == 2, done.stderr
    assert "from the guest's archive" in done.stderr and why in done.stderr
    untouched(tmp_path)
