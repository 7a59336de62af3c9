"""The built-in ``debian-12`` cloud image: Debian 12 built offline with debootstrap.

:func:`build_debian` makes a real cloud image, booted by firmware like
Debian's and Ubuntu's published ones, from nothing but the Debian mirror the
host's apt already uses:

1. ``debootstrap --variant=minbase bookworm`` into a work directory;
2. in a chroot, ``apt-get install --no-install-recommends`` of :data:`PACKAGES`
   at the versions the key was made from: systemd, openssh-server, cloud-init
   (NoCloud), cloud-guest-utils (``growpart``), the cloud kernel, the QEMU
   guest agent, sudo and GRUB's BIOS and UEFI modules.  The initramfs (initramfs-tools,
   ``MODULES=most``) is told to carry the virtio block drivers, which the
   cloud kernel has as modules;
3. ketch's configuration (:data:`CONFIG_FILES`): cloud-init's default user is
   ``ubuntu`` with passwordless sudo, as on Ubuntu's images, the datasources
   are NoCloud then None, networking is rendered for systemd-networkd, the
   locale is C.UTF-8 (nothing to generate at first boot); the root filesystem
   is mounted by its label ``cloudimg-rootfs``, the EFI system partition at
   ``/boot/efi`` (:data:`FSTAB`); SSH host keys, the machine id
   and apt's lists are removed so each instance gets its own;
4. the disk, without mounting anything or using a loop device, laid out as
   Debian's own cloud images are, so that it boots through SeaBIOS and
   through UEFI (OVMF) alike: a GUID partition table (:data:`LAYOUT`,
   written by :mod:`ketch.host.partitions`) with a BIOS boot partition
   (14), an EFI system partition (15) and the root partition (1) to the end
   of a 2 GiB disk.  The root is an ext4 filesystem made from the tree with
   ``mkfs.ext4 -d`` at its offset.  For BIOS, GRUB's ``boot.img`` goes into
   the protective MBR and its ``core.img`` into the BIOS boot partition --
   what ``grub-install`` would write (:func:`boot_code`, :func:`patch_core`);
   for UEFI, GRUB's EFI image is the removable-media bootloader
   ``EFI/BOOT/BOOTX64.EFI`` of a FAT filesystem (``mkfs.fat``, ``mcopy``),
   so firmware with empty variables finds it.  Both GRUB images find the
   root partition by its label and read the same ``grub.cfg``;
5. ``qemu-img convert -c`` into a compressed qcow2 (zstd when QEMU has it).

Each chroot step runs in fresh mount and PID namespaces (``unshare``), so the
``/proc``, ``/sys`` and ``/run`` mounted for it, and any process a package
script leaves behind, end with the step, however the build ends.

The result is ``images_dir/debian-12/<key>/`` with ``disk.qcow2`` and
``manifest.json`` (every installed package and version, the disk's sha256),
renamed into place once complete, under a lock.  There is no kernel beside
the disk: ketch boots it through SeaBIOS, or OVMF with ``--firmware uefi``.
The key hashes the Debian sources apt uses (mirror, suite, component), the
candidate versions of :data:`PACKAGES` and this module (the recipe), so the
image is rebuilt only when one of them changes, or when asked (``force``).

Host needs: root (debootstrap, chroot, namespaces), ``debootstrap``,
``setpriv``, ``unshare`` and ``chroot`` (util-linux, coreutils), ``apt-cache`` and
``dpkg-query``, ``mkfs.ext4`` (e2fsprogs), ``mkfs.fat`` (dosfstools), ``mmd``
and ``mcopy`` (mtools), ``qemu-img`` (qemu-utils).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch.errors import HostCommandError, ImageError, KetchError, Timeout
from ketch.host import partitions
from ketch.host.partitions import Partition
from ketch.host.run import Completed, run
from ketch.images.built import BuiltImage
from ketch.images.built import file_sha256 as _sha256
from ketch.images.tiny import parse_policy
from ketch.model import BootSpec, ImageInfo
from ketch.progress import NULL, Reporter

NAME = "debian-12"
SUITE = "bookworm"
ARCH = "amd64"
ORIGIN = "Debian"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DISK = "disk.qcow2"
IMAGE_FILES = (DISK,)
FAILED_LOG = "last-failed-build.log"  # beside the image directories
FIRMWARE = "bios"

SECTOR = 512
DISK_SIZE = 2 * 1024**3
TOTAL_SECTORS = DISK_SIZE // SECTOR
BLOCK_SIZE = 4096
ROOT_LABEL = "cloudimg-rootfs"
ESP_LABEL = "UEFI"
# Disk signature in the protective MBR ("KETC"), and the GPT's disk GUID.
DISK_SIGNATURE = 0x4B455443
DISK_GUID = uuid.uuid5(uuid.NAMESPACE_OID, "ketch-debian-12-disk")
# Debian's cloud image layout: partition numbers 14 and 15 keep the root at 1.
BIOS_BOOT = Partition(14, str(partitions.BIOS_BOOT), 2048, 6144, "bios-boot")
ESP = Partition(15, str(partitions.ESP), 8192, 253952, "esp")
ROOT = Partition(
    1,
    str(partitions.LINUX_FS),
    262144,
    TOTAL_SECTORS - partitions.HEAD_SECTORS - 262144 + 1,
    "root",
)
LAYOUT = (ROOT, BIOS_BOOT, ESP)
CMDLINE = f"root=LABEL={ROOT_LABEL} ro console=ttyS0,115200n8"

KERNEL_META = "linux-image-cloud-amd64"
PACKAGES = (
    KERNEL_META,
    "initramfs-tools",
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "cloud-init",
    "cloud-guest-utils",
    "qemu-guest-agent",
    "sudo",
    "e2fsprogs",
    "fdisk",
    "iproute2",
    "netbase",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
)

# GRUB's core images, BIOS and UEFI: what they need to find the ext4 root
# partition by its label (GRUB_EARLY_CFG, built in), read grub.cfg there,
# boot Linux and talk on the serial port.
GRUB_MODULES = (
    "part_gpt", "part_msdos", "ext2", "normal", "linux", "configfile", "echo",
    "test", "search", "search_label", "serial", "terminal", "gzio",
)  # fmt: skip
GRUB_BIOS_MODULES = ("biosdisk", *GRUB_MODULES)
GRUB_EFI_MODULES = ("fat", "efi_gop", *GRUB_MODULES)
GRUB_LIB = "usr/lib/grub/i386-pc"
GRUB_EFI_LIB = "usr/lib/grub/x86_64-efi"
GRUB_DIR = "boot/grub"
GRUB_EARLY = "boot/grub/early.cfg"
CORE_IMG = "boot/grub/i386-pc/core.img"
BOOT_IMG = "boot/grub/i386-pc/boot.img"
CORE_EFI = "boot/grub/x86_64-efi/core.efi"
EFI_LOADER = "/EFI/BOOT/BOOTX64.EFI"  # the removable-media path: no boot entry needed
GRUB_EARLY_CFG = f"""\
search --no-floppy --label {ROOT_LABEL} --set=root
set prefix=($root)/boot/grub
"""
# Offsets in GRUB's boot.img and diskboot.img (grub/include/grub/i386/pc/boot.h).
BOOT_KERNEL_SECTOR = 0x5C  # u64: where core.img starts
BOOT_DRIVE = 0x64  # u8: 0xff = the drive the BIOS booted from
BOOT_DRIVE_CHECK = 0x66  # jmp over a workaround for buggy BIOSes; nop'ed on hard disks
BLOCKLIST = SECTOR - 12  # in core.img's first sector: start u64, length u16, segment u16
CORE_SEGMENT = 0x820

CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Written before packages are installed.
PRE_INSTALL_FILES: tuple[tuple[str, int, str], ...] = (
    ("usr/sbin/policy-rc.d", 0o755, "#!/bin/sh\n# ketch build: start no services\nexit 101\n"),
    (
        "etc/initramfs-tools/conf.d/ketch.conf",
        0o644,
        "# ketch: every storage driver; gzip (no zstd)\nMODULES=most\nCOMPRESS=gzip\n",
    ),
    (
        "usr/share/initramfs-tools/modules.d/ketch-virtio.conf",
        0o644,
        "# ketch: the cloud kernel has these as modules; the root disk needs them\n"
        "virtio_pci\nvirtio_blk\nvirtio_scsi\next4\n",
    ),
)

CLOUD_CFG = """\
# ketch's debian-12 image: NoCloud first, the 'ubuntu' default user with
# passwordless sudo (as on Ubuntu's cloud images), systemd-networkd.
datasource_list: [NoCloud, None]
manage_etc_hosts: true
locale: C.UTF-8
grub_dpkg:
  enabled: false
system_info:
  default_user:
    name: ubuntu
    gecos: Ubuntu
    lock_passwd: true
    groups: [adm, audio, cdrom, dialout, dip, floppy, netdev, plugdev, sudo, video]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
  network:
    renderers: [networkd]
"""

GRUB_CFG = f"""\
# ketch's debian-12 image.  /vmlinuz and /initrd.img follow the installed
# kernel, so kernel upgrades in the guest need no update-grub.
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
menuentry 'Debian GNU/Linux 12' {{
  linux /vmlinuz {CMDLINE}
  initrd /initrd.img
}}
"""

# The root, and the EFI system partition where Debian's images mount it (for
# grub-install and efibootmgr in the guest); nofail: a guest never stops
# booting over it, and no fsck (the image has no dosfstools).
FSTAB = (
    f"LABEL={ROOT_LABEL}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n"
    f"LABEL={ESP_LABEL}\t/boot/efi\tvfat\tumask=0077,nofail\t0\t0\n"
)

HOSTS = """\
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
"""

# Written after packages are installed.
CONFIG_FILES: tuple[tuple[str, int, str], ...] = (
    ("etc/cloud/cloud.cfg.d/90_ketch.cfg", 0o644, CLOUD_CFG),
    ("etc/fstab", 0o644, FSTAB),
    ("etc/hostname", 0o644, "debian\n"),
    ("etc/hosts", 0o644, HOSTS),
    ("etc/default/locale", 0o644, "LANG=C.UTF-8\n"),
    ("boot/grub/grub.cfg", 0o644, GRUB_CFG),
    (GRUB_EARLY, 0o644, GRUB_EARLY_CFG),
)

INSTALL_SCRIPT = """\
apt-get update -q
apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade
apt-get -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install "$@"
"""

CONFIGURE_SCRIPT = f"""\
groupadd --system --force netdev
systemctl enable systemd-networkd.service systemd-resolved.service
# No first-boot wizard on the serial console; no LVM scrubbing.
systemctl mask systemd-firstboot.service
systemctl disable e2scrub_reap.service e2scrub_all.timer
mkdir -p /boot/grub/i386-pc /boot/grub/x86_64-efi /boot/efi
cp /{GRUB_LIB}/*.mod /{GRUB_LIB}/*.lst /{GRUB_LIB}/boot.img /boot/grub/i386-pc/
cp /{GRUB_EFI_LIB}/*.mod /{GRUB_EFI_LIB}/*.lst /boot/grub/x86_64-efi/
grub-mkimage -O i386-pc -o /{CORE_IMG} -c /{GRUB_EARLY} -p /boot/grub \
  {" ".join(GRUB_BIOS_MODULES)}
grub-mkimage -O x86_64-efi -o /{CORE_EFI} -c /{GRUB_EARLY} -p /boot/grub \
  {" ".join(GRUB_EFI_MODULES)}
apt-get clean
rm -rf /var/lib/apt/lists/* /var/lib/cloud /var/cache/debconf/*-old /var/lib/dpkg/*-old
rm -f /etc/ssh/ssh_host_* /var/lib/dbus/machine-id /usr/sbin/policy-rc.d
: > /etc/machine-id
find /var/log -type f -delete
"""

# Runs the command after "--" chrooted in $1, with /proc, /sys (read-only),
# /run and /tmp mounted: under ``unshare`` those mounts live and die with it.
CHROOT_SCRIPT = f"""\
root=$1; shift
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
exec chroot "$root" /usr/bin/env -i PATH={CHROOT_PATH} HOME=/root LC_ALL=C.UTF-8 \
  DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
"""

_TOOL_HINTS = {
    "apt-cache": "install apt, then run 'apt-get update'",
    "dpkg-query": "install dpkg",
    "debootstrap": "install debootstrap (scripts/install does)",
    "setpriv": "install util-linux",
    "unshare": "install util-linux",
    "mkfs.ext4": "install e2fsprogs",
    "mkfs.fat": "install dosfstools",
    "mmd": "install mtools",
    "mcopy": "install mtools",
    "qemu-img": "install qemu-utils",
}


# ---- pure parts: sources, key, manifest ---------------------------------


@dataclass(frozen=True, order=True)
class AptSource:
    """One Debian package index apt uses: ``deb URI SUITE COMPONENT``."""

    uri: str
    suite: str
    component: str


_POLICY_INDEX = re.compile(r"^\s*-?\d+\s+(\S+)\s+(\S+)/(\S+)\s+(\S+)\s+Packages\s*$")


def parse_sources(text: str, *, arch: str = ARCH, origin: str = ORIGIN) -> list[AptSource]:
    """The ``origin`` indexes of ``arch`` that ``apt-cache policy`` (no package) lists.

    Only the suites of :data:`SUITE` (``bookworm``, ``bookworm-updates``,
    ``bookworm-security``...) count; other repositories apt knows are ignored.
    """
    found: set[AptSource] = set()
    pending: tuple[AptSource, str] | None = None
    for line in text.splitlines():
        match = _POLICY_INDEX.match(line)
        if match:
            uri, suite, component, index_arch = match.groups()
            pending = (AptSource(uri.rstrip("/"), suite, component), index_arch)
            continue
        stripped = line.strip()
        if pending is not None and stripped.startswith("release "):
            fields = dict(
                f.split("=", 1) for f in stripped[len("release ") :].split(",") if "=" in f
            )
            source, index_arch = pending
            suite_ok = source.suite == SUITE or source.suite.startswith(SUITE + "-")
            if fields.get("o") == origin and index_arch == arch and suite_ok:
                found.add(source)
            pending = None
    return sorted(found)


def sources_list(sources: Sequence[AptSource]) -> str:
    """``/etc/apt/sources.list`` for the image: one line per suite, components joined."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for s in sources:
        grouped.setdefault((s.uri, s.suite), [])
        if s.component not in grouped[(s.uri, s.suite)]:
            grouped[(s.uri, s.suite)].append(s.component)
    lines = ["# ketch debian-12 image: the Debian sources of the host that built it"]
    for (uri, suite), components in sorted(grouped.items(), key=lambda kv: _suite_order(kv[0])):
        lines.append(f"deb {uri} {suite} {' '.join(sorted(components))}")
    return "\n".join(lines) + "\n"


def _suite_order(item: tuple[str, str]) -> tuple[int, str, str]:
    uri, suite = item
    return (0 if suite == SUITE else 1, suite, uri)


def mirror(sources: Sequence[AptSource]) -> str:
    """The mirror debootstrap fetches the base system from (``SUITE main``)."""
    for s in sources:
        if s.suite == SUITE and s.component == "main":
            return s.uri
    raise ImageError(
        f"apt knows no Debian mirror with '{SUITE} main' for {ARCH}",
        hint=f"add one to /etc/apt/sources.list (Debian 12 '{SUITE}'), then run 'apt-get update'",
    )


def recipe_digest(recipe: bytes | None = None) -> str:
    """sha256 of the build recipe: this module."""
    if recipe is None:
        recipe = Path(__file__).read_bytes()
    return hashlib.sha256(b"ketch debian recipe\0" + recipe).hexdigest()


def cache_key(versions: Mapping[str, str], sources: Sequence[AptSource], recipe: str) -> str:
    """The build key: package candidate versions, the Debian sources, the recipe."""
    blob = json.dumps(
        {
            "format": MANIFEST_FORMAT,
            "name": NAME,
            "suite": SUITE,
            "arch": ARCH,
            "packages": dict(sorted(versions.items())),
            "sources": [[s.uri, s.suite, s.component] for s in sorted(set(sources))],
            "recipe": recipe,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_dpkg_list(text: str) -> dict[str, str]:
    """``dpkg-query -W -f '${Package}\\t${Version}\\n'`` output as {package: version}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, version = line.partition("\t")
        if sep and name and version:
            out[name] = version
    return out


def make_manifest(
    *,
    key: str,
    versions: Mapping[str, str],
    packages: Mapping[str, str],
    sources: Sequence[AptSource],
    files: Mapping[str, tuple[str, int]],
    kernel_version: str,
    recipe: str,
    built: datetime.datetime,
    disk_virtual_size: int = DISK_SIZE,
) -> dict[str, Any]:
    """The manifest of a built image; ``files`` maps a name to (sha256, size).

    ``versions`` are the requested packages' versions the key was made from;
    ``packages`` every package installed in the image.
    """
    when = built.astimezone(datetime.UTC)
    return {
        "format": MANIFEST_FORMAT,
        "name": NAME,
        "key": key,
        "built": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "version": when.strftime("%Y%m%d"),
        "release": SUITE,
        "release_title": f"Debian 12 ({SUITE}), ketch build {when:%Y-%m-%d}",
        "os": "debian",
        "arch": ARCH,
        "firmware": FIRMWARE,
        "kernel_version": kernel_version,
        "kernel_cmdline": CMDLINE,
        "root_label": ROOT_LABEL,
        "disk": DISK,
        "disk_format": "qcow2",
        "disk_virtual_size": disk_virtual_size,
        "requested": dict(sorted(versions.items())),
        "packages": dict(sorted(packages.items())),
        "sources": [f"deb {s.uri} {s.suite} {s.component}" for s in sorted(set(sources))],
        "recipe_digest": recipe,
        "files": {name: digest for name, (digest, _) in sorted(files.items())},
        "sizes": {name: size for name, (_, size) in sorted(files.items())},
    }


def image_info(manifest: Mapping[str, Any], image_dir: Path) -> ImageInfo:
    """The :class:`ImageInfo` of a built image: a disk booted through firmware."""
    try:
        if manifest["format"] != MANIFEST_FORMAT or manifest["name"] != NAME:
            raise ImageError(f"{image_dir}: not a format-{MANIFEST_FORMAT} {NAME} manifest")
        firmware = str(manifest["firmware"])
        if firmware not in ("bios", "uefi"):
            raise ImageError(f"{image_dir}: unknown firmware {firmware!r} in the manifest")
        image_dir = image_dir.resolve()
        return ImageInfo(
            id=f"ketch:{NAME}@{manifest['key']}",
            release=str(manifest["release_title"]),
            disk=str(image_dir / manifest["disk"]),
            disk_format=str(manifest["disk_format"]),
            boot=BootSpec(firmware=firmware),
            aliases=(NAME,),
            remote="ketch",
            version=str(manifest["version"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{image_dir}: malformed {NAME} manifest ({exc!r})") from exc


def load_debian(image_dir: Path) -> ImageInfo:
    """Read a built image's manifest (the disk is checked to exist, not hashed)."""
    info = image_info(_BUILT.read_manifest(image_dir), image_dir)
    if not Path(info.disk).is_file():
        raise ImageError(
            f"{NAME} image {image_dir} is incomplete: {DISK} is missing",
            hint=f"rebuild it: ketch image build {NAME} --force",
        )
    return info


def verify_debian(image_dir: Path) -> None:
    """Check the image's files against its manifest's sha256 and sizes."""
    _BUILT.verify(image_dir)


_BUILT = BuiltImage(
    NAME, IMAGE_FILES, load_debian, manifest=MANIFEST, leftovers=(".build-", ".old-")
)


# ---- pure parts: the boot sectors ----------------------------------------


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


# ---- pure parts: command lines -------------------------------------------


def debootstrap_argv(root: Path, mirror_uri: str) -> list[str]:
    """debootstrap of the minimal base, in its own mount and PID namespaces."""
    return [
        *_unshare(),
        "debootstrap", "--variant=minbase", f"--arch={ARCH}", "--components=main",
        SUITE, str(root), mirror_uri,
    ]  # fmt: skip


def chroot_argv(root: Path, command: Sequence[str]) -> list[str]:
    """``command`` run chrooted in ``root`` (see :data:`CHROOT_SCRIPT`)."""
    return [*_unshare(), "sh", "-euc", CHROOT_SCRIPT, "ketch-chroot", str(root), *command]


def _unshare() -> list[str]:
    """New mount and PID namespaces that die with ketch: should ketch be killed,
    ``setpriv``'s parent-death signal ends ``unshare``, which ends its child, the
    namespace's PID 1, which ends every process in it; its mounts go with it."""
    return [
        "setpriv", "--pdeathsig", "KILL", "--",
        "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "--",
    ]  # fmt: skip


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


# ---- the build -----------------------------------------------------------


class _FetchFailed(ImageError):
    """debootstrap or apt-get could not fetch (offline?): an older image may do."""


@dataclass(frozen=True)
class Plan:
    """What one build is made of, and its key."""

    sources: tuple[AptSource, ...]
    versions: Mapping[str, str]
    recipe: str
    key: str


async def plan() -> Plan:
    """Ask apt (no download) which sources and versions a build would use now."""
    policy = await _tool(["apt-cache", "policy"], timeout=120)
    sources = tuple(parse_sources(policy.text))
    mirror(sources)
    done = await _tool(["apt-cache", "policy", *PACKAGES], timeout=120)
    candidates = parse_policy(done.text)
    versions: dict[str, str] = {}
    for pkg in PACKAGES:
        version = candidates.get(pkg)
        if not version:
            raise ImageError(
                f"package {pkg} is not available from apt",
                hint=f"run 'apt-get update' (Debian 12 '{SUITE}' main is needed)",
            )
        versions[pkg] = version
    recipe = await asyncio.to_thread(recipe_digest)
    return Plan(sources, versions, recipe, cache_key(versions, sources, recipe))


async def build_debian(
    images_dir: Path, reporter: Reporter = NULL, *, force: bool = False
) -> ImageInfo:
    """Build (or find in the cache) the debian-12 image below ``images_dir``.

    When apt cannot say which versions are current, or the packages cannot be
    fetched (offline), an image built earlier is used instead, with a warning
    (never when ``force``).
    """
    base = Path(images_dir) / NAME
    try:
        p = await plan()
    except (ImageError, HostCommandError, Timeout) as exc:
        return await _BUILT.fall_back(base, None, exc, reporter, force)
    final = base / p.key
    if not force:
        cached = await asyncio.to_thread(_BUILT.cached, final)
        if cached is not None:
            return cached
    if os.geteuid() != 0:
        raise ImageError(
            f"building the {NAME} image needs root (debootstrap, chroot, namespaces)",
            hint=f"run ketchd as root once to build it, or use a {NAME} image built earlier",
        )
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create {base}: {exc}") from exc
    async with _BUILT.locked(base / ".lock", reporter):
        if not force:
            cached = await asyncio.to_thread(_BUILT.cached, final)
            if cached is not None:
                return cached
        await asyncio.to_thread(_BUILT.clean_leftovers, base, _remove_build)
        build = Path(tempfile.mkdtemp(prefix=f".build-{p.key}-", dir=base))
        try:
            try:
                await _build(build, p, reporter)
            except _FetchFailed as exc:
                return await _BUILT.fall_back(base, p.key, exc, reporter, force)
            old = None
            try:
                if final.exists():
                    old = base / f".old-{p.key}-{os.getpid()}-{time.monotonic_ns()}"
                    final.rename(old)
                (build / "image").rename(final)
            except OSError as exc:
                raise ImageError(f"cannot move the {NAME} image into {final}: {exc}") from exc
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            await asyncio.to_thread(_remove_build, build)
    return load_debian(final)


def mounts_below(path: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    prefix = str(path.resolve()).rstrip("/")
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _remove_build(build: Path) -> None:
    """Remove a build directory; never across a mount point.

    Every chroot step runs in its own mount namespace, so nothing should be
    mounted below ``build``; should something be (a build run by hand, an old
    ketch), it is lazily unmounted first, and if that fails the directory is
    left alone rather than deleting through a mount.
    """
    for point in mounts_below(build):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if mounts_below(build):
        return
    shutil.rmtree(build, ignore_errors=True)


async def _tool(argv: Sequence[str], *, timeout: float = 300) -> Completed:
    """Run a short host tool; failures get a hint naming the package to install."""
    try:
        return await run(list(argv), timeout=timeout, env={"LC_ALL": "C"})
    except HostCommandError as exc:
        if exc.hint is None:
            exc.hint = _TOOL_HINTS.get(Path(argv[0]).name)
        raise


async def _logged(argv: Sequence[str], log: Path, *, what: str, timeout: float) -> None:
    """Run a long build step with its output appended to ``log``.

    The step's process group is killed on timeout and on cancellation; a
    failure raises ImageError quoting the end of its output.
    """
    with log.open("ab") as out:
        out.write(f"\n==== {what}\n".encode())
        out.flush()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LC_ALL": "C.UTF-8"},
                start_new_session=True,
            )
        except OSError as exc:
            raise HostCommandError(
                list(argv), None, str(exc), hint=_TOOL_HINTS.get(Path(argv[0]).name)
            ) from exc
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError as exc:
            await _kill(proc)
            raise Timeout(f"{what} did not finish within {timeout:g} s") from exc
        except BaseException:
            await _kill(proc)
            raise
    if code != 0:
        raise ImageError(f"{what} failed (exit {code}): {_tail(log)}")


def _write_boot_area(raw: Path, boot_img: bytes, core_img: bytes, esp: Path) -> None:
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


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await asyncio.shield(proc.wait())


def _tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def _write_files(root: Path, files: Sequence[tuple[str, int, str]]) -> None:
    for rel, mode, text in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.write_text(text)
        os.chmod(path, mode)


async def _build(build: Path, p: Plan, reporter: Reporter) -> None:
    root = build / "root"
    image = build / "image"
    image.mkdir()
    log = build / "build.log"
    try:
        await _steps(build, root, image, log, p, reporter)
    except KetchError as exc:
        # The build directory goes; its log stays beside the images for a post-mortem.
        kept = build.parent / FAILED_LOG
        with contextlib.suppress(OSError):
            shutil.copyfile(log, kept)
            exc.hint = f"{exc.hint + '; ' if exc.hint else ''}the build's log: {kept}"
        raise


async def _steps(
    build: Path, root: Path, image: Path, log: Path, p: Plan, reporter: Reporter
) -> None:
    reporter.step(f"Bootstrapping Debian 12 ({SUITE}) with debootstrap")
    try:
        await _logged(
            debootstrap_argv(root, mirror(p.sources)), log, what="debootstrap", timeout=3600
        )
    except ImageError as exc:
        raise _FetchFailed(exc.message, hint=exc.hint) from exc

    reporter.step("Installing packages")
    _write_files(root, (("etc/apt/sources.list", 0o644, sources_list(p.sources)),))
    _write_files(root, PRE_INSTALL_FILES)
    wanted = [f"{pkg}={version}" for pkg, version in p.versions.items()]
    try:
        await _logged(
            chroot_argv(root, ["sh", "-euc", INSTALL_SCRIPT, "ketch-install", *wanted]),
            log,
            what="installing packages (apt-get)",
            timeout=3600,
        )
    except ImageError as exc:
        raise _FetchFailed(exc.message, hint="run 'apt-get update' and check the mirror") from exc

    reporter.step("Configuring the image")
    _write_files(root, CONFIG_FILES)
    await _logged(
        chroot_argv(root, ["sh", "-euc", CONFIGURE_SCRIPT]),
        log,
        what="configuring the image",
        timeout=1800,
    )
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1 or not (root / "initrd.img").exists():
        raise ImageError(f"expected one kernel and its initramfs in the image, found {kernels}")
    kver = kernels[0].name.removeprefix("vmlinuz-")
    listing = await _tool(
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f",
            "${Package}\t${Version}\n",
        ]
    )
    packages = parse_dpkg_list(listing.text)
    for pkg, version in p.versions.items():
        if packages.get(pkg) != version:
            raise ImageError(
                f"the image got {pkg} {packages.get(pkg)}, not {version}",
                hint="run 'apt-get update' on the host",
            )

    reporter.step("Making the disk")
    if mounts_below(root):
        raise ImageError(f"something is still mounted below {root}; not making the disk")
    raw = build / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(DISK_SIZE)
    await _tool(mkfs_argv(root, raw), timeout=1800)
    esp = build / "esp.fat"
    for argv in esp_argvs(esp, root / CORE_EFI):
        await _tool(argv, timeout=300)
    boot_img = (root / BOOT_IMG).read_bytes()
    core_img = (root / CORE_IMG).read_bytes()
    if not core_fits(core_img):
        raise ImageError("GRUB's core.img does not fit in the BIOS boot partition")
    await asyncio.to_thread(_write_boot_area, raw, boot_img, core_img, esp)
    await asyncio.to_thread(_remove_build, root)

    reporter.step("Compressing the disk")
    disk = image / DISK
    try:
        await _tool(convert_argv(raw, disk), timeout=1800)
    except HostCommandError:
        # A QEMU without zstd: zlib is slower, but every QEMU reads it.
        disk.unlink(missing_ok=True)
        await _tool(convert_argv(raw, disk, zstd=False), timeout=3600)
    raw.unlink()

    reporter.step("Writing the manifest")
    manifest = make_manifest(
        key=p.key,
        versions=p.versions,
        packages=packages,
        sources=p.sources,
        files={DISK: (await asyncio.to_thread(_sha256, disk), disk.stat().st_size)},
        kernel_version=kver,
        recipe=p.recipe,
        built=datetime.datetime.now(datetime.UTC),
    )
    (image / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for path in (image, *image.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
