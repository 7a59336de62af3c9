"""The tiny image's ``lib.sh`` functions that parse ``/etc/passwd``-style files.

They run in the guest's busybox sh on every boot; here they run in the host's
POSIX sh (``dash`` on Debian), sourced from the image's own file, on files
made by the test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ketch.images.tiny.recipe import GUEST_DIR

LIB = GUEST_DIR / "lib.sh"
SH = shutil.which("dash") or shutil.which("sh")


def lookup(path: Path, name: str) -> tuple[int, str]:
    """``entry_get FILE NAME`` then the fields it set (status, "_e1|_e3|_e4|_e6|_e7")."""
    assert SH is not None
    script = '. "$1"; entry_get "$2" "$3"; s=$?; printf "%s %s|%s|%s|%s|%s" "$s" ' + (
        '"$_e1" "$_e3" "$_e4" "$_e6" "$_e7"'
    )
    done = subprocess.run(
        [SH, "-c", script, "sh", str(LIB), str(path), name],
        capture_output=True,
        text=True,
        check=True,
    )
    status, _, fields = done.stdout.partition(" ")
    return int(status), fields


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    p = tmp_path / "passwd"
    p.write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "ub:x:1001:1001::/home/ub:/bin/sh\n"
        "ubuntu:x:1000:1000:Ubuntu,,,:/home/ubuntu:/bin/sh\n"
        "odd:x:1002:1002:a \\ b:/home/odd:/bin/sh"  # no newline at the end
    )
    return p


def test_an_entry_and_its_fields(passwd: Path) -> None:
    assert lookup(passwd, "ubuntu") == (0, "ubuntu|1000|1000|/home/ubuntu|/bin/sh")
    assert lookup(passwd, "ub") == (0, "ub|1001|1001|/home/ub|/bin/sh")  # empty gecos


def test_the_last_line_without_a_newline_is_read(passwd: Path) -> None:
    assert lookup(passwd, "odd") == (0, "odd|1002|1002|/home/odd|/bin/sh")


def test_a_name_is_matched_whole(passwd: Path) -> None:
    assert lookup(passwd, "ubunt")[0] == 1
    assert lookup(passwd, "")[0] == 1


def test_a_group_file_and_a_missing_file(tmp_path: Path) -> None:
    group = tmp_path / "group"
    group.write_text("adm:x:4:syslog,ubuntu\nsudo:x:27:\n")
    assert lookup(group, "adm") == (0, "adm|4|syslog,ubuntu||")
    assert lookup(group, "sudo") == (0, "sudo|27|||")
    assert lookup(tmp_path / "nothing", "adm")[0] == 1
