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
candidate versions of :data:`PACKAGES` and this package's modules (the
recipe), so the image is rebuilt only when one of them changes, or when asked
(``force``).

The package: :mod:`.recipe` (packages, layout and the texts written into the
image: data only), :mod:`.manifest` (sources, key, manifest), :mod:`.disk`
(boot sectors, partition tables, the disk tools' argv) and :mod:`.build` (apt,
the chroot steps, the build under its lock); short host tools run through
:func:`ketch.host.run.tool`.

Host needs: root (debootstrap, chroot, namespaces), ``debootstrap``,
``setpriv``, ``unshare`` and ``chroot`` (util-linux, coreutils), ``apt-cache`` and
``dpkg-query``, ``mkfs.ext4`` (e2fsprogs), ``mkfs.fat`` (dosfstools), ``mmd``
and ``mcopy`` (mtools), ``qemu-img`` (qemu-utils).
"""

from __future__ import annotations

from ketch.images.debian.build import (
    Plan,
    build_debian,
    chroot_argv,
    debootstrap_argv,
    mounts_below,
    plan,
)
from ketch.images.debian.disk import (
    boot_code,
    convert_argv,
    core_fits,
    esp_argvs,
    mkfs_argv,
    patch_core,
)
from ketch.images.debian.manifest import (
    AptSource,
    cache_key,
    image_info,
    load_debian,
    make_manifest,
    mirror,
    parse_dpkg_list,
    parse_sources,
    recipe_digest,
    sources_list,
    verify_debian,
)
from ketch.images.debian.recipe import (
    ARCH,
    BIOS_BOOT,
    CLOUD_CFG,
    CMDLINE,
    CONFIG_FILES,
    DISK,
    DISK_GUID,
    DISK_SIZE,
    ESP,
    FAILED_LOG,
    FSTAB,
    GRUB_BIOS_MODULES,
    GRUB_EARLY,
    GRUB_EFI_MODULES,
    LAYOUT,
    MANIFEST,
    NAME,
    PACKAGES,
    PRE_INSTALL_FILES,
    ROOT,
    ROOT_LABEL,
    SECTOR,
    SUITE,
    TOTAL_SECTORS,
)

__all__ = [
    "ARCH",
    "BIOS_BOOT",
    "CLOUD_CFG",
    "CMDLINE",
    "CONFIG_FILES",
    "DISK",
    "DISK_GUID",
    "DISK_SIZE",
    "ESP",
    "FAILED_LOG",
    "FSTAB",
    "GRUB_BIOS_MODULES",
    "GRUB_EARLY",
    "GRUB_EFI_MODULES",
    "LAYOUT",
    "MANIFEST",
    "NAME",
    "PACKAGES",
    "PRE_INSTALL_FILES",
    "ROOT",
    "ROOT_LABEL",
    "SECTOR",
    "SUITE",
    "TOTAL_SECTORS",
    "AptSource",
    "Plan",
    "boot_code",
    "build_debian",
    "cache_key",
    "chroot_argv",
    "convert_argv",
    "core_fits",
    "debootstrap_argv",
    "esp_argvs",
    "image_info",
    "load_debian",
    "make_manifest",
    "mirror",
    "mkfs_argv",
    "mounts_below",
    "parse_dpkg_list",
    "parse_sources",
    "patch_core",
    "plan",
    "recipe_digest",
    "sources_list",
    "verify_debian",
]
