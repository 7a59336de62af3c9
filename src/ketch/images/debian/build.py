"""Building the ``debian-12`` image: asking apt what a build would use (its key),
then debootstrap, the packages and configuration in chroots (each in its own
mount and PID namespaces), the disk and the manifest."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import HostCommandError, ImageError, KetchError, Timeout
from ketch.host.run import missing_tool_hint, tool
from ketch.images.built import file_sha256, parse_policy
from ketch.images.debian.disk import (
    convert_argv,
    core_fits,
    esp_argvs,
    mkfs_argv,
    write_boot_area,
)
from ketch.images.debian.manifest import (
    BUILT,
    AptSource,
    cache_key,
    load_debian,
    make_manifest,
    mirror,
    parse_dpkg_list,
    parse_sources,
    recipe_digest,
    sources_list,
)
from ketch.images.debian.recipe import (
    ARCH,
    BOOT_IMG,
    CHROOT_SCRIPT,
    CONFIG_FILES,
    CONFIGURE_SCRIPT,
    CORE_EFI,
    CORE_IMG,
    DISK,
    DISK_SIZE,
    FAILED_LOG,
    INSTALL_SCRIPT,
    MANIFEST,
    NAME,
    PACKAGES,
    PRE_INSTALL_FILES,
    SUITE,
)
from ketch.model import ImageInfo
from ketch.progress import NULL, Reporter


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
    policy = await tool(["apt-cache", "policy"], timeout=120, hint="run 'apt-get update'")
    sources = tuple(parse_sources(policy.text))
    mirror(sources)
    done = await tool(["apt-cache", "policy", *PACKAGES], timeout=120, hint="run 'apt-get update'")
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
        return await BUILT.fall_back(base, None, exc, reporter, force)
    final = base / p.key
    if not force:
        cached = await asyncio.to_thread(BUILT.cached, final)
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
    async with BUILT.locked(base / ".lock", reporter):
        if not force:
            cached = await asyncio.to_thread(BUILT.cached, final)
            if cached is not None:
                return cached
        await asyncio.to_thread(BUILT.clean_leftovers, base, _remove_build)
        build = Path(tempfile.mkdtemp(prefix=f".build-{p.key}-", dir=base))
        try:
            try:
                await _build(build, p, reporter)
            except _FetchFailed as exc:
                return await BUILT.fall_back(base, p.key, exc, reporter, force)
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
                list(argv), None, str(exc), hint=missing_tool_hint(argv[0])
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
    listing = await tool(
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
    await tool(mkfs_argv(root, raw), timeout=1800)
    esp = build / "esp.fat"
    for argv in esp_argvs(esp, root / CORE_EFI):
        await tool(argv, timeout=300)
    boot_img = (root / BOOT_IMG).read_bytes()
    core_img = (root / CORE_IMG).read_bytes()
    if not core_fits(core_img):
        raise ImageError("GRUB's core.img does not fit in the BIOS boot partition")
    await asyncio.to_thread(write_boot_area, raw, boot_img, core_img, esp)
    await asyncio.to_thread(_remove_build, root)

    reporter.step("Compressing the disk")
    disk = image / DISK
    try:
        await tool(convert_argv(raw, disk), timeout=1800)
    except HostCommandError:
        # A QEMU without zstd: zlib is slower, but every QEMU reads it.
        disk.unlink(missing_ok=True)
        await tool(convert_argv(raw, disk, zstd=False), timeout=3600)
    raw.unlink()

    reporter.step("Writing the manifest")
    manifest = make_manifest(
        key=p.key,
        versions=p.versions,
        packages=packages,
        sources=p.sources,
        files={DISK: (await asyncio.to_thread(file_sha256, disk), disk.stat().st_size)},
        kernel_version=kver,
        recipe=p.recipe,
        built=datetime.datetime.now(datetime.UTC),
    )
    (image / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for path in (image, *image.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
