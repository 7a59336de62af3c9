"""Partition tables: a GPT writer and an MBR/GPT reader (pure), and reading a disk's.

ketch writes the GUID partition table of the ``debian-12`` image itself
(:func:`gpt`), as it writes that image's boot sectors, so building it needs
no partitioning tool; and it reads the table of any image it launches
(:func:`read_table`: ``qemu-img dd`` of the first sectors, then
:func:`parse_table`) to tell which firmware can boot it
(:func:`firmware_support`): boot code in the first sector means BIOS, an EFI
system partition means UEFI, as Debian's and Ubuntu's cloud images carry both.

The layout follows the UEFI specification (chapter 5): a protective MBR, the
primary header in LBA 1 and 128 entries of 128 bytes from LBA 2, the backup
entries and header at the end of the disk.
"""

from __future__ import annotations

import itertools
import struct
import tempfile
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import KetchError
from ketch.host.run import run

SECTOR = 512
ENTRIES = 128
ENTRY_SIZE = 128
ENTRY_SECTORS = ENTRIES * ENTRY_SIZE // SECTOR  # 32
HEAD_SECTORS = 2 + ENTRY_SECTORS  # protective MBR, header, entries: 34
SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_SIZE = 92

LINUX_FS = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
BIOS_BOOT = uuid.UUID("21686148-6449-6E6F-744E-656564454649")
ESP = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
MBR_GPT_PROTECTIVE = 0xEE
MBR_ESP = 0xEF
BOOT_CODE = 440  # bytes of boot code before the MBR's disk signature


@dataclass(frozen=True)
class Partition:
    """One partition: its number (1-based), type, first sector and length in sectors."""

    number: int
    type: str  # a GPT type GUID (upper case) or an MBR type as "0x83"
    start: int
    sectors: int
    name: str = ""
    guid: uuid.UUID | None = None


@dataclass(frozen=True)
class Table:
    """What the first sectors of a disk say."""

    kind: str  # "gpt", "mbr" or "none"
    partitions: tuple[Partition, ...] = ()
    boot_code: bool = False  # the first sector carries code (BIOS can boot it)


# -- writing (pure) ----------------------------------------------------------


def _entry(p: Partition) -> bytes:
    guid = p.guid or uuid.uuid5(uuid.NAMESPACE_OID, f"ketch-partition-{p.number}-{p.type}")
    name = p.name.encode("utf-16-le")[:72].ljust(72, b"\0")
    return (
        uuid.UUID(p.type).bytes_le
        + guid.bytes_le
        + struct.pack("<QQQ", p.start, p.start + p.sectors - 1, 0)
        + name
    )


def _header(
    *, current: int, backup: int, entries_at: int, total: int, disk_guid: uuid.UUID, crc: int
) -> bytes:
    head = bytearray(
        struct.pack(
            "<8sIIIIQQQQ16sQIII",
            SIGNATURE,
            REVISION,
            HEADER_SIZE,
            0,
            0,
            current,
            backup,
            HEAD_SECTORS,
            total - HEAD_SECTORS,
            disk_guid.bytes_le,
            entries_at,
            ENTRIES,
            ENTRY_SIZE,
            crc,
        )
    )
    struct.pack_into("<I", head, 16, zlib.crc32(head))
    return bytes(head).ljust(SECTOR, b"\0")


def protective_mbr(total_sectors: int, *, boot_code: bytes = b"", signature: int = 0) -> bytes:
    """Sector 0 of a GPT disk: one 0xEE entry over the whole disk, optional boot code."""
    if len(boot_code) > BOOT_CODE:
        raise ValueError("boot code is longer than 440 bytes")
    out = bytearray(SECTOR)
    out[: len(boot_code)] = boot_code
    struct.pack_into("<IH", out, BOOT_CODE, signature, 0)
    size = min(total_sectors - 1, 0xFFFFFFFF)
    out[446:462] = bytes([0, 0, 2, 0, MBR_GPT_PROTECTIVE, 0xFF, 0xFF, 0xFF]) + struct.pack(
        "<II", 1, size
    )
    out[510:512] = b"\x55\xaa"
    return bytes(out)


def gpt(
    total_sectors: int, partitions: Sequence[Partition], *, disk_guid: uuid.UUID
) -> tuple[bytes, bytes]:
    """(sectors 1-33, the last 33 sectors): the primary and the backup table.

    The protective MBR (sector 0) is :func:`protective_mbr`'s.
    """
    last_usable = total_sectors - HEAD_SECTORS
    numbers = [p.number for p in partitions]
    if len(set(numbers)) != len(numbers) or not all(0 < n <= ENTRIES for n in numbers):
        raise ValueError("partition numbers must be distinct, from 1 to 128")
    spans = sorted((p.start, p.start + p.sectors - 1) for p in partitions)
    for (_, end), (start, _) in itertools.pairwise(spans):
        if start <= end:
            raise ValueError("partitions overlap")
    if spans and (spans[0][0] < HEAD_SECTORS or spans[-1][1] > last_usable):
        raise ValueError("a partition lies outside the usable sectors")
    table = bytearray(ENTRIES * ENTRY_SIZE)
    for p in partitions:
        table[(p.number - 1) * ENTRY_SIZE : p.number * ENTRY_SIZE] = _entry(p)
    crc = zlib.crc32(table)
    backup_at = total_sectors - 1
    primary = _header(
        current=1, backup=backup_at, entries_at=2, total=total_sectors, disk_guid=disk_guid, crc=crc
    )
    backup = _header(
        current=backup_at,
        backup=1,
        entries_at=backup_at - ENTRY_SECTORS,
        total=total_sectors,
        disk_guid=disk_guid,
        crc=crc,
    )
    return primary + bytes(table), bytes(table) + backup


# -- reading (pure) ----------------------------------------------------------


def parse_table(head: bytes) -> Table:
    """The partition table in a disk's first sectors (at least 34 for a GPT).

    A GPT whose header or entry checksums do not match is read as the MBR
    that protects it (one 0xEE partition).
    """
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        return Table("none")
    boot_code = any(head[:BOOT_CODE])
    mbr = []
    for i in range(4):
        raw = head[446 + 16 * i : 462 + 16 * i]
        kind = raw[4]
        start, count = struct.unpack_from("<II", raw, 8)
        if kind and count:
            mbr.append(Partition(i + 1, f"0x{kind:02X}", start, count))
    if any(p.type == f"0x{MBR_GPT_PROTECTIVE:02X}" for p in mbr):
        found = _parse_gpt(head)
        if found is not None:
            return Table("gpt", found, boot_code)
    return Table("mbr", tuple(mbr), boot_code)


def _parse_gpt(head: bytes) -> tuple[Partition, ...] | None:
    header = head[SECTOR : SECTOR + HEADER_SIZE]
    if len(header) < HEADER_SIZE or header[:8] != SIGNATURE:
        return None
    size = struct.unpack_from("<I", header, 12)[0]
    crc = struct.unpack_from("<I", header, 16)[0]
    blank = bytearray(head[SECTOR : SECTOR + size])
    struct.pack_into("<I", blank, 16, 0)
    if size < HEADER_SIZE or zlib.crc32(blank) != crc:
        return None
    entries_at, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    table = head[entries_at * SECTOR : entries_at * SECTOR + count * entry_size]
    if entry_size < ENTRY_SIZE or len(table) != count * entry_size:
        return None
    if zlib.crc32(table) != entries_crc:
        return None
    out = []
    for i in range(count):
        raw = table[i * entry_size : i * entry_size + ENTRY_SIZE]
        kind = uuid.UUID(bytes_le=raw[:16])
        if kind.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        name = raw[56:128].decode("utf-16-le", "replace").rstrip("\0")
        out.append(
            Partition(
                i + 1,
                str(kind).upper(),
                first,
                last - first + 1,
                name,
                uuid.UUID(bytes_le=raw[16:32]),
            )
        )
    return tuple(out)


def firmware_support(table: Table) -> frozenset[str]:
    """The firmware that can boot a disk: ``bios``, ``uefi``, both, or none known."""
    support = set()
    if table.boot_code:
        support.add("bios")
    if any(p.type in (str(ESP).upper(), f"0x{MBR_ESP:02X}") for p in table.partitions):
        support.add("uefi")
    return frozenset(support)


# -- reading a disk ------------------------------------------------------------


def dd_argv(disk: Path, fmt: str, out: Path, *, sectors: int = HEAD_SECTORS) -> list[str]:
    """``qemu-img dd`` of the first sectors of any image (through its backing chain)."""
    return [
        "qemu-img", "dd", "-f", fmt, "-O", "raw", f"bs={SECTOR}", f"count={sectors}",
        f"if={disk}", f"of={out}",
    ]  # fmt: skip


async def read_table(disk: Path, fmt: str, *, timeout: float = 30.0) -> Table:
    """The partition table of an image file (qcow2, raw...)."""
    with tempfile.TemporaryDirectory(prefix="ketch-parts-") as tmp:
        out = Path(tmp) / "head.raw"
        await run(dd_argv(disk, fmt, out), timeout=timeout)
        try:
            return parse_table(out.read_bytes())
        except OSError as exc:
            raise KetchError(f"cannot read the first sectors of {disk}: {exc}") from exc
