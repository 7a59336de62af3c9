"""Staging the ``tiny`` image's trees (pure file work, no host tools): ELF
dependencies, kernel modules, the newc cpio of the initramfs, the root tree and
the debugfs script that makes its files root's."""

from __future__ import annotations

import os
import shutil
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch.errors import ImageError
from ketch.images.tiny.recipe import (
    GUEST_DIR,
    GUEST_FILES,
    INITRD_MODULES,
    LIB_DIRS,
    ROOT_DIRS,
    ROOT_MODULES,
    ROOT_PROGRAMS,
    ROOT_SYMLINKS,
)


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

    for path in walk(staging):
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


def walk(root: Path) -> Iterator[Path]:
    """Every path below ``root``, parents first, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted([*dirnames, *filenames]):
            yield base / name


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


def stage_initrd(
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


def stage_root(
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


def busybox_links(dest: Path, applets: Iterable[str]) -> None:
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


def debugfs_ownership(root: Path) -> str:
    """debugfs commands making every file of the root filesystem root's."""
    lines = []
    for path in walk(root):
        rel = "/" + path.relative_to(root).as_posix()
        if any(c in rel for c in '"\\\n \t'):
            raise ImageError(f"unexpected file name in the root filesystem: {rel!r}")
        lines.append(f'sif "{rel}" uid 0')
        lines.append(f'sif "{rel}" gid 0')
    return "\n".join(lines) + "\n"
