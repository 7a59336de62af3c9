"""What the ``debian-12`` image is made of: its packages, its disk layout,
GRUB's modules and offsets, and the texts written into it (data only;
:mod:`.build` and :mod:`.disk` follow it)."""

from __future__ import annotations

import uuid

from ketch.host import partitions
from ketch.host.partitions import Partition

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
    "sshfs",  # classic mounts (reverse SSHFS); brings fuse3
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
