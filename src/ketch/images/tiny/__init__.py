"""The built-in ``tiny`` cloud image: Debian's cloud kernel, busybox and dropbear.

:func:`build_tiny` makes a small bootable image from Debian packages fetched
with ``apt-get download`` into a work directory (nothing is installed on the
host): the kernel of ``linux-image-cloud-amd64``, a small initramfs that loads
the virtio drivers and ``switch_root``s into ``/dev/vda``, and an ext4 root
filesystem (built with ``mkfs.ext4 -d``, never mounted) holding busybox, the
dropbear SSH server, sudo, ``resize2fs`` and ketch's guest scripts from
``ketch/images/guest/`` (a NoCloud datasource; see ``guest/README.md``).

The result is ``images_dir/tiny/<key>/`` with ``vmlinuz``, ``initrd.img``,
``disk.qcow2`` and ``manifest.json``, renamed into place once complete.  The
key hashes the candidate versions of the packages (``apt-cache policy``, no
download) and ketch's guest files and build recipe, so the image is rebuilt
only when one of them changes.  A built image directory is never changed or
removed here: instance disks are overlays naming its ``disk.qcow2``.  So a
forced rebuild goes to a new directory, ``<key>-<UTC time>``, and the newest
directory of a key is the one in use.

The package: :mod:`.recipe` (what the image is made of, data only),
:mod:`.manifest` (key, manifest, builds on disk), :mod:`.stage` (ELF, kernel
modules, cpio, the staged trees) and :mod:`.build` (apt and the build steps);
host tools run through :func:`ketch.host.run.tool`.  The key's recipe is the
package's modules.

Host tools the build needs, all from Debian packages: ``apt-get`` and
``apt-cache`` (apt), ``dpkg-deb`` (dpkg), ``mkfs.ext4`` and ``debugfs``
(e2fsprogs), ``qemu-img`` (qemu-utils).  The busybox of the downloaded
``busybox-static`` package runs on the host too (for ``depmod``).
"""

from __future__ import annotations

from ketch.images.built import parse_policy
from ketch.images.tiny.build import build_tiny, candidate_versions, kernel_dependency
from ketch.images.tiny.manifest import (
    apt_lists_changed,
    cache_key,
    fresh,
    fresh_build,
    guest_digest,
    image_info,
    load_tiny,
    make_manifest,
    newest_built,
    verify_tiny,
)
from ketch.images.tiny.recipe import (
    CMDLINE,
    DISK,
    GUEST_DIR,
    GUEST_FILES,
    IMAGE_FILES,
    INITRD,
    KERNEL,
    MANIFEST,
    NAME,
    PACKAGES,
    GuestFile,
)
from ketch.images.tiny.stage import (
    ElfDeps,
    elf_deps,
    module_closure,
    module_name,
    parse_modules_dep,
    write_cpio,
)

__all__ = [
    "CMDLINE",
    "DISK",
    "GUEST_DIR",
    "GUEST_FILES",
    "IMAGE_FILES",
    "INITRD",
    "KERNEL",
    "MANIFEST",
    "NAME",
    "PACKAGES",
    "ElfDeps",
    "GuestFile",
    "apt_lists_changed",
    "build_tiny",
    "cache_key",
    "candidate_versions",
    "elf_deps",
    "fresh",
    "fresh_build",
    "guest_digest",
    "image_info",
    "kernel_dependency",
    "load_tiny",
    "make_manifest",
    "module_closure",
    "module_name",
    "newest_built",
    "parse_modules_dep",
    "parse_policy",
    "verify_tiny",
    "write_cpio",
]
