"""The debian-12 image: built offline with debootstrap, booted through SeaBIOS
and GRUB, and through UEFI (OVMF) and GRUB, configured by the real cloud-init
from ketch's merged user data.

The image is built once into the test cache (``$KETCH_TEST_CACHE`` or
``~/.cache/ketch-test/images``) and rebuilt only when its packages or recipe
change; the session's storage root gets hard links to it.  One instance per
firmware for the module, launched through the real CLI.  Bounded waits only: no test
asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch, unique

from ketch.images import debian
from ketch.model import ImageInfo
from ketch.progress import ListReporter

TOOLS = (
    "qemu-system-x86_64", "qemu-img", "ssh", "debootstrap", "mkfs.ext4", "mkfs.fat", "mcopy",
)  # fmt: skip
pytestmark = [
    pytest.mark.vm,
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in TOOLS),
        reason="needs QEMU, OpenSSH, debootstrap, e2fsprogs, dosfstools and mtools",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="building the debian-12 image needs root"),
]

DISK = 4 * 1024**3
READY_TIMEOUT = "1200"  # seconds; a bound against hangs under TCG, not a performance target
USER_DATA = """\
#cloud-config
write_files:
  - path: /etc/ketch-test/hello.txt
    content: "hello from write_files\\n"
  - path: /etc/ketch-test/secret
    content: "s3cret\\n"
    permissions: "0600"
runcmd:
  - echo ran >> /var/tmp/runcmd-count
  - [sh, -c, "id -u > /var/tmp/runcmd-uid"]
"""


def _cache() -> Path:
    return Path(os.environ.get("KETCH_TEST_CACHE") or "~/.cache/ketch-test/images").expanduser()


@pytest.fixture(scope="session")
def debian_image() -> ImageInfo:
    """The debian-12 image, built once into the persistent test cache."""
    cache = _cache()
    cache.mkdir(parents=True, exist_ok=True)
    return asyncio.run(debian.build_debian(cache))


def _link_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)

    def link(s: str, d: str) -> None:
        try:
            Path(d).hardlink_to(s)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


@pytest.fixture(scope="module")
def deb(
    ketch: Ketch, debian_image: ImageInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A debian-12 instance with user data and a 4 GiB disk."""
    src = Path(debian_image.disk).parent
    _link_tree(src, ketch.root / "vault" / "built" / debian.NAME / src.name)
    user_data = tmp_path_factory.mktemp("deb") / "user-data.yaml"
    user_data.write_text(USER_DATA)
    with ketch.launched(
        "deb", "--disk", "4G", "--cloud-init", str(user_data), "--timeout", READY_TIMEOUT,
        image=debian.NAME, timeout=float(READY_TIMEOUT) + 600,
    ) as name:  # fmt: skip
        yield name


@pytest.fixture(scope="module")
def deb_uefi(ketch: Ketch, deb: str) -> Iterator[str]:
    """A debian-12 instance booted through UEFI, from the same image."""
    with ketch.launched(
        "debefi", "--firmware", "uefi", "--memory", "768M", "--timeout", READY_TIMEOUT,
        image=debian.NAME, timeout=float(READY_TIMEOUT) + 600,
    ) as name:  # fmt: skip
        yield name


def sh(ketch: Ketch, name: str, command: str) -> str:
    return ketch.exec(name, "sh", "-c", command)


def test_the_image_is_a_disk_only(debian_image: ImageInfo) -> None:
    files = sorted(p.name for p in Path(debian_image.disk).parent.iterdir())
    assert files == ["disk.qcow2", "manifest.json"]
    assert debian_image.boot.kernel is None and debian_image.boot.firmware == "bios"
    debian.verify_debian(Path(debian_image.disk).parent)


def test_ketch_image_build_finds_it_cached(ketch: Ketch, deb: str, debian_image: ImageInfo) -> None:
    done = ketch.run("image", "build", "debian-12")
    assert f"Built: {debian_image.id} " in done.stdout


def test_booted_through_firmware_and_grub(ketch: Ketch, deb: str) -> None:
    qemu_log = (ketch.root / "instances" / deb / "qemu.log").read_text()
    assert "-kernel" not in qemu_log and "bootindex=0" in qemu_log
    cmdline = sh(ketch, deb, "cat /proc/cmdline")
    assert cmdline.startswith("BOOT_IMAGE=/vmlinuz ")  # GRUB put it there
    assert "root=LABEL=cloudimg-rootfs" in cmdline
    assert sh(ketch, deb, "findmnt -no SOURCE /").strip() == "/dev/vda1"
    # The EFI system partition is mounted where Debian's images mount it.
    assert sh(ketch, deb, "findmnt -no SOURCE,FSTYPE /boot/efi").split() == ["/dev/vda15", "vfat"]
    assert sh(ketch, deb, "sudo ls /boot/efi/EFI/BOOT").split() == ["BOOTX64.EFI"]


def test_real_cloud_init_ran_the_user_data(ketch: Ketch, deb: str) -> None:
    assert sh(ketch, deb, "hostname").strip() == deb
    status = sh(ketch, deb, "cloud-init status")
    assert status.split() == ["status:", "done"]
    assert sh(ketch, deb, "cat /etc/ketch-test/hello.txt") == "hello from write_files\n"
    assert sh(ketch, deb, "sudo stat -c '%a %U' /etc/ketch-test/secret").split() == ["600", "root"]
    assert sh(ketch, deb, "cat /var/tmp/runcmd-count") == "ran\n"
    assert sh(ketch, deb, "cat /var/tmp/runcmd-uid").strip() == "0"
    datasource = sh(ketch, deb, "sudo cat /run/cloud-init/status.json")
    assert "DataSourceNoCloud" in datasource


def test_cloud_init_accepts_the_merged_config(ketch: Ketch, deb: str) -> None:
    done = ketch.run("exec", deb, "--", "sudo", "cloud-init", "schema", "--system", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config: system userdata" in done.stdout
    user_data = sh(ketch, deb, "sudo cat /var/lib/cloud/instance/user-data.txt")
    assert "ssh_keys:" in user_data and "ssh_authorized_keys:" in user_data


def test_default_user_and_pinned_host_key(ketch: Ketch, deb: str) -> None:
    assert sh(ketch, deb, "id -un").strip() == "ubuntu"
    assert sh(ketch, deb, "sudo -n id -u").strip() == "0"
    pinned = (ketch.root / "instances" / deb / "ssh_host_ed25519_key.pub").read_text().split()[1]
    keys = sh(ketch, deb, "ls /etc/ssh/ | grep '^ssh_host_'").split()
    assert keys == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    # cloud-init 22.4 writes the public half 0600 too, hence sudo.
    assert sh(ketch, deb, "sudo cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1] == pinned


def test_root_filesystem_grew_to_the_disk(ketch: Ketch, deb: str) -> None:
    part = int(sh(ketch, deb, "lsblk -bno SIZE /dev/vda1").strip())
    # The root partition starts after the BIOS boot and EFI system partitions
    # (128 MiB) and ends before the backup partition table.
    start = debian.ROOT.start * 512
    assert DISK - start - 1024**2 <= part <= DISK - start
    fs = int(sh(ketch, deb, "df -B1 --output=size / | tail -n 1").strip())
    assert 0.9 * DISK <= fs <= DISK  # ext4's own metadata takes a few percent


def test_suspend_start_keeps_the_boot_and_stop_start_reboots(ketch: Ketch, deb: str) -> None:
    boot_id = ketch.boot_id(deb)
    ketch.run("suspend", deb)
    assert ketch.state(deb) == "Suspended"
    ketch.run("start", deb, timeout=float(READY_TIMEOUT))
    assert ketch.state(deb) == "Running"
    assert ketch.boot_id(deb) == boot_id

    ketch.run("stop", deb)
    assert ketch.state(deb) == "Stopped"
    ketch.run("start", deb, timeout=float(READY_TIMEOUT) + 600)
    assert ketch.boot_id(deb) != boot_id
    # Per-instance work ran once; per-boot state is back.
    assert sh(ketch, deb, "cat /var/tmp/runcmd-count") == "ran\n"
    assert sh(ketch, deb, "cloud-init status").split() == ["status:", "done"]
    assert sh(ketch, deb, "hostname").strip() == deb


def test_second_build_is_a_cache_hit(debian_image: ImageInfo) -> None:
    image_dir = Path(debian_image.disk).parent
    before = {p.name: p.stat().st_mtime_ns for p in image_dir.iterdir()}
    reporter = ListReporter()
    assert asyncio.run(debian.build_debian(_cache(), reporter)) == debian_image
    assert reporter.steps == []
    assert {p.name: p.stat().st_mtime_ns for p in image_dir.iterdir()} == before


def test_the_image_was_never_written(debian_image: ImageInfo) -> None:
    subprocess.run(["qemu-img", "check", "-U", debian_image.disk], check=True, capture_output=True)
    debian.verify_debian(Path(debian_image.disk).parent)


# ---- UEFI --------------------------------------------------------------------


def test_uefi_boot_goes_through_ovmf_and_grub(ketch: Ketch, deb_uefi: str) -> None:
    idir = ketch.root / "instances" / deb_uefi
    qemu_log = (idir / "qemu.log").read_text()
    assert "pflash0=efi-code,pflash1=efivars" in qemu_log and "-kernel" not in qemu_log
    assert (idir / "efivars.fd").is_file()
    assert sh(ketch, deb_uefi, "test -d /sys/firmware/efi && echo efi").strip() == "efi"
    assert sh(ketch, deb_uefi, "cat /proc/cmdline").startswith("BOOT_IMAGE=/vmlinuz ")
    assert sh(ketch, deb_uefi, "cloud-init status").split() == ["status:", "done"]
    assert sh(ketch, deb_uefi, "hostname").strip() == deb_uefi
    assert sh(ketch, deb_uefi, "findmnt -no SOURCE /").strip() == "/dev/vda1"


def test_bios_instance_has_no_efi(ketch: Ketch, deb: str) -> None:
    assert not (ketch.root / "instances" / deb / "efivars.fd").exists()
    assert sh(ketch, deb, "test -d /sys/firmware/efi && echo efi || echo bios").strip() == "bios"


def test_uefi_suspend_resume_keeps_the_boot_and_the_variables(ketch: Ketch, deb_uefi: str) -> None:
    idir = ketch.root / "instances" / deb_uefi
    efivars = idir / "efivars.fd"
    boot_id = ketch.boot_id(deb_uefi)
    # A variable the guest writes (a boot entry would do the same) must survive.
    sh(ketch, deb_uefi, "sudo mount -t efivarfs efivarfs /sys/firmware/efi/efivars || true")
    guid = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # EFI_GLOBAL_VARIABLE: readable as is
    before = sh(ketch, deb_uefi, f"sudo od -An -tx1 /sys/firmware/efi/efivars/BootOrder-{guid}")
    ketch.run("suspend", deb_uefi)
    assert ketch.state(deb_uefi) == "Suspended"
    ketch.run("start", deb_uefi, timeout=float(READY_TIMEOUT))
    assert ketch.state(deb_uefi) == "Running"
    assert ketch.boot_id(deb_uefi) == boot_id
    started = [line for line in (idir / "qemu.log").read_text().splitlines() if line[:2] == "$ "]
    assert "-S" in started[-1].split() and "-loadvm" not in started[-1]  # loaded over QMP

    # Suspended, and the variable store lost: the resumed guest has its
    # variables back (they are part of the saved state) and so does the store.
    ketch.run("suspend", deb_uefi)
    efivars.unlink()
    ketch.run("start", deb_uefi, timeout=float(READY_TIMEOUT))
    assert ketch.boot_id(deb_uefi) == boot_id
    after = sh(ketch, deb_uefi, f"sudo od -An -tx1 /sys/firmware/efi/efivars/BootOrder-{guid}")
    assert after == before
    fresh = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    assert efivars.read_bytes() != fresh.read_bytes()  # written back from the saved state

    # Stopped, its variable store damaged: doctor moves it aside, start makes a
    # fresh one and boots.
    ketch.run("stop", deb_uefi)
    assert ketch.state(deb_uefi) == "Stopped"
    with efivars.open("ab") as f:
        f.write(b"garbage!")  # no longer the firmware's size: QEMU would refuse it
    done = ketch.run("doctor", deb_uefi, "--format", "json", check=False)
    assert done.returncode == 2 and "efivars-damaged" in done.stdout
    ketch.run("doctor", "--fix", deb_uefi)
    assert not efivars.exists()
    assert list(idir.glob("efivars.fd.damaged-*"))  # kept, never deleted
    ketch.run("start", deb_uefi, timeout=float(READY_TIMEOUT) + 600)
    assert ketch.boot_id(deb_uefi) != boot_id
    assert efivars.is_file()
    assert sh(ketch, deb_uefi, "test -d /sys/firmware/efi && echo efi").strip() == "efi"


def test_clone_of_a_uefi_instance_copies_its_variables(ketch: Ketch, deb_uefi: str) -> None:
    ketch.run("stop", deb_uefi)
    clone = unique("debefi-clone")
    ketch.run("clone", deb_uefi, "--name", clone)
    try:
        copied = ketch.root / "instances" / clone / "efivars.fd"
        source = ketch.root / "instances" / deb_uefi / "efivars.fd"
        assert copied.read_bytes() == source.read_bytes()
    finally:
        ketch.run("delete", "--purge", clone, check=False)
