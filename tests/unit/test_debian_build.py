"""The pure parts of the debian-12 image build, and its cache, lock and fallback.

No debootstrap and no VM here: the build steps are replaced by a fake that
writes a small image directory, so the caching rules (key, verification,
lock, force, fallback, leftovers) are checked in milliseconds.  The real
build and boot are in ``tests/integration/test_debian_image.py``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from ketch.api.models import BuildBody, BuildResult
from ketch.api.routes import Route
from ketch.cli import verbs_images
from ketch.cli.parser import build_parser
from ketch.errors import ImageError, InvalidArgument, NotFound
from ketch.host import partitions
from ketch.images import debian
from ketch.images.built import file_sha256, recipe_source
from ketch.images.debian import AptSource
from ketch.images.debian import build as debian_build
from ketch.images.resolve import resolve
from ketch.model import BootSpec, ImageInfo
from ketch.progress import ListReporter, Reporter
from ketch.service import images as images_uc

POLICY = """\
Package files:
 100 /var/lib/dpkg/status
     release a=now
 500 https://deb.nodesource.com/node_20.x nodistro/main amd64 Packages
     release o=Node Source,n=nodistro,l=Node Source,c=main,b=amd64
     origin deb.nodesource.com
 500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
     release v=12,o=Debian,a=oldstable-security,n=bookworm-security,l=Debian-Security,c=main,b=amd64
     origin deb.debian.org
 500 http://deb.debian.org/debian bookworm-updates/main amd64 Packages
     release v=12-updates,o=Debian,a=oldstable-updates,n=bookworm-updates,l=Debian,c=main,b=amd64
     origin deb.debian.org
 500 http://deb.debian.org/debian/ bookworm/main amd64 Packages
     release v=12.15,o=Debian,a=oldstable,n=bookworm,l=Debian,c=main,b=amd64
     origin deb.debian.org
 500 http://deb.debian.org/debian bookworm/main i386 Packages
     release v=12.15,o=Debian,a=oldstable,n=bookworm,l=Debian,c=main,b=i386
     origin deb.debian.org
 500 http://deb.debian.org/debian bookworm/contrib amd64 Packages
     release v=12.15,o=Debian,a=oldstable,n=bookworm,l=Debian,c=contrib,b=amd64
     origin deb.debian.org
 500 http://deb.debian.org/debian trixie/main amd64 Packages
     release v=13,o=Debian,a=stable,n=trixie,l=Debian,c=main,b=amd64
     origin deb.debian.org
Pinned packages:
"""

MAIN = AptSource("http://deb.debian.org/debian", "bookworm", "main")
SOURCES = (
    MAIN,
    AptSource("http://deb.debian.org/debian", "bookworm", "contrib"),
    AptSource("http://deb.debian.org/debian", "bookworm-updates", "main"),
    AptSource("http://deb.debian.org/debian-security", "bookworm-security", "main"),
)


# ---- sources, key --------------------------------------------------------


def test_parse_sources_keeps_debian_bookworm_amd64_only() -> None:
    assert debian.parse_sources(POLICY) == sorted(SOURCES)


def test_sources_list_puts_the_release_first_and_joins_components() -> None:
    assert debian.sources_list(SOURCES).splitlines()[1:] == [
        "deb http://deb.debian.org/debian bookworm contrib main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
        "deb http://deb.debian.org/debian bookworm-updates main",
    ]


def test_mirror_is_the_bookworm_main_source() -> None:
    assert debian.mirror(SOURCES) == "http://deb.debian.org/debian"
    with pytest.raises(ImageError, match="no Debian mirror"):
        debian.mirror([AptSource("http://x", "bookworm-security", "main")])


def test_cache_key_is_stable_and_sensitive() -> None:
    versions = {"a": "1", "b": "2"}
    key = debian.cache_key(versions, SOURCES, "r")
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    assert debian.cache_key({"b": "2", "a": "1"}, list(reversed(SOURCES)), "r") == key
    assert debian.cache_key({"a": "1", "b": "3"}, SOURCES, "r") != key
    assert debian.cache_key({**versions, "c": "0"}, SOURCES, "r") != key
    assert debian.cache_key(versions, SOURCES[:1], "r") != key
    other_mirror = (AptSource("http://mirror.example/debian", "bookworm", "main"), *SOURCES[1:])
    assert debian.cache_key(versions, other_mirror, "r") != key
    assert debian.cache_key(versions, SOURCES, "s") != key


def test_recipe_digest_is_the_package() -> None:
    assert debian.recipe_digest() == debian.recipe_digest(
        recipe_source(Path(debian.__file__).parent)
    )
    assert debian.recipe_digest(b"a") != debian.recipe_digest(b"b")


def test_parse_dpkg_list() -> None:
    text = "sudo\t1.9.13p3-1+deb12u1\nbroken line\nlibc6\t2.36-9+deb12u10\n"
    assert debian.parse_dpkg_list(text) == {
        "sudo": "1.9.13p3-1+deb12u1",
        "libc6": "2.36-9+deb12u10",
    }


# ---- manifest ------------------------------------------------------------


def _manifest(key: str = "0123456789abcdef", files: Any = None) -> dict[str, Any]:
    return debian.make_manifest(
        key=key,
        versions={"cloud-init": "22.4.2-1"},
        packages={"cloud-init": "22.4.2-1", "libc6": "2.36"},
        sources=SOURCES,
        files=files or {debian.DISK: ("ab" * 32, 3)},
        kernel_version="6.1.0-99-cloud-amd64",
        recipe="r",
        built=datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC),
    )


def test_manifest_describes_a_disk_booted_by_firmware(tmp_path: Path) -> None:
    m = _manifest()
    assert m["files"] == {"disk.qcow2": "ab" * 32}
    assert m["version"] == "20261126" and m["firmware"] == "bios"
    assert "kernel" not in m and "initrd" not in m
    assert m["sources"][0] == "deb http://deb.debian.org/debian bookworm contrib"
    info = debian.image_info(m, tmp_path)
    assert info == ImageInfo(
        id="ketch:debian-12@0123456789abcdef",
        release="Debian 12 (bookworm), ketch build 2026-11-26",
        disk=str(tmp_path.resolve() / "disk.qcow2"),
        disk_format="qcow2",
        boot=BootSpec(firmware="bios"),
        aliases=("debian-12",),
        remote="ketch",
        version="20261126",
    )
    assert info.boot.kernel is None and info.boot.initrd is None and info.boot.cmdline is None


def test_image_info_refuses_other_manifests(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a format-1 debian-12"):
        debian.image_info({**_manifest(), "name": "tiny"}, tmp_path)
    with pytest.raises(ImageError, match="unknown firmware"):
        debian.image_info({**_manifest(), "firmware": "coreboot"}, tmp_path)
    broken = _manifest()
    del broken["key"]
    with pytest.raises(ImageError, match="malformed"):
        debian.image_info(broken, tmp_path)


def _image_dir(path: Path, key: str = "0123456789abcdef", data: bytes = b"QFI") -> Path:
    path.mkdir(parents=True)
    (path / debian.DISK).write_bytes(data)
    digest = file_sha256(path / debian.DISK)
    manifest = _manifest(key, {debian.DISK: (digest, len(data))})
    (path / debian.MANIFEST).write_text(json.dumps(manifest))
    return path


def test_load_and_verify(tmp_path: Path) -> None:
    d = _image_dir(tmp_path / "img")
    debian.verify_debian(d)
    assert debian.load_debian(d).disk == str(d / "disk.qcow2")
    (d / "disk.qcow2").write_bytes(b"QFJ")
    with pytest.raises(ImageError, match="does not match"):
        debian.verify_debian(d)
    (d / "disk.qcow2").unlink()
    with pytest.raises(ImageError, match="incomplete"):
        debian.load_debian(d)
    with pytest.raises(ImageError, match="is missing"):
        debian.load_debian(tmp_path)


def test_verify_refuses_an_image_with_a_kernel(tmp_path: Path) -> None:
    d = _image_dir(tmp_path / "img")
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["vmlinuz"] = "cd" * 32
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ImageError, match=r"exactly disk\.qcow2"):
        debian.verify_debian(d)


# ---- the boot sectors ----------------------------------------------------


def _boot_img() -> bytes:
    img = bytearray(range(256)) * 2
    img[510:512] = b"\x55\xaa"
    return bytes(img)


def test_boot_code_is_grub_told_where_core_img_lies() -> None:
    boot = _boot_img()
    code = debian.boot_code(boot)
    assert len(code) == 440
    assert struct.unpack_from("<Q", code, 0x5C) == (2048,)  # the BIOS boot partition
    assert code[0x64] == 0xFF
    assert code[0x66:0x68] == b"\x90\x90"
    untouched = [i for i in range(440) if not 0x5C <= i < 0x68]
    assert all(code[i] == boot[i] for i in untouched)
    with pytest.raises(ImageError, match="boot sector"):
        debian.boot_code(b"\0" * 512)


def test_layout_is_debians_bios_boot_esp_and_root_to_the_end() -> None:
    by_number = {p.number: p for p in debian.LAYOUT}
    assert by_number[14].type == str(partitions.BIOS_BOOT) and by_number[14].start == 2048
    assert by_number[15].type == str(partitions.ESP) and by_number[15].start == 8192
    root = by_number[1]
    assert root.start == by_number[15].start + by_number[15].sectors
    assert root.start + root.sectors == debian.TOTAL_SECTORS - 33  # up to the backup table
    # The whole table is valid: gpt() checks overlaps and bounds.
    head, _ = partitions.gpt(debian.TOTAL_SECTORS, debian.LAYOUT, disk_guid=debian.DISK_GUID)
    disk = partitions.protective_mbr(debian.TOTAL_SECTORS, boot_code=b"\xeb") + head
    table = partitions.parse_table(disk)
    assert partitions.firmware_support(table) == {"bios", "uefi"}


def _core_img(sectors: float) -> bytes:
    core = bytearray(int(sectors * 512))
    struct.pack_into("<QHH", core, 500, 2, 0, 0x820)
    return bytes(core)


def test_patch_core_points_the_blocklist_at_the_rest() -> None:
    core = _core_img(310.5)
    patched = debian.patch_core(core)
    assert len(patched) == len(core) and patched[:500] == core[:500]
    assert struct.unpack_from("<QHH", patched, 500) == (2049, 310, 0x820)
    assert struct.unpack_from("<QHH", debian.patch_core(core, core_sector=1), 500)[0] == 2
    with pytest.raises(ImageError, match="diskboot"):
        debian.patch_core(bytes(2048))
    assert debian.core_fits(_core_img(6144))
    assert not debian.core_fits(_core_img(6144.5))


# ---- command lines -------------------------------------------------------


UNSHARE = [
    "setpriv", "--pdeathsig", "KILL", "--",
    "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "--",
]  # fmt: skip


def test_debootstrap_argv() -> None:
    argv = debian.debootstrap_argv(Path("/b/root"), "http://m/debian")
    assert argv[: len(UNSHARE)] == UNSHARE
    assert argv[len(UNSHARE) :] == [
        "debootstrap", "--variant=minbase", "--arch=amd64", "--components=main",
        "bookworm", "/b/root", "http://m/debian",
    ]  # fmt: skip


def test_chroot_argv_mounts_inside_its_own_namespace() -> None:
    argv = debian.chroot_argv(Path("/b/root"), ["apt-get", "install", "sudo=1"])
    assert argv[: len(UNSHARE)] == UNSHARE
    assert argv[len(UNSHARE) : len(UNSHARE) + 2] == ["sh", "-euc"]
    assert argv[-5:] == ["ketch-chroot", "/b/root", "apt-get", "install", "sudo=1"]
    script = argv[len(UNSHARE) + 2]
    assert 'exec chroot "$root"' in script and "mount --bind" not in script
    assert "-o ro sysfs" in script


def test_mkfs_argv_writes_the_partition_at_its_offset() -> None:
    argv = debian.mkfs_argv(Path("/b/root"), Path("/b/disk.raw"))
    assert argv[0] == "mkfs.ext4"
    assert argv[argv.index("-L") + 1] == "cloudimg-rootfs"
    assert argv[argv.index("-E") + 1] == "offset=134217728"  # 128 MiB
    assert argv[argv.index("-d") + 1] == "/b/root"
    assert "^metadata_csum_seed" in argv[argv.index("-O") + 1]
    # Whole blocks only, ending before the backup partition table.
    blocks = (2 * 1024**3 - 128 * 1024**2 - 33 * 512) // 4096
    assert argv[-2:] == ["/b/disk.raw", str(blocks)]


def test_esp_argvs_make_a_fat_filesystem_with_the_removable_media_loader() -> None:
    mkfs, mmd, mcopy = debian.esp_argvs(Path("/b/esp.fat"), Path("/b/core.efi"))
    assert mkfs[:2] == ["mkfs.fat", "-C"] and mkfs[-2:] == ["/b/esp.fat", str(253952 // 2)]
    assert mmd == ["mmd", "-i", "/b/esp.fat", "::/EFI", "::/EFI/BOOT"]
    assert mcopy == ["mcopy", "-i", "/b/esp.fat", "/b/core.efi", "::/EFI/BOOT/BOOTX64.EFI"]


def test_convert_argv() -> None:
    raw, out = Path("/b/disk.raw"), Path("/b/disk.qcow2")
    assert debian.convert_argv(raw, out) == [
        "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2",
        "-o", "compression_type=zstd", "/b/disk.raw", "/b/disk.qcow2",
    ]  # fmt: skip
    assert "-o" not in debian.convert_argv(raw, out, zstd=False)


def test_mounts_below() -> None:
    info = (
        "22 27 0:21 / /proc rw - proc proc rw\n"
        "90 27 0:50 / /b/.build-x/root/proc rw - proc proc rw\n"
        "91 90 0:51 / /b/.build-x/root/proc/sys/fs/binfmt_misc rw - binfmt binfmt rw\n"
        "92 27 0:52 / /b/.build-x/with\\040space rw - tmpfs tmpfs rw\n"
        "93 27 0:53 / /b/.build-xy rw - tmpfs tmpfs rw\n"
    )
    assert debian.mounts_below(Path("/b/.build-x"), info) == [
        "/b/.build-x/root/proc/sys/fs/binfmt_misc",
        "/b/.build-x/root/proc",
        "/b/.build-x/with space",
    ]
    assert debian.mounts_below(Path("/elsewhere"), info) == []


def test_remove_build_never_deletes_through_a_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = tmp_path / ".build-x"
    (build / "root" / "dev").mkdir(parents=True)
    stuck = str(build / "root" / "dev")
    monkeypatch.setattr(debian_build, "mounts_below", lambda path, mountinfo=None: [stuck])
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: None)
    debian_build._remove_build(build)
    assert build.is_dir()
    monkeypatch.setattr(debian_build, "mounts_below", lambda path, mountinfo=None: [])
    debian_build._remove_build(build)
    assert not build.exists()


# ---- what goes into the image --------------------------------------------


def test_cloud_config_default_user_is_ubuntu_with_passwordless_sudo() -> None:
    cfg = yaml.safe_load(debian.CLOUD_CFG)
    assert cfg["datasource_list"][0] == "NoCloud"
    user = cfg["system_info"]["default_user"]
    assert user["name"] == "ubuntu" and user["lock_passwd"] is True
    assert user["sudo"] == ["ALL=(ALL) NOPASSWD:ALL"]
    assert "sudo" in user["groups"]


def test_root_is_found_by_label_everywhere() -> None:
    files = {rel: text for rel, _, text in debian.CONFIG_FILES}
    fstab = [line.split() for line in files["etc/fstab"].splitlines()]
    assert fstab[0][:3] == ["LABEL=cloudimg-rootfs", "/", "ext4"]
    assert fstab[1][:3] == ["LABEL=UEFI", "/boot/efi", "vfat"] and "nofail" in fstab[1][3]
    assert f"linux /vmlinuz {debian.CMDLINE}" in files["boot/grub/grub.cfg"]
    assert "root=LABEL=cloudimg-rootfs" in debian.CMDLINE
    assert f"--label {debian.ROOT_LABEL}" in files[debian.GRUB_EARLY]
    assert "part_gpt" in debian.GRUB_BIOS_MODULES and "fat" in debian.GRUB_EFI_MODULES
    modules = {rel: text for rel, _, text in debian.PRE_INSTALL_FILES}
    assert "virtio_blk" in modules["usr/share/initramfs-tools/modules.d/ketch-virtio.conf"]


def test_packages_cover_what_a_cloud_image_needs() -> None:
    for pkg in (
        "linux-image-cloud-amd64", "systemd", "openssh-server", "cloud-init",
        "cloud-guest-utils", "qemu-guest-agent", "sudo", "initramfs-tools", "grub-pc-bin",
        "grub-efi-amd64-bin",
    ):  # fmt: skip
        assert pkg in debian.PACKAGES


# ---- cache, lock, force, fallback (fake build steps) ---------------------


class FakeBuild:
    """Stands in for debian._build: writes an image directory, counts builds."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.builds = 0
        self.fail = fail
        self.started = asyncio.Event()
        # A build holds its lock until this is true (bounded), e.g. until a second
        # build says it waits: without it, a loaded machine may let the first build
        # end before the second one reaches the lock.
        self.hold_until: Callable[[], bool] | None = None

    async def __call__(self, build: Path, p: debian.Plan, reporter: Reporter) -> None:
        self.builds += 1
        reporter.step("Bootstrapping (fake)")
        self.started.set()
        await asyncio.sleep(0)
        for _ in range(2000):  # bounded: at most ~10 s, never a pass criterion
            if self.hold_until is None or self.hold_until():
                break
            await asyncio.sleep(0.005)
        if self.fail is not None:
            raise self.fail
        image = build / "image"
        image.mkdir()
        (image / debian.DISK).write_bytes(b"QFI\xfb fake " + p.key.encode())
        digest = file_sha256(image / debian.DISK)
        manifest = _manifest(p.key, {debian.DISK: (digest, (image / debian.DISK).stat().st_size)})
        (image / debian.MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBuild:
    builder = FakeBuild()
    state = {"key": "aaaaaaaaaaaaaaaa"}

    async def plan() -> debian.Plan:
        return debian.Plan(SOURCES, {"sudo": "1"}, "r", state["key"])

    monkeypatch.setattr(debian_build, "plan", plan)
    monkeypatch.setattr(debian_build, "_build", builder)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    builder.state = state  # type: ignore[attr-defined]
    return builder


def test_build_then_cache_hit_without_steps(tmp_path: Path, fake: FakeBuild) -> None:
    first = asyncio.run(debian.build_debian(tmp_path))
    assert fake.builds == 1 and first.id == "ketch:debian-12@aaaaaaaaaaaaaaaa"
    reporter = ListReporter()
    assert asyncio.run(debian.build_debian(tmp_path, reporter)) == first
    assert fake.builds == 1 and reporter.steps == []
    assert sorted(p.name for p in (tmp_path / "debian-12").iterdir()) == [
        ".lock",
        "aaaaaaaaaaaaaaaa",
    ]


def test_concurrent_builds_share_one_build_and_force_rebuilds(
    tmp_path: Path, fake: FakeBuild
) -> None:
    reporters = [ListReporter(), ListReporter()]
    fake.hold_until = lambda: any(
        "Waiting for another build" in s for r in reporters for s in r.steps
    )

    async def both() -> list[ImageInfo]:
        return list(await asyncio.gather(*(debian.build_debian(tmp_path, r) for r in reporters)))

    first, second = asyncio.run(both())
    assert first == second and fake.builds == 1
    assert any("Waiting for another build" in s for r in reporters for s in r.steps)
    fake.hold_until = None
    asyncio.run(debian.build_debian(tmp_path, force=True))
    assert fake.builds == 2
    assert [p.name for p in (tmp_path / "debian-12").iterdir() if p.name != ".lock"] == [
        "aaaaaaaaaaaaaaaa"
    ]


def test_a_new_key_builds_again_and_a_damaged_image_is_rebuilt(
    tmp_path: Path, fake: FakeBuild
) -> None:
    first = asyncio.run(debian.build_debian(tmp_path))
    fake.state["key"] = "bbbbbbbbbbbbbbbb"  # type: ignore[attr-defined]
    second = asyncio.run(debian.build_debian(tmp_path))
    assert fake.builds == 2 and second.id != first.id
    Path(second.disk).write_bytes(b"damaged")
    assert asyncio.run(debian.build_debian(tmp_path)).id == second.id
    assert fake.builds == 3


def test_fetch_failure_falls_back_to_an_earlier_image(tmp_path: Path, fake: FakeBuild) -> None:
    first = asyncio.run(debian.build_debian(tmp_path))
    fake.state["key"] = "cccccccccccccccc"  # type: ignore[attr-defined]
    fake.fail = debian_build._FetchFailed("debootstrap failed: offline")
    reporter = ListReporter()
    assert asyncio.run(debian.build_debian(tmp_path, reporter)) == first
    assert "offline" in reporter.warnings[0]
    with pytest.raises(ImageError, match="offline"):
        asyncio.run(debian.build_debian(tmp_path, force=True))
    leftovers = [p.name for p in (tmp_path / "debian-12").iterdir() if p.name.startswith(".b")]
    assert leftovers == []


def test_other_failures_do_not_fall_back(tmp_path: Path, fake: FakeBuild) -> None:
    asyncio.run(debian.build_debian(tmp_path))
    fake.state["key"] = "dddddddddddddddd"  # type: ignore[attr-defined]
    fake.fail = ImageError("mkfs.ext4 exploded")
    with pytest.raises(ImageError, match="exploded"):
        asyncio.run(debian.build_debian(tmp_path))


def test_leftovers_of_an_interrupted_build_are_removed(tmp_path: Path, fake: FakeBuild) -> None:
    stale = tmp_path / "debian-12" / ".build-aaaaaaaaaaaaaaaa-x" / "root"
    stale.mkdir(parents=True)
    asyncio.run(debian.build_debian(tmp_path))
    assert not stale.parent.exists()


def test_a_failed_build_keeps_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def plan() -> debian.Plan:
        return debian.Plan(SOURCES, {"sudo": "1"}, "r", "eeeeeeeeeeeeeeee")

    async def steps(build: Path, root: Path, image: Path, log: Path, *rest: Any) -> None:
        log.write_text("E: Unable to locate package sudo\n")
        raise ImageError("installing packages (apt-get) failed (exit 100)")

    monkeypatch.setattr(debian_build, "plan", plan)
    monkeypatch.setattr(debian_build, "_steps", steps)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ImageError) as err:
        asyncio.run(debian.build_debian(tmp_path))
    kept = tmp_path / "debian-12" / debian.FAILED_LOG
    assert err.value.hint == f"the build's log: {kept}"
    assert kept.read_text() == "E: Unable to locate package sudo\n"
    assert [p.name for p in kept.parent.iterdir() if p.name.startswith(".build")] == []


def test_building_needs_root(
    tmp_path: Path, fake: FakeBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageError, match="needs root"):
        asyncio.run(debian.build_debian(tmp_path))
    assert fake.builds == 0


# ---- routing: resolve, the service, the CLI ------------------------------

INFO = ImageInfo(
    id="ketch:debian-12@k", release="r", disk="/d", disk_format="qcow2", boot=BootSpec()
)


async def _no_tiny(reporter: Reporter) -> ImageInfo:
    raise AssertionError("tiny was not asked for")


@pytest.mark.parametrize("ref", ["debian-12", "ketch:debian-12", " debian-12 "])
def test_resolve_routes_debian_12_to_its_builder(ref: str, tmp_path: Path) -> None:
    calls: list[Reporter] = []

    async def build_debian(reporter: Reporter) -> ImageInfo:
        calls.append(reporter)
        return INFO

    reporter = ListReporter()
    got = asyncio.run(
        resolve(
            ref,
            remotes={},
            vault=None,  # type: ignore[arg-type]
            build_tiny=_no_tiny,
            reporter=reporter,
            build_debian=build_debian,
        )
    )
    assert got == INFO and calls == [reporter]


def test_resolve_names_debian_12_among_the_builtin_images() -> None:
    async def build_debian(reporter: Reporter) -> ImageInfo:
        return INFO

    with pytest.raises(NotFound) as err:
        asyncio.run(
            resolve(
                "ketch:debian-11",
                remotes={},
                vault=None,  # type: ignore[arg-type]
                build_tiny=_no_tiny,
                reporter=ListReporter(),
                build_debian=build_debian,
            )
        )
    assert err.value.hint == "it offers only: tiny, debian-12"


class FakeImages:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    async def build_tiny(self, reporter: Reporter, *, force: bool = False) -> ImageInfo:
        self.calls.append(("tiny", force))
        return INFO

    async def build_debian(self, reporter: Reporter, *, force: bool = False) -> ImageInfo:
        self.calls.append(("debian-12", force))
        return INFO


def test_service_build_routes_by_name() -> None:
    fake = FakeImages()
    asyncio.run(images_uc.build(fake, force=True, name="debian-12"))  # type: ignore[arg-type]
    asyncio.run(images_uc.build(fake))  # type: ignore[arg-type]
    assert fake.calls == [("debian-12", True), ("tiny", False)]
    with pytest.raises(InvalidArgument, match="unknown image"):
        asyncio.run(images_uc.build(fake, name="debian-11"))  # type: ignore[arg-type]


def test_cli_image_build_sends_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def stream(route: Route[BuildBody, BuildResult], body: BuildBody) -> BuildResult:
        sent.append((route.path, msgspec.to_builtins(body)))
        return BuildResult(id=INFO.id, disk=INFO.disk, release=INFO.release)

    monkeypatch.setattr(verbs_images, "stream", stream)
    args = build_parser().parse_args(["image", "build", "debian-12", "--force"])
    assert verbs_images.cmd_image(args) == 0
    assert sent == [("/v1/images/build", {"name": "debian-12", "force": True})]
    args = build_parser().parse_args(["image", "build", "debian-11"])
    with pytest.raises(InvalidArgument, match="unknown image") as err:
        verbs_images.cmd_image(args)
    assert err.value.hint == "ketch can build: tiny, debian-12"
