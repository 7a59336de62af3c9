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

Host tools the build needs, all from Debian packages: ``apt-get`` and
``apt-cache`` (apt), ``dpkg-deb`` (dpkg), ``mkfs.ext4`` and ``debugfs``
(e2fsprogs), ``qemu-img`` (qemu-utils).  The busybox of the downloaded
``busybox-static`` package runs on the host too (for ``depmod``).
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch.errors import HostCommandError, ImageError, Timeout
from ketch.host.run import Completed, run
from ketch.images.built import BuiltImage, file_sha256
from ketch.model import BootSpec, ImageInfo
from ketch.progress import NULL, Reporter

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
)
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib")

GUEST_DIR = Path(__file__).with_name("guest")


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

# The Debian package of each host tool, for the hint when it is missing.
_TOOL_PACKAGES = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "qemu-img": "qemu-utils",
}


# ---- pure parts: versions, key, manifest ----------------------------------


def parse_policy(text: str) -> dict[str, str | None]:
    """Candidate versions from ``apt-cache policy PKG...`` (None: no candidate)."""
    out: dict[str, str | None] = {}
    current: str | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1]
            out[current] = None
        elif current is not None and line.strip().startswith("Candidate:"):
            value = line.split(":", 1)[1].strip()
            out[current] = None if value in ("", "(none)") else value
    return out


def guest_digest(guest_dir: Path = GUEST_DIR, recipe: bytes | None = None) -> str:
    """sha256 of ketch's guest files and of the build recipe (this module)."""
    h = hashlib.sha256()
    for path in sorted(p for p in guest_dir.iterdir() if p.is_file()):
        data = path.read_bytes()
        h.update(f"{path.name}\0{len(data)}\0".encode())
        h.update(data)
    if recipe is None:
        recipe = Path(__file__).read_bytes()
    h.update(b"recipe\0")
    h.update(recipe)
    return h.hexdigest()


def cache_key(versions: Mapping[str, str], digest: str) -> str:
    """The build key: package candidate versions plus the guest-files digest."""
    blob = json.dumps(
        {"format": MANIFEST_FORMAT, "packages": dict(sorted(versions.items())), "guest": digest},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_manifest(
    *,
    key: str,
    build: str | None = None,
    packages: Mapping[str, str],
    files: Mapping[str, tuple[str, int]],
    kernel_version: str,
    guest: str,
    built: datetime.datetime,
    cmdline: str = CMDLINE,
    disk_virtual_size: int = ROOT_SIZE,
) -> dict[str, Any]:
    """The manifest of a built image; ``files`` maps a name to (sha256, size).

    ``build`` names this build (its directory): the key, or the key and a time
    for a forced rebuild.

    ``files`` (name: sha256), ``version``, ``release``, ``release_title`` and
    ``kernel_cmdline`` are what :func:`ketch.images.publish.from_image_dir`
    reads to publish the image in a simplestreams tree.
    """
    when = built.astimezone(datetime.UTC)
    return {
        "format": MANIFEST_FORMAT,
        "name": NAME,
        "key": key,
        "build": build or key,
        "built": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "version": when.strftime("%Y%m%d"),
        "release": NAME,
        "release_title": f"ketch tiny {when:%Y-%m-%d}",
        "os": "ketch",
        "kernel_version": kernel_version,
        "kernel_cmdline": cmdline,
        "kernel": KERNEL,
        "initrd": INITRD,
        "disk": DISK,
        "disk_format": "qcow2",
        "disk_virtual_size": disk_virtual_size,
        "packages": dict(sorted(packages.items())),
        "guest_digest": guest,
        "files": {name: digest for name, (digest, _) in sorted(files.items())},
        "sizes": {name: size for name, (_, size) in sorted(files.items())},
    }


def image_info(manifest: Mapping[str, Any], image_dir: Path) -> ImageInfo:
    """The :class:`ImageInfo` of a built image, from its manifest."""
    try:
        if manifest["format"] != MANIFEST_FORMAT or manifest["name"] != NAME:
            raise ImageError(f"{image_dir}: not a format-{MANIFEST_FORMAT} tiny image manifest")
        image_dir = image_dir.resolve()
        return ImageInfo(
            id=f"ketch:{NAME}@{manifest.get('build') or manifest['key']}",
            release=str(manifest["release_title"]),
            disk=str(image_dir / manifest["disk"]),
            disk_format=str(manifest["disk_format"]),
            boot=BootSpec(
                kernel=str(image_dir / manifest["kernel"]),
                initrd=str(image_dir / manifest["initrd"]),
                cmdline=str(manifest["kernel_cmdline"]),
            ),
            aliases=(NAME,),
            remote="ketch",
            version=str(manifest["version"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{image_dir}: malformed tiny image manifest ({exc!r})") from exc


def load_tiny(image_dir: Path) -> ImageInfo:
    """Read a built tiny image's manifest (files are checked to exist, not hashed)."""
    manifest = _BUILT.read_manifest(image_dir)
    info = image_info(manifest, image_dir)
    for name in IMAGE_FILES:
        if not (image_dir / name).is_file():
            raise ImageError(
                f"tiny image {image_dir} is incomplete: {name} is missing",
                hint="rebuild it (ketch rebuilds the tiny image when it is missing)",
            )
    return info


def verify_tiny(image_dir: Path) -> None:
    """Check every file of a built image against its manifest's sha256."""
    _BUILT.verify(image_dir)


_BUILT = BuiltImage(NAME, IMAGE_FILES, load_tiny, manifest=MANIFEST, lock_poll=0.2)


# ---- ELF and cpio --------------------------------------------------------


@dataclass(frozen=True)
class ElfDeps:
    """What the dynamic loader needs for one ELF object."""

    interp: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]


def elf_deps(data: bytes) -> ElfDeps | None:
    """PT_INTERP, DT_NEEDED and DT_RUNPATH/RPATH of a 64-bit little-endian ELF.

    None when ``data`` is not such an ELF file.
    """
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    interp: str | None = None
    for i in range(phnum):
        off = phoff + i * phentsize
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, off
        )
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
        elif p_type == 3:  # PT_INTERP
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return ElfDeps(interp, (), ())

    def file_offset(vaddr: int) -> int:
        for start, offset, size in loads:
            if start <= vaddr < start + size:
                return vaddr - start + offset
        raise ValueError(f"address {vaddr:#x} is in no PT_LOAD segment")

    strtab = 0
    needed: list[int] = []
    runpath: list[int] = []
    d_off, d_size = dynamic
    for pos in range(d_off, d_off + d_size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == 1:
            needed.append(val)
        elif tag == 5:
            strtab = file_offset(val)
        elif tag in (15, 29):
            runpath.append(val)

    def string(offset: int) -> str:
        start = strtab + offset
        return data[start : data.index(b"\0", start)].decode()

    paths = [p for r in runpath for p in string(r).split(":") if p]
    return ElfDeps(interp, tuple(string(n) for n in needed), tuple(paths))


def write_cpio(staging: Path, *, devices: Sequence[tuple[str, int, int, int]] = ()) -> bytes:
    """A newc cpio archive of ``staging``, every entry owned by root.

    ``devices`` are extra (path, mode, major, minor) character/block nodes.
    """
    chunks: list[bytes] = []
    ino = 1

    def entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nonlocal ino
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        chunks.append(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        chunks.append(data + b"\0" * (-len(data) % 4))
        ino += 1

    for path in _walk(staging):
        rel = path.relative_to(staging).as_posix()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            entry(rel, stat.S_IFLNK | 0o777, os.readlink(path).encode())
        elif stat.S_ISDIR(st.st_mode):
            entry(rel, stat.S_IFDIR | stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            entry(rel, stat.S_IFREG | stat.S_IMODE(st.st_mode), path.read_bytes())
    for name, mode, major, minor in devices:
        entry(name, mode, rdev=(major, minor))
    entry("TRAILER!!!", 0)
    return b"".join(chunks)


def _walk(root: Path) -> Iterator[Path]:
    """Every path below ``root``, parents first, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted([*dirnames, *filenames]):
            yield base / name


# ---- the build -----------------------------------------------------------


async def build_tiny(
    images_dir: Path, reporter: Reporter = NULL, *, force: bool = False
) -> ImageInfo:
    """Build (or find in the cache) the tiny image below ``images_dir``.

    When apt cannot say which versions are current, or cannot download them
    (offline), an image built earlier is used instead, with a warning.
    """
    tiny_dir = Path(images_dir) / NAME
    if not force:
        # Fast path: a build from the same guest files, newer than apt's package
        # lists, cannot be stale: no need to ask apt (0.5-1 s) on every launch.
        digest = await asyncio.to_thread(guest_digest)
        fresh = await asyncio.to_thread(_fresh, tiny_dir, digest, apt_lists_changed())
        if fresh is not None:
            return fresh
    try:
        versions = await candidate_versions()
    except (ImageError, HostCommandError, Timeout) as exc:
        return await _BUILT.fall_back(tiny_dir, None, exc, reporter, force)
    key = cache_key(versions, await asyncio.to_thread(guest_digest))
    if not force:
        cached = await asyncio.to_thread(_newest_of_key, tiny_dir, key)
        if cached is not None:
            return cached
    try:
        tiny_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create {tiny_dir}: {exc}") from exc
    async with _BUILT.locked(tiny_dir / ".lock", reporter):
        if not force:
            cached = await asyncio.to_thread(_newest_of_key, tiny_dir, key)
            if cached is not None:
                return cached
        _BUILT.clean_leftovers(tiny_dir)
        final = tiny_dir / key
        if final.exists() or final.is_symlink():
            final = tiny_dir / f"{key}-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S%fZ}"
        build = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=tiny_dir))
        try:
            try:
                await _build(build, key, final.name, versions, reporter)
            except _DownloadFailed as exc:
                return await _BUILT.fall_back(tiny_dir, key, exc, reporter, force)
            except OSError as exc:
                raise ImageError(
                    f"building the tiny image failed: {exc}",
                    hint=f"check the free space and permissions of {tiny_dir}",
                ) from exc
            try:
                (build / "image").rename(final)
            except OSError as exc:
                raise ImageError(f"cannot move the tiny image into {final}: {exc}") from exc
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return load_tiny(final)


async def candidate_versions() -> dict[str, str]:
    """The candidate version of every package the image is made of."""
    done = await _tool(["apt-cache", "policy", *PACKAGES], timeout=120, hint="run 'apt-get update'")
    policy = parse_policy(done.text)
    versions: dict[str, str] = {}
    for pkg in PACKAGES:
        version = policy.get(pkg)
        if not version:
            raise ImageError(
                f"package {pkg} is not available from apt",
                hint="run 'apt-get update' (Debian 12 'bookworm' main is needed)",
            )
        versions[pkg] = version
    return versions


class _DownloadFailed(ImageError):
    """apt-get download failed (offline?): an older tiny image may do."""


APT_LISTS = Path("/var/lib/apt/lists")


def apt_lists_changed(lists: Path = APT_LISTS) -> float | None:
    """When apt's package lists last changed (None: unknown, so never trust a build)."""
    try:
        return max(p.stat().st_mtime for p in lists.iterdir() if p.is_file())
    except (OSError, ValueError):
        return None


def _fresh(tiny_dir: Path, digest: str, lists_changed: float | None) -> ImageInfo | None:
    """The newest build from these guest files made after apt's lists last changed."""
    if lists_changed is None:
        return None
    for path in _BUILT.image_dirs(tiny_dir, None):
        try:
            manifest = _BUILT.read_manifest(path)
            built_after = (path / MANIFEST).stat().st_mtime > lists_changed
        except (ImageError, OSError):
            continue
        if manifest.get("guest_digest") == digest and built_after:
            return _BUILT.cached(path)
    return None


def newest_built(images_dir: Path) -> ImageInfo | None:
    """The newest tiny image on disk, whatever its key (no build, no checksums)."""
    for path in _BUILT.image_dirs(Path(images_dir) / NAME, None):
        try:
            return load_tiny(path)
        except ImageError:
            continue
    return None


def _newest_of_key(tiny_dir: Path, key: str) -> ImageInfo | None:
    for path in _BUILT.image_dirs(tiny_dir, key):
        info = _BUILT.cached(path)
        if info is not None:
            return info
    return None


async def _tool(
    argv: Sequence[str],
    *,
    timeout: float = 300,
    cwd: Path | None = None,
    hint: str | None = None,
) -> Completed:
    """Run a host tool; a missing one gets a hint naming its package, a failing one ``hint``."""
    try:
        return await run(
            list(argv),
            timeout=timeout,
            cwd=None if cwd is None else str(cwd),
            env={"LC_ALL": "C"},
        )
    except HostCommandError as exc:
        package = _TOOL_PACKAGES.get(Path(argv[0]).name)
        if exc.returncode is None and package:
            exc.hint = f"install the Debian package {package} (apt-get install {package})"
        elif exc.hint is None:
            exc.hint = hint
        raise


async def _build(
    build: Path, key: str, build_name: str, versions: Mapping[str, str], reporter: Reporter
) -> None:
    work = build / "work"
    debs = work / "debs"
    kernel_tree = work / "kernel"
    tree = work / "tree"
    for d in (debs, kernel_tree, tree):
        d.mkdir(parents=True)
    image = build / "image"
    image.mkdir()

    space = f"check the free space in {build.parent}"
    reporter.step("Downloading packages")
    kernel_spec = await _kernel_package(versions[KERNEL_META])
    kernel_pkg = kernel_spec.split("=", 1)[0]
    wanted = [kernel_spec, *(f"{pkg}={versions[pkg]}" for pkg in USERLAND_PACKAGES)]
    try:
        await _tool(["apt-get", "download", *wanted], cwd=debs, timeout=1800)
    except HostCommandError as exc:
        raise _DownloadFailed(
            f"cannot download the packages of the tiny image: {exc}",
            hint="check the network and run 'apt-get update'",
        ) from exc

    reporter.step("Unpacking packages")
    packages: dict[str, str] = {}
    deb_files = sorted(debs.glob("*.deb"))
    for i, deb in enumerate(deb_files):
        fields = (await _tool(["dpkg-deb", "-f", str(deb), "Package", "Version"])).text
        info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
        name = info.get("Package", deb.name)
        packages[name] = info.get("Version", "")
        dest = kernel_tree if name == kernel_pkg else tree
        await _tool(["dpkg-deb", "-x", str(deb), str(dest)], hint=space)
        reporter.progress("Unpacking packages", i + 1, len(deb_files))
    missing = {kernel_pkg, *USERLAND_PACKAGES} - set(packages)
    if missing:
        raise ImageError(f"apt-get download did not fetch {', '.join(sorted(missing))}")

    module_dirs = list((kernel_tree / "lib" / "modules").iterdir())
    if len(module_dirs) != 1:
        raise ImageError(f"{kernel_pkg} does not hold exactly one kernel")
    kver = module_dirs[0].name
    busybox = tree / "bin" / "busybox"
    await _tool([str(busybox), "depmod", "-b", str(kernel_tree), kver])
    deps = parse_modules_dep((module_dirs[0] / "modules.dep").read_text())

    reporter.step("Building the initramfs")
    initrd_root = work / "initrd"
    await asyncio.to_thread(_stage_initrd, initrd_root, tree, kernel_tree, kver, deps)
    await _tool([str(busybox), "depmod", "-b", str(initrd_root), kver])
    cpio = await asyncio.to_thread(
        write_cpio, initrd_root, devices=[("dev/console", stat.S_IFCHR | 0o600, 5, 1)]
    )
    await asyncio.to_thread((image / INITRD).write_bytes, gzip.compress(cpio, 9, mtime=0))
    shutil.copyfile(kernel_tree / "boot" / f"vmlinuz-{kver}", image / KERNEL)

    reporter.step("Building the root filesystem")
    root = work / "root"
    await asyncio.to_thread(_stage_root, root, tree, kernel_tree, kver, deps)
    busybox_list = (await _tool([str(busybox), "--list-full"])).text.split()
    await asyncio.to_thread(_busybox_links, root, busybox_list)
    await _tool([str(busybox), "depmod", "-b", str(root), kver])
    raw = work / "root.ext4"
    with raw.open("wb") as f:
        f.truncate(ROOT_SIZE)
    await _tool(
        [
            "mkfs.ext4", "-F", "-q", "-b", "4096", "-T", "default", "-L", ROOT_LABEL,
            "-E", "root_owner=0:0", "-d", str(root), str(raw),
        ],
        hint=space,
    )  # fmt: skip
    script = work / "debugfs.cmds"
    script.write_text(_debugfs_ownership(root))
    done = await _tool(["debugfs", "-w", "-f", str(script), str(raw)])
    problems = [
        line
        for line in done.stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("debugfs ")
    ]
    if problems:
        raise ImageError("debugfs could not fix file ownership: " + "; ".join(problems[:5]))
    await _tool(
        ["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image / DISK)],
        hint=space,
    )

    reporter.step("Writing the manifest")
    files = {}
    for name in IMAGE_FILES:
        path = image / name
        files[name] = (await asyncio.to_thread(file_sha256, path), path.stat().st_size)
    manifest = make_manifest(
        key=key,
        build=build_name,
        packages=packages,
        files=files,
        kernel_version=kver,
        guest=await asyncio.to_thread(guest_digest),
        built=datetime.datetime.now(datetime.UTC),
    )
    (image / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(work)
    for path in (image, *image.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


async def _kernel_package(meta_version: str) -> str:
    """``name=version`` of the kernel package the cloud kernel metapackage needs."""
    done = await _tool(
        ["apt-cache", "show", f"{KERNEL_META}={meta_version}"],
        timeout=120,
        hint="run 'apt-get update'",
    )
    wanted = kernel_dependency(done.text)
    if wanted is None:
        raise ImageError(
            f"cannot tell which kernel {KERNEL_META} {meta_version} depends on",
            hint="run 'apt-get update'",
        )
    name, version = wanted
    return name if version is None else f"{name}={version}"


def kernel_dependency(show: str) -> tuple[str, str | None] | None:
    """(package, pinned version or None) of the kernel in ``apt-cache show`` text."""
    for line in show.splitlines():
        if not line.startswith("Depends:"):
            continue
        for dep in line.split(":", 1)[1].split(","):
            match = re.fullmatch(
                r"\s*(linux-image-[0-9][^\s|]*-cloud-amd64)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*",
                dep,
            )
            if match:
                return match.group(1), match.group(2)
    return None


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep as {module name: (path, [dependency paths])}."""
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        out[module_name(path)] = (path, rest.split())
    return out


def module_name(path: str) -> str:
    """kernel/drivers/char/hw_random/virtio-rng.ko -> virtio_rng."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko", ".ko.gz", ".ko.xz", ".ko.zst"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("-", "_")


def module_closure(names: Iterable[str], deps: Mapping[str, tuple[str, list[str]]]) -> set[str]:
    """The module files (paths in modules.dep) ``names`` need, themselves included."""
    out: set[str] = set()
    for name in names:
        if name not in deps:
            raise ImageError(f"the cloud kernel has no module {name}")
        path, needs = deps[name]
        out.add(path)
        out.update(needs)
    return out


def _copy_modules(dest: Path, kernel_tree: Path, kver: str, paths: Iterable[str]) -> None:
    src_base = kernel_tree / "lib" / "modules" / kver
    dst_base = dest / "lib" / "modules" / kver
    dst_base.mkdir(parents=True, exist_ok=True)
    for rel in sorted(paths):
        target = dst_base / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_base / rel, target)
        os.chmod(target, 0o644)
    for extra in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
        if (src_base / extra).exists():
            shutil.copyfile(src_base / extra, dst_base / extra)


def _stage_initrd(
    dest: Path, tree: Path, kernel_tree: Path, kver: str, deps: Mapping[str, Any]
) -> None:
    for d in ("bin", "dev", "proc", "sys", "newroot", "run", "tmp"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.symlink("bin", dest / "sbin")
    shutil.copyfile(tree / "bin" / "busybox", dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    for applet in _INITRD_APPLETS:
        os.symlink("busybox", dest / "bin" / applet)
    _copy_modules(dest, kernel_tree, kver, module_closure(INITRD_MODULES, deps))
    for gf in GUEST_FILES:
        if gf.initrd:
            _install(dest / gf.dest, (GUEST_DIR / gf.name).read_bytes(), gf.mode)


_INITRD_APPLETS = (
    "sh", "mount", "umount", "modprobe", "insmod", "switch_root", "sleep", "cat", "mkdir",
    "echo", "findfs", "setsid", "cttyhack", "ls", "dmesg", "ps", "blkid", "reboot", "poweroff",
)  # fmt: skip


def _stage_root(
    dest: Path, tree: Path, kernel_tree: Path, kver: str, deps: Mapping[str, Any]
) -> None:
    dest.mkdir(parents=True)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "lib", "etc"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tree / "bin" / "busybox", dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    seen: set[str] = set()
    for rel, mode in ROOT_PROGRAMS:
        _copy_with_libs(tree, rel, dest, seen)
        os.chmod(dest / rel, mode)
    _copy_modules(dest, kernel_tree, kver, module_closure(ROOT_MODULES, deps))
    for gf in GUEST_FILES:
        if not gf.initrd:
            _install(dest / gf.dest, (GUEST_DIR / gf.name).read_bytes(), gf.mode)
    for rel, mode in ROOT_DIRS:
        (dest / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(dest / rel, mode)
    for rel, target in ROOT_SYMLINKS:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, dest / rel)


def _busybox_links(dest: Path, applets: Iterable[str]) -> None:
    for rel in applets:
        link = dest / rel
        if rel.startswith("/") or ".." in rel.split("/") or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)


def _install(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _copy_with_libs(tree: Path, rel: str, dest: Path, seen: set[str]) -> None:
    """Copy ``rel`` (following symlinks, kept as symlinks) and every library it needs."""
    if rel in seen:
        return
    seen.add(rel)
    src = tree / rel
    target = dest / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        link = os.readlink(src)
        os.symlink(link, target)
        resolved = (
            link.lstrip("/")
            if link.startswith("/")
            else os.path.normpath(os.path.join(os.path.dirname(rel), link))
        )
        _copy_with_libs(tree, resolved, dest, seen)
        return
    if not src.is_file():
        raise ImageError(f"{rel} is not in the downloaded packages")
    shutil.copyfile(src, target)
    os.chmod(target, stat.S_IMODE(src.stat().st_mode) & 0o755)
    elf = elf_deps(src.read_bytes())
    if elf is None:
        return
    if elf.interp:
        _copy_with_libs(tree, elf.interp.lstrip("/"), dest, seen)
    search = [p.lstrip("/") for p in elf.runpath if not p.startswith("$")] + list(LIB_DIRS)
    for lib in elf.needed:
        for d in search:
            candidate = f"{d}/{lib}"
            if (tree / candidate).exists():
                _copy_with_libs(tree, candidate, dest, seen)
                break
        else:
            raise ImageError(f"{rel} needs {lib}, which no downloaded package provides")


def _debugfs_ownership(root: Path) -> str:
    """debugfs commands making every file of the root filesystem root's."""
    lines = []
    for path in _walk(root):
        rel = "/" + path.relative_to(root).as_posix()
        if any(c in rel for c in '"\\\n \t'):
            raise ImageError(f"unexpected file name in the root filesystem: {rel!r}")
        lines.append(f'sif "{rel}" uid 0')
        lines.append(f'sif "{rel}" gid 0')
    return "\n".join(lines) + "\n"
