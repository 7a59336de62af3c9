"""Partition tables: the GPT ketch writes, what it reads back, which firmware a disk needs.

The reader is also run on real images: a raw disk laid out here is converted
to qcow2 with the real ``qemu-img`` and read through ``qemu-img dd``.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from ketch.host import partitions
from ketch.host.partitions import Partition

TOTAL = 2 * 1024**3 // 512
GUID = uuid.UUID("12345678-1234-5678-1234-567812345678")
ROOT = Partition(1, str(partitions.LINUX_FS), 262144, TOTAL - 34 - 262144 + 1, "root")
BIOS = Partition(14, str(partitions.BIOS_BOOT), 2048, 6144, "bios-boot")
ESP = Partition(15, str(partitions.ESP), 8192, 253952, "esp")


def _disk(parts: tuple[Partition, ...], *, code: bytes = b"") -> tuple[bytes, bytes]:
    head, tail = partitions.gpt(TOTAL, parts, disk_guid=GUID)
    return partitions.protective_mbr(TOTAL, boot_code=code) + head, tail


def test_gpt_round_trip() -> None:
    head, tail = _disk((ROOT, BIOS, ESP), code=b"\xeb\x63")
    assert len(head) == 34 * 512 and len(tail) == 33 * 512
    table = partitions.parse_table(head)
    assert table.kind == "gpt" and table.boot_code
    got = {p.number: p for p in table.partitions}
    assert sorted(got) == [1, 14, 15]
    for want in (ROOT, BIOS, ESP):
        p = got[want.number]
        assert p.type == want.type.upper()  # GUIDs read back in upper case, as sfdisk shows them
        assert (p.start, p.sectors, p.name) == (want.start, want.sectors, want.name)


def test_gpt_headers_point_at_each_other_and_checksum() -> None:
    head, tail = _disk((ROOT,))
    primary, backup = head[512:1024], tail[-512:]
    assert primary[:8] == backup[:8] == b"EFI PART"
    cur, other, first, last = struct.unpack_from("<QQQQ", primary, 24)
    assert (cur, other, first, last) == (1, TOTAL - 1, 34, TOTAL - 34)
    cur, other = struct.unpack_from("<QQ", backup, 24)
    assert (cur, other) == (TOTAL - 1, 1)
    assert struct.unpack_from("<Q", backup, 72) == (TOTAL - 33,)  # its entries precede it
    assert tail[: 32 * 512] == head[1024:]  # same entries
    for header in (primary, backup):
        blank = bytearray(header[:92])
        crc = struct.unpack_from("<I", blank, 16)[0]
        struct.pack_into("<I", blank, 16, 0)
        assert zlib.crc32(blank) == crc


def test_protective_mbr() -> None:
    sector = partitions.protective_mbr(TOTAL, boot_code=b"\xfa" * 440, signature=0x4B455443)
    assert sector[:440] == b"\xfa" * 440 and sector[510:] == b"\x55\xaa"
    assert struct.unpack_from("<I", sector, 440) == (0x4B455443,)
    assert sector[446 + 4] == 0xEE
    assert struct.unpack_from("<II", sector, 446 + 8) == (1, TOTAL - 1)
    big = partitions.protective_mbr(1 << 33)
    assert struct.unpack_from("<I", big, 446 + 12) == (0xFFFFFFFF,)
    with pytest.raises(ValueError, match="440"):
        partitions.protective_mbr(TOTAL, boot_code=bytes(441))


@pytest.mark.parametrize(
    ("parts", "words"),
    [
        ((ROOT, Partition(2, str(partitions.ESP), 262144 + 10, 100)), "overlap"),
        ((Partition(1, str(partitions.ESP), 10, 100),), "outside"),
        ((Partition(1, str(partitions.ESP), 2048, TOTAL),), "outside"),
        ((ROOT, Partition(1, str(partitions.ESP), 2048, 100)), "distinct"),
        ((Partition(129, str(partitions.ESP), 2048, 100),), "distinct"),
    ],
)
def test_gpt_refuses_bad_layouts(parts: tuple[Partition, ...], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        partitions.gpt(TOTAL, parts, disk_guid=GUID)


def test_a_damaged_gpt_reads_as_its_protective_mbr() -> None:
    head, _ = _disk((ROOT, ESP))
    damaged = bytearray(head)
    damaged[1024 + 200] ^= 0xFF  # an entry byte: the entries' checksum no longer matches
    table = partitions.parse_table(bytes(damaged))
    assert table.kind == "mbr" and [p.type for p in table.partitions] == ["0xEE"]
    assert partitions.firmware_support(table) == frozenset()


def test_mbr_disks() -> None:
    sector = bytearray(512)
    sector[0] = 0xEB
    sector[446:462] = bytes([0x80, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 100000)
    sector[462:478] = bytes([0, 0, 0, 0, 0xEF, 0, 0, 0]) + struct.pack("<II", 102048, 1000)
    sector[510:] = b"\x55\xaa"
    table = partitions.parse_table(bytes(sector))
    assert table.kind == "mbr" and table.boot_code
    assert [(p.number, p.type, p.start) for p in table.partitions] == [
        (1, "0x83", 2048),
        (2, "0xEF", 102048),
    ]
    assert partitions.firmware_support(table) == {"bios", "uefi"}


def test_what_boots_what() -> None:
    both, _ = _disk((ROOT, BIOS, ESP), code=b"\xeb")
    uefi_only, _ = _disk((ROOT, ESP))
    bios_only, _ = _disk((ROOT, BIOS), code=b"\xeb")
    support = partitions.firmware_support
    assert support(partitions.parse_table(both)) == {"bios", "uefi"}
    assert support(partitions.parse_table(uefi_only)) == {"uefi"}
    assert support(partitions.parse_table(bios_only)) == {"bios"}
    assert support(partitions.parse_table(bytes(34 * 512))) == frozenset()  # no table at all
    assert partitions.parse_table(b"").kind == "none"


def test_dd_argv() -> None:
    assert partitions.dd_argv(Path("/v/d.qcow2"), "qcow2", Path("/t/h.raw")) == [
        "qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=34",
        "if=/v/d.qcow2", "of=/t/h.raw",
    ]  # fmt: skip


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img")
def test_read_table_of_a_real_uefi_only_qcow2_and_its_overlay(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    head, tail = _disk((ROOT, ESP))
    with raw.open("wb") as f:
        f.truncate(TOTAL * 512)
        f.write(head)
        f.seek((TOTAL - 33) * 512)
        f.write(tail)
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(qcow2), str(overlay)],
        check=True,
    )
    for path in (qcow2, overlay):
        table = asyncio.run(partitions.read_table(path, "qcow2"))
        assert table.kind == "gpt" and not table.boot_code
        assert partitions.firmware_support(table) == {"uefi"}
    assert asyncio.run(partitions.read_table(raw, "raw")).kind == "gpt"
