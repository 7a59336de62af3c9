"""What the ``tiny`` image is made of: its files, packages, modules, programs
and layout (data only; :mod:`.stage` and :mod:`.build` follow it).

ketch's guest files (:data:`GUEST_FILES`) come from ``ketch/images/guest/``
(see ``guest/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NAME = "tiny"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
KERNEL = "vmlinuz"
INITRD = "initrd.img"
DISK = "disk.qcow2"
IMAGE_FILES = (KERNEL, INITRD, DISK)
CMDLINE = "console=ttyS0 root=/dev/vda rootfstype=ext4 rw"
ROOT_SIZE = 256 * 1024 * 1024
ROOT_LABEL = "cloudimg-rootfs"

KERNEL_META = "linux-image-cloud-amd64"
USERLAND_PACKAGES = (
    "busybox-static",
    "dropbear-bin",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
    "libcrypt1",
    "libc6",
    "sudo",
    "libpam0g",
    "libpam-modules",
    "libaudit1",
    "libcap-ng0",
    "libselinux1",
    "libpcre2-8-0",
    "e2fsprogs",
    "libext2fs2",
    "libcom-err2",
    # classic mounts: the guest side of reverse SSHFS (sshfs -o slave), FUSE 3
    "sshfs",
    "libfuse3-3",
    "fuse3",
    "libglib2.0-0",
    # glibc dlopens libgcc_s for pthread_cancel: sshfs cancels its threads when it ends,
    # and without it aborts ("libgcc_s.so.1 must be installed for pthread_cancel")
    "libgcc-s1",
)
PACKAGES = (KERNEL_META, *USERLAND_PACKAGES)

# Kernel modules (with their dependencies): the initramfs needs the root disk;
# the root filesystem carries those and the rest (9p is not built for the
# cloud kernel; virtiofs is).
INITRD_MODULES = ("virtio_pci", "virtio_blk")
ROOT_MODULES = (
    *INITRD_MODULES,
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "virtio_balloon",
    "virtio_scsi",
    "isofs",
    "button",
    "evdev",
    "virtiofs",
    "fuse",
    "vmw_vsock_virtio_transport",
    "vsock_loopback",
)

# Programs (and dlopen'ed objects) taken from the packages; their shared
# libraries follow from their ELF headers.
ROOT_PROGRAMS: tuple[tuple[str, int], ...] = (
    ("usr/sbin/dropbear", 0o755),
    ("usr/bin/dropbearconvert", 0o755),
    ("usr/bin/dropbearkey", 0o755),
    ("usr/bin/sudo", 0o4755),
    ("usr/libexec/sudo/sudoers.so", 0o644),
    ("lib/x86_64-linux-gnu/security/pam_deny.so", 0o644),
    ("lib/x86_64-linux-gnu/security/pam_permit.so", 0o644),
    ("sbin/resize2fs", 0o755),
    ("usr/bin/sshfs", 0o755),
    ("bin/fusermount3", 0o755),  # not set-uid: sshfs runs as root (sudo), mounts directly
    ("lib/x86_64-linux-gnu/libgcc_s.so.1", 0o644),  # dlopen'ed (see libgcc-s1 above)
)
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib")

GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"


@dataclass(frozen=True)
class GuestFile:
    """One of ketch's guest files and where it goes in the image."""

    name: str  # in ketch/images/guest/
    dest: str  # path in the initramfs or the root filesystem
    mode: int
    initrd: bool = False


GUEST_FILES = (
    GuestFile("init", "init", 0o755, initrd=True),
    GuestFile("inittab", "etc/inittab", 0o644),
    GuestFile("rcS", "etc/init.d/rcS", 0o755),
    GuestFile("rcK", "etc/init.d/rcK", 0o755),
    GuestFile("lib.sh", "usr/lib/ketch/lib.sh", 0o644),
    GuestFile("nocloud-local", "usr/lib/ketch/nocloud-local", 0o755),
    GuestFile("network", "usr/lib/ketch/network", 0o755),
    GuestFile("sshd", "usr/lib/ketch/sshd", 0o755),
    GuestFile("cloud-final", "usr/lib/ketch/cloud-final", 0o755),
    GuestFile("udhcpc.script", "usr/share/udhcpc/default.script", 0o755),
    GuestFile("acpi-power", "etc/acpi/PWRF/00000080", 0o755),
    GuestFile("passwd", "etc/passwd", 0o644),
    GuestFile("group", "etc/group", 0o644),
    GuestFile("shadow", "etc/shadow", 0o600),
    GuestFile("gshadow", "etc/gshadow", 0o600),
    GuestFile("shells", "etc/shells", 0o644),
    GuestFile("nsswitch.conf", "etc/nsswitch.conf", 0o644),
    GuestFile("profile", "etc/profile", 0o644),
    GuestFile("hostname", "etc/hostname", 0o644),
    GuestFile("hosts", "etc/hosts", 0o644),
    GuestFile("fstab", "etc/fstab", 0o644),
    GuestFile("os-release", "usr/lib/os-release", 0o644),
    GuestFile("sudoers", "etc/sudoers", 0o440),
    GuestFile("pam-sudo", "etc/pam.d/sudo", 0o644),
    GuestFile("pam-other", "etc/pam.d/other", 0o644),
    GuestFile("README.md", "usr/share/doc/ketch-tiny/README.md", 0o644),
)

ROOT_DIRS: tuple[tuple[str, int], ...] = (
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("mnt", 0o755),
    ("media", 0o755),
    ("opt", 0o755),
    ("srv", 0o755),
    ("etc/dropbear", 0o700),
    ("etc/sudoers.d", 0o755),
    ("etc/udhcpc", 0o755),
    ("usr/local/bin", 0o755),
    ("usr/local/sbin", 0o755),
    ("var/tmp", 0o1777),
    ("var/log", 0o755),
    ("var/lib/cloud", 0o755),
    ("var/lib/sudo", 0o700),
    ("var/spool", 0o755),
)
ROOT_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("var/run", "/run"),
    ("var/lock", "/run/lock"),
    ("etc/mtab", "/proc/self/mounts"),
    ("etc/os-release", "../usr/lib/os-release"),
    ("etc/udhcpc/default.script", "/usr/share/udhcpc/default.script"),
)
