"""Making the ``debian-12`` disk: GRUB's boot sectors patched as
``grub-bios-setup`` would (pure), the partition tables and EFI system partition
written into the raw disk, and the argv of the tools that fill and convert it."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from ketch.errors import ImageError
from ketch.host import partitions
from ketch.host.partitions import Partition
from ketch.images.debian.recipe import (
    BIOS_BOOT,
    BLOCK_SIZE,
    BLOCKLIST,
    BOOT_DRIVE,
    BOOT_DRIVE_CHECK,
    BOOT_KERNEL_SECTOR,
    CORE_SEGMENT,
    DISK_GUID,
    DISK_SIGNATURE,
    EFI_LOADER,
    ESP,
    ESP_LABEL,
    LAYOUT,
    ROOT,
    ROOT_LABEL,
    SECTOR,
    TOTAL_SECTORS,
)


def boot_code(boot_img: bytes, *, core_sector: int = BIOS_BOOT.start) -> bytes:
    """GRUB's ``boot.img`` code for the protective MBR (its first 440 bytes).

    As ``grub-bios-setup`` does for a hard disk: the code is told where
    ``core.img`` starts and to trust the BIOS's boot drive (0xff), and its
    floppy workaround is turned off.
    """
    if len(boot_img) != SECTOR or boot_img[510:512] != b"\x55\xaa":
        raise ImageError("GRUB's boot.img is not a 512-byte boot sector")
    out = bytearray(boot_img[: partitions.BOOT_CODE])
    struct.pack_into("<Q", out, BOOT_KERNEL_SECTOR, core_sector)
    out[BOOT_DRIVE] = 0xFF
    out[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(out)


def patch_core(core_img: bytes, *, core_sector: int = BIOS_BOOT.start) -> bytes:
    """``core.img`` with its first sector's blocklist naming where the rest lies."""
    if len(core_img) < 2 * SECTOR:
        raise ImageError("GRUB's core.img is too small")
    rest = -(-(len(core_img) - SECTOR) // SECTOR)
    out = bytearray(core_img)
    segment = struct.unpack_from("<H", out, BLOCKLIST + 10)[0]
    if segment != CORE_SEGMENT:
        raise ImageError("GRUB's core.img does not start with diskboot.img")
    struct.pack_into("<QHH", out, BLOCKLIST, core_sector + 1, rest, CORE_SEGMENT)
    return bytes(out)


def core_fits(core_img: bytes, *, room: Partition = BIOS_BOOT) -> bool:
    """Does ``core.img`` fit in the BIOS boot partition?"""
    return -(-len(core_img) // SECTOR) <= room.sectors


def mkfs_argv(root: Path, raw: Path, *, part: Partition = ROOT) -> list[str]:
    """mkfs.ext4 of the partition, filled from ``root``, written into ``raw`` at its offset.

    GRUB 2.06 cannot read filesystems with ``metadata_csum_seed`` or
    ``orphan_file``; they are turned off should mke2fs.conf turn them on.
    """
    blocks = part.sectors * SECTOR // BLOCK_SIZE
    return [
        "mkfs.ext4", "-F", "-q", "-L", ROOT_LABEL, "-b", str(BLOCK_SIZE), "-T", "default",
        "-O", "^metadata_csum_seed,^orphan_file",
        "-E", f"offset={part.start * SECTOR}", "-d", str(root), str(raw), str(blocks),
    ]  # fmt: skip


def esp_argvs(esp: Path, loader: Path, *, part: Partition = ESP) -> list[list[str]]:
    """The EFI system partition as a FAT image file, with GRUB as ``EFI_LOADER``."""
    kib = part.sectors * SECTOR // 1024
    target = f"::{EFI_LOADER}"
    return [
        ["mkfs.fat", "-C", "-n", ESP_LABEL, "-i", f"{DISK_SIGNATURE:08X}", str(esp), str(kib)],
        ["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"],
        ["mcopy", "-i", str(esp), str(loader), target],
    ]


def convert_argv(raw: Path, qcow2: Path, *, zstd: bool = True) -> list[str]:
    argv = ["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2"]
    if zstd:
        argv += ["-o", "compression_type=zstd"]
    return [*argv, str(raw), str(qcow2)]


def write_boot_area(raw: Path, boot_img: bytes, core_img: bytes, esp: Path) -> None:
    """The partition tables, GRUB for BIOS and the EFI system partition, into ``raw``."""
    head, tail = partitions.gpt(TOTAL_SECTORS, LAYOUT, disk_guid=DISK_GUID)
    mbr = partitions.protective_mbr(
        TOTAL_SECTORS, boot_code=boot_code(boot_img), signature=DISK_SIGNATURE
    )
    with raw.open("r+b") as f:
        f.write(mbr + head)
        f.seek(BIOS_BOOT.start * SECTOR)
        f.write(patch_core(core_img))
        f.seek(ESP.start * SECTOR)
        with esp.open("rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
        f.seek((TOTAL_SECTORS - partitions.ENTRY_SECTORS - 1) * SECTOR)
        f.write(tail)
    esp.unlink()
