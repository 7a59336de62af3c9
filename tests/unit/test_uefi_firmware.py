"""Finding OVMF through QEMU's firmware descriptors, and choosing the firmware to boot with."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import InvalidArgument, KetchError
from ketch.host import firmware, partitions
from ketch.layout import Root
from ketch.model import BootSpec, ImageInfo
from ketch.runtime.qemu_driver import QemuDriver
from ketch.service.launch import boot_for, pick_firmware


def _doc(code: str, vars_: str, *, features: tuple[str, ...] = (), **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "description": f"uefi {code}",
        "interface-types": ["uefi"],
        "mapping": {
            "device": "flash",
            "executable": {"filename": code, "format": "raw"},
            "nvram-template": {"filename": vars_, "format": "raw"},
        },
        "targets": [{"architecture": "x86_64", "machines": ["pc-i440fx-*", "pc-q35-*"]}],
        "features": list(features),
        "tags": [],
    }
    doc.update(over)
    return doc


def test_pick_skips_secure_boot_smm_and_other_machines() -> None:
    i440fx = [{"architecture": "x86_64", "machines": ["pc-i440fx-*"]}]
    found = firmware.pick(
        [
            ("10-broken.json", {"interface-types": ["uefi"]}),
            ("20-bios.json", {**_doc("/s", "/v"), "interface-types": ["bios"]}),
            ("30-secure.json", _doc("/sec", "/v", features=("secure-boot", "requires-smm"))),
            ("40-enrolled.json", _doc("/enr", "/v", features=("enrolled-keys",))),
            (
                "45-arm.json",
                _doc("/arm", "/v", targets=[{"architecture": "aarch64", "machines": ["virt-*"]}]),
            ),
            (
                "47-i440fx.json",
                _doc("/pc", "/v", targets=i440fx),
            ),
            ("50-memory.json", {**_doc("/mem", "/v"), "mapping": {"device": "memory"}}),
            ("60-plain.json", _doc("/code.fd", "/vars.fd", features=("acpi-s3",))),
            ("70-later.json", _doc("/later.fd", "/v")),
        ]
    )
    assert found == firmware.Uefi(Path("/code.fd"), Path("/vars.fd"), "uefi /code.fd")
    assert firmware.pick([]) is None


def test_descriptor_files_later_directory_overrides_by_name(tmp_path: Path) -> None:
    usr, etc = tmp_path / "usr", tmp_path / "etc"
    usr.mkdir()
    etc.mkdir()
    for d, name in ((usr, "60-a.json"), (usr, "50-b.json"), (etc, "60-a.json"), (etc, "x.txt")):
        (d / name).write_text("{}")
    assert firmware.descriptor_files([usr, etc, tmp_path / "missing"]) == [
        usr / "50-b.json",
        etc / "60-a.json",
    ]


def test_find_uefi_from_descriptors_whose_files_exist(tmp_path: Path) -> None:
    code, vars_ = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"c")
    vars_.write_bytes(b"v")
    d = tmp_path / "firmware"
    d.mkdir()
    (d / "10-gone.json").write_text(json.dumps(_doc("/nonexistent/C.fd", "/nonexistent/V.fd")))
    (d / "60-here.json").write_text(json.dumps(_doc(str(code), str(vars_))))
    (d / "70-junk.json").write_text("{not json")
    # The first usable descriptor names missing files: the fallback paths are tried next.
    found = firmware.find_uefi([d])
    assert found.code.is_file() and found.vars_template.is_file()
    (d / "10-gone.json").unlink()
    assert firmware.find_uefi([d]) == firmware.Uefi(code, vars_, f"uefi {code}")


def test_no_firmware_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firmware, "FALLBACKS", ((tmp_path / "c", tmp_path / "v"),))
    with pytest.raises(KetchError, match="no UEFI firmware") as info:
        firmware.find_uefi([tmp_path])
    assert "ovmf" in (info.value.hint or "")


def test_this_hosts_ovmf_is_found() -> None:
    if not Path("/usr/share/OVMF").is_dir():
        pytest.skip("OVMF is not installed")
    found = firmware.find_uefi()
    assert found.code.stat().st_size > found.vars_template.stat().st_size > 0


# -- choosing -------------------------------------------------------------------


def test_pick_firmware() -> None:
    both = {"bios", "uefi"}
    assert pick_firmware(None, "bios", both, "img") == "bios"
    assert pick_firmware("uefi", "bios", both, "img") == "uefi"
    assert pick_firmware(None, "bios", {"uefi"}, "img") == "uefi"  # what the disk needs
    assert pick_firmware(None, "uefi", {"bios"}, "img") == "bios"
    assert pick_firmware(None, "uefi", set(), "img") == "uefi"  # unknown: the image's word
    assert pick_firmware("bios", "uefi", set(), "img") == "bios"
    with pytest.raises(InvalidArgument, match="no EFI system partition") as info:
        pick_firmware("uefi", "bios", {"bios"}, "Debian 11")
    assert "Debian 11 cannot boot through UEFI" in info.value.message
    assert "--firmware bios" in (info.value.hint or "")
    with pytest.raises(InvalidArgument, match="no boot code"):
        pick_firmware("bios", "uefi", {"uefi"}, "img")


def test_boot_for_a_kernel_image_refuses_a_firmware() -> None:
    image = ImageInfo(
        id="ketch:tiny@1",
        release="ketch tiny",
        disk="/nonexistent/disk.qcow2",
        disk_format="qcow2",
        boot=BootSpec(kernel="/k", initrd="/i", cmdline="console=ttyS0"),
    )
    assert asyncio.run(boot_for(image, None)) == image.boot
    with pytest.raises(InvalidArgument, match="boots its kernel directly"):
        asyncio.run(boot_for(image, "uefi"))


def test_boot_for_an_unreadable_disk_keeps_the_images_firmware(tmp_path: Path) -> None:
    image = ImageInfo(
        id="x",
        release="x",
        disk=str(tmp_path / "missing.qcow2"),
        disk_format="qcow2",
        boot=BootSpec(firmware="bios"),
    )
    assert asyncio.run(boot_for(image, None)) == BootSpec(firmware="bios")


def test_the_variable_store_is_made_once_from_the_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "VARS.fd"
    template.write_bytes(b"v" * 4096)
    uefi = firmware.Uefi(tmp_path / "CODE.fd", template)
    monkeypatch.setattr(firmware, "find_uefi", lambda dirs=None: uefi)
    idir = Root(tmp_path / "root").instance("vm")
    idir.path.mkdir(parents=True)
    driver = QemuDriver()
    assert asyncio.run(driver._prepare_uefi(idir)) == uefi
    assert idir.efi_vars.read_bytes() == template.read_bytes()
    idir.efi_vars.write_bytes(b"x" * 4096)  # what the guest wrote
    asyncio.run(driver._prepare_uefi(idir))
    assert idir.efi_vars.read_bytes() == b"x" * 4096  # never overwritten
    assert [p.name for p in idir.path.iterdir()] == ["efivars.fd"]  # no partial copy left


@pytest.mark.skipif(
    not (shutil.which("qemu-img") and Path("/usr/share/OVMF").is_dir()),
    reason="needs qemu-img and OVMF",
)
def test_a_uefi_only_disk_boots_through_uefi_unasked(tmp_path: Path) -> None:
    """An image that says nothing (or says BIOS) but has only an ESP and no boot code."""
    total = 64 * 1024**2 // 512
    esp = partitions.Partition(1, str(partitions.ESP), 2048, total - 2048 - 33)
    head, tail = partitions.gpt(total, (esp,), disk_guid=uuid.uuid4())
    raw = tmp_path / "uefi-only.raw"
    with raw.open("wb") as f:
        f.truncate(total * 512)
        f.write(partitions.protective_mbr(total) + head)
        f.seek((total - 33) * 512)
        f.write(tail)
    disk = tmp_path / "uefi-only.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    image = ImageInfo(
        id="x", release="UEFI-only", disk=str(disk), disk_format="qcow2", boot=BootSpec()
    )
    assert asyncio.run(boot_for(image, None)) == BootSpec(firmware="uefi")
    with pytest.raises(InvalidArgument, match="UEFI-only cannot boot through BIOS"):
        asyncio.run(boot_for(image, "bios"))
