"""Building the ``tiny`` image: asking apt which versions are current, and the
build itself (download, unpack, initramfs, root filesystem, qcow2, manifest)."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ketch.errors import HostCommandError, ImageError, Timeout
from ketch.host.run import tool
from ketch.images.built import file_sha256, parse_policy
from ketch.images.tiny.manifest import (
    BUILT,
    cache_key,
    fresh_build,
    guest_digest,
    load_tiny,
    make_manifest,
    newest_of_key,
)
from ketch.images.tiny.recipe import (
    DISK,
    IMAGE_FILES,
    INITRD,
    KERNEL,
    KERNEL_META,
    MANIFEST,
    NAME,
    PACKAGES,
    ROOT_LABEL,
    ROOT_SIZE,
    USERLAND_PACKAGES,
)
from ketch.images.tiny.stage import (
    busybox_links,
    debugfs_ownership,
    parse_modules_dep,
    stage_initrd,
    stage_root,
    write_cpio,
)
from ketch.model import ImageInfo
from ketch.progress import NULL, Reporter


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
        found = await asyncio.to_thread(fresh_build, images_dir)
        if found is not None:
            return found
    try:
        versions = await candidate_versions()
    except (ImageError, HostCommandError, Timeout) as exc:
        return await BUILT.fall_back(tiny_dir, None, exc, reporter, force)
    key = cache_key(versions, await asyncio.to_thread(guest_digest))
    if not force:
        cached = await asyncio.to_thread(newest_of_key, tiny_dir, key)
        if cached is not None:
            return cached
    try:
        tiny_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create {tiny_dir}: {exc}") from exc
    async with BUILT.locked(tiny_dir / ".lock", reporter):
        if not force:
            cached = await asyncio.to_thread(newest_of_key, tiny_dir, key)
            if cached is not None:
                return cached
        BUILT.clean_leftovers(tiny_dir)
        final = tiny_dir / key
        if final.exists() or final.is_symlink():
            final = tiny_dir / f"{key}-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S%fZ}"
        build = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=tiny_dir))
        try:
            try:
                await _build(build, key, final.name, versions, reporter)
            except _DownloadFailed as exc:
                return await BUILT.fall_back(tiny_dir, key, exc, reporter, force)
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
    done = await tool(["apt-cache", "policy", *PACKAGES], timeout=120, hint="run 'apt-get update'")
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
        await tool(["apt-get", "download", *wanted], cwd=debs, timeout=1800)
    except HostCommandError as exc:
        raise _DownloadFailed(
            f"cannot download the packages of the tiny image: {exc}",
            hint="check the network and run 'apt-get update'",
        ) from exc

    reporter.step("Unpacking packages")
    packages: dict[str, str] = {}
    deb_files = sorted(debs.glob("*.deb"))
    for i, deb in enumerate(deb_files):
        fields = (await tool(["dpkg-deb", "-f", str(deb), "Package", "Version"])).text
        info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
        name = info.get("Package", deb.name)
        packages[name] = info.get("Version", "")
        dest = kernel_tree if name == kernel_pkg else tree
        await tool(["dpkg-deb", "-x", str(deb), str(dest)], hint=space)
        reporter.progress("Unpacking packages", i + 1, len(deb_files))
    missing = {kernel_pkg, *USERLAND_PACKAGES} - set(packages)
    if missing:
        raise ImageError(f"apt-get download did not fetch {', '.join(sorted(missing))}")

    module_dirs = list((kernel_tree / "lib" / "modules").iterdir())
    if len(module_dirs) != 1:
        raise ImageError(f"{kernel_pkg} does not hold exactly one kernel")
    kver = module_dirs[0].name
    busybox = tree / "bin" / "busybox"
    await tool([str(busybox), "depmod", "-b", str(kernel_tree), kver])
    deps = parse_modules_dep((module_dirs[0] / "modules.dep").read_text())

    reporter.step("Building the initramfs")
    initrd_root = work / "initrd"
    await asyncio.to_thread(stage_initrd, initrd_root, tree, kernel_tree, kver, deps)
    await tool([str(busybox), "depmod", "-b", str(initrd_root), kver])
    cpio = await asyncio.to_thread(
        write_cpio, initrd_root, devices=[("dev/console", stat.S_IFCHR | 0o600, 5, 1)]
    )
    await asyncio.to_thread((image / INITRD).write_bytes, gzip.compress(cpio, 9, mtime=0))
    shutil.copyfile(kernel_tree / "boot" / f"vmlinuz-{kver}", image / KERNEL)

    reporter.step("Building the root filesystem")
    root = work / "root"
    await asyncio.to_thread(stage_root, root, tree, kernel_tree, kver, deps)
    busybox_list = (await tool([str(busybox), "--list-full"])).text.split()
    await asyncio.to_thread(busybox_links, root, busybox_list)
    await tool([str(busybox), "depmod", "-b", str(root), kver])
    raw = work / "root.ext4"
    with raw.open("wb") as f:
        f.truncate(ROOT_SIZE)
    await tool(
        [
            "mkfs.ext4", "-F", "-q", "-b", "4096", "-T", "default", "-L", ROOT_LABEL,
            "-E", "root_owner=0:0", "-d", str(root), str(raw),
        ],
        hint=space,
    )  # fmt: skip
    script = work / "debugfs.cmds"
    script.write_text(debugfs_ownership(root))
    done = await tool(["debugfs", "-w", "-f", str(script), str(raw)])
    problems = [
        line
        for line in done.stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("debugfs ")
    ]
    if problems:
        raise ImageError("debugfs could not fix file ownership: " + "; ".join(problems[:5]))
    await tool(
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
    done = await tool(
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
