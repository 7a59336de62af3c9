"""qemu-img: build argv (pure), run, parse output (pure).

The results are the disk types of :mod:`ketch.model` (a driver hands them on).

Also a direct reader of the qcow2 snapshot table (:func:`read_snapshot_names`),
used on the hot path of ``ketch list``: it reads a few hundred bytes of the
file header instead of starting a qemu-img process per instance, and falls
back to ``qemu-img info -U`` when the header cannot be read.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from ketch.errors import HostCommandError
from ketch.host.run import run
from ketch.model import DiskCheck, DiskInfo, SnapshotEntry

QEMU_IMG = "qemu-img"


# -- argv builders (pure) --------------------------------------------------


def create_overlay_argv(path: Path, base: Path, base_format: str, size: int | None) -> list[str]:
    """An overlay whose backing file is ``base``; created in constant time."""
    argv = [QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(path)]
    if size is not None:
        argv.append(str(size))
    return argv


def resize_argv(path: Path, size: int) -> list[str]:
    return [QEMU_IMG, "resize", "-q", "-f", "qcow2", str(path), str(size)]


def info_argv(path: Path, *, force_share: bool = True, fmt: str | None = None) -> list[str]:
    """``fmt`` pins the format: a damaged qcow2 must not be probed as raw."""
    argv = [QEMU_IMG, "info", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    if force_share:
        argv.append("-U")
    argv.append(str(path))
    return argv


def snapshot_delete_argv(path: Path, tag: str) -> list[str]:
    return [QEMU_IMG, "snapshot", "-d", tag, str(path)]


def snapshot_create_argv(path: Path, tag: str) -> list[str]:
    return [QEMU_IMG, "snapshot", "-c", tag, str(path)]


def rebase_unsafe_argv(path: Path, base: Path, base_format: str) -> list[str]:
    """Point an overlay at another copy of the same base (no data is copied)."""
    return [QEMU_IMG, "rebase", "-u", "-f", "qcow2", "-F", base_format, "-b", str(base), str(path)]


def check_argv(path: Path, *, repair_leaks: bool = False) -> list[str]:
    argv = [QEMU_IMG, "check", "--output=json", "-f", "qcow2"]
    if repair_leaks:
        argv += ["-r", "leaks"]
    return [*argv, str(path)]


def snapshot_apply_argv(path: Path, tag: str) -> list[str]:
    """Revert the disk to an internal snapshot (its size included)."""
    return [QEMU_IMG, "snapshot", "-a", tag, str(path)]


def snapshot_list_argv(path: Path, *, force_share: bool = True) -> list[str]:
    argv = [QEMU_IMG, "snapshot", "-l"]
    if force_share:
        argv.append("-U")
    argv.append(str(path))
    return argv


def convert_argv(
    src: Path, dst: Path, *, backing: Path | None = None, backing_format: str | None = None
) -> list[str]:
    """Copy the active layer of ``src`` into a new qcow2 ``dst``; internal snapshots are dropped.

    With ``backing``, ``dst`` is an overlay on it holding only what differs from
    it (``src``'s own backing file must have the same content); without, a full copy.
    """
    argv = [QEMU_IMG, "convert", "-q", "-f", "qcow2", "-O", "qcow2"]
    if backing is not None:
        argv += ["-B", str(backing)]
        if backing_format:
            argv += ["-F", backing_format]
    argv += [str(src), str(dst)]
    return argv


# -- parsers (pure) ----------------------------------------------------------


def parse_check(text: str) -> DiskCheck:
    doc: dict[str, Any] = json.loads(text)
    return DiskCheck(
        leaks=int(doc.get("leaks", 0)),
        corruptions=int(doc.get("corruptions", 0)),
        check_errors=int(doc.get("check-errors", 0)),
    )


def parse_info(text: str) -> DiskInfo:
    """Parse ``qemu-img info --output=json`` (one image, not a chain)."""
    doc: dict[str, Any] = json.loads(text)
    specific = doc.get("format-specific", {}).get("data", {})
    return DiskInfo(
        format=str(doc["format"]),
        virtual_size=int(doc["virtual-size"]),
        actual_size=int(doc.get("actual-size", 0)),
        backing=doc.get("full-backing-filename") or doc.get("backing-filename"),
        snapshots=tuple(str(s["name"]) for s in doc.get("snapshots", [])),
        snapshot_states=tuple(
            SnapshotEntry(str(s["name"]), int(s.get("vm-state-size", 0)))
            for s in doc.get("snapshots", [])
        ),
        corrupt=bool(specific.get("corrupt", False)),
        backing_format=doc.get("backing-filename-format"),
    )


_SNAPSHOT_ROW = re.compile(
    r"^(?P<id>\S+)\s+(?P<tag>.*?)\s+(?P<vm_size>\S+ \S*B)\s+"
    r"(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s+\S+(?:\s+\S+)?\s*$"
)


def parse_snapshot_list(text: str) -> tuple[str, ...]:
    """Tags from ``qemu-img snapshot -l`` (a text table; empty output: no snapshots).

    The row is matched from its right-hand columns, so tags with inner spaces
    survive; the header lines are skipped.
    """
    tags: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("Snapshot list:", "ID ")):
            continue
        m = _SNAPSHOT_ROW.match(line)
        if m is None:
            raise ValueError(f"unexpected line in qemu-img snapshot -l output: {line!r}")
        tags.append(m.group("tag"))
    return tuple(tags)


class NotQcow2(ValueError):
    """The bytes are not a qcow2 header ketch can read."""


_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # up to and including snapshots_offset
_SNAPSHOT = struct.Struct(">QIHHIIQII")  # fixed part of one snapshot table entry


def parse_snapshot_entries(header: bytes, read_at: Any) -> tuple[SnapshotEntry, ...]:
    """The snapshot table of a qcow2 file; ``read_at(offset, size)`` reads more.

    Follows the qcow2 specification (docs/interop/qcow2.txt in QEMU).
    """
    if len(header) < _HEADER.size:
        raise NotQcow2("file too short for a qcow2 header")
    fields = _HEADER.unpack_from(header)
    magic, version = fields[0], fields[1]
    if magic != b"QFI\xfb" or version not in (2, 3):
        raise NotQcow2("not a qcow2 v2/v3 file")
    nb_snapshots, snapshots_offset = fields[11], fields[12]
    entries: list[SnapshotEntry] = []
    offset = snapshots_offset
    for _ in range(nb_snapshots):
        fixed = read_at(offset, _SNAPSHOT.size)
        if len(fixed) < _SNAPSHOT.size:
            raise NotQcow2("snapshot table truncated")
        entry = _SNAPSHOT.unpack(fixed)
        id_size, name_size, extra_size = entry[2], entry[3], entry[8]
        extra = read_at(offset + _SNAPSHOT.size, extra_size)
        var = read_at(offset + _SNAPSHOT.size + extra_size, id_size + name_size)
        if len(var) < id_size + name_size or len(extra) < extra_size:
            raise NotQcow2("snapshot table truncated")
        # qcow2 v3 keeps a 64-bit state size first in the extra data.
        state = struct.unpack(">Q", extra[:8])[0] if extra_size >= 8 else entry[7]
        entries.append(SnapshotEntry(var[id_size:].decode("utf-8", "replace"), state))
        length = _SNAPSHOT.size + extra_size + id_size + name_size
        offset += (length + 7) & ~7
    return tuple(entries)


def parse_snapshot_table(header: bytes, read_at: Any) -> tuple[str, ...]:
    """Snapshot names from a qcow2 header (see :func:`parse_snapshot_entries`)."""
    return tuple(e.name for e in parse_snapshot_entries(header, read_at))


# -- runners -----------------------------------------------------------------


def read_snapshots(path: Path) -> tuple[SnapshotEntry, ...]:
    """The snapshot table of a qcow2 file, read from its header (no process).

    Raises OSError when the file cannot be read, NotQcow2 when it is not qcow2.
    """
    with path.open("rb") as f:

        def read_at(offset: int, size: int) -> bytes:
            f.seek(offset)
            return f.read(size)

        return parse_snapshot_entries(f.read(_HEADER.size), read_at)


def read_snapshot_names(path: Path) -> tuple[str, ...]:
    """Snapshot names of a qcow2 file (see :func:`read_snapshots`)."""
    return tuple(e.name for e in read_snapshots(path))


async def info(path: Path, *, timeout: float = 30.0, fmt: str | None = None) -> DiskInfo:
    """``qemu-img info`` with force-share, so it works while QEMU holds the image."""
    done = await run(info_argv(path, fmt=fmt), timeout=timeout)
    return parse_info(done.text)


async def create_overlay(path: Path, base: Path, base_format: str, size: int | None) -> None:
    await run(create_overlay_argv(path, base, base_format, size))


async def resize(path: Path, size: int) -> None:
    await run(resize_argv(path, size))


async def snapshot_delete(path: Path, tag: str, *, timeout: float = 60.0) -> None:
    await run(snapshot_delete_argv(path, tag), timeout=timeout)


async def check(path: Path, *, repair_leaks: bool = False, timeout: float = 300.0) -> DiskCheck:
    """Check (and optionally repair leaks of) a qcow2 that no QEMU holds."""
    done = await run(check_argv(path, repair_leaks=repair_leaks), timeout=timeout, check=False)
    if done.returncode in (0, 2, 3) and done.stdout.strip():
        return parse_check(done.text)
    raise HostCommandError(list(done.argv), done.returncode, done.stderr.decode("utf-8", "replace"))


async def rebase_unsafe(path: Path, base: Path, base_format: str) -> None:
    await run(rebase_unsafe_argv(path, base, base_format))


async def snapshot_create(path: Path, tag: str, *, timeout: float = 60.0) -> None:
    await run(snapshot_create_argv(path, tag), timeout=timeout)


async def snapshot_apply(path: Path, tag: str, *, timeout: float = 300.0) -> None:
    await run(snapshot_apply_argv(path, tag), timeout=timeout)


async def snapshot_list(path: Path, *, timeout: float = 30.0) -> tuple[str, ...]:
    """Tags of a qcow2 file through ``qemu-img snapshot -l -U`` (works while QEMU holds it)."""
    return parse_snapshot_list((await run(snapshot_list_argv(path), timeout=timeout)).text)


async def convert(
    src: Path,
    dst: Path,
    *,
    backing: Path | None = None,
    backing_format: str | None = None,
    timeout: float = 3600.0,
) -> None:
    await run(
        convert_argv(src, dst, backing=backing, backing_format=backing_format), timeout=timeout
    )
