"""runtime/libvirt_xml.py: an instance's libvirt domain XML, checked element by element and
against libvirt's own schema (``virt-xml-validate``, from libvirt-clients) where installed."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from test_store import make_spec

from ketch.model import BootSpec
from ketch.runtime.libvirt_xml import (
    NAMESPACE,
    QEMU_NS,
    Volumes,
    domain_name,
    domain_xml,
    host_port,
    pool_xml,
    snapshot_xml,
    with_host_port,
)

VOLUMES = Volumes(
    disk="/var/lib/ketch/pool/vm1.qcow2",
    seed="/var/lib/ketch/pool/vm1-seed.iso",
    kernel="/var/lib/ketch/pool/vm1.kernel",
    initrd="/var/lib/ketch/pool/vm1.initrd",
)
UEFI = Volumes(
    disk="/p/vm1.qcow2", efi_code="/usr/share/OVMF/OVMF_CODE_4M.fd", efi_vars="/p/vm1-vars.fd"
)


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def at(el: ET.Element, path: str, name: str) -> str | None:
    """The attribute ``name`` of the element at ``path`` (None: no such element)."""
    found = el.find(path)
    return None if found is None else found.get(name)


def disk_of(d: ET.Element) -> tuple[str | None, str | None, str | None]:
    return at(d, "source", "file"), at(d, "driver", "type"), at(d, "target", "dev")


def test_a_direct_kernel_boot_on_tcg() -> None:
    spec = make_spec("vm1")
    dom = parse(domain_xml(spec, VOLUMES, kvm=False))
    assert dom.get("type") == "qemu"
    assert dom.findtext("name") == "ketch-vm1" == domain_name("vm1")
    assert dom.findtext("memory") == str(spec.memory // 1024) and at(dom, "memory", "unit") == "KiB"
    assert dom.findtext("vcpu") == str(spec.cpus)
    assert dom.findtext("os/type") == "hvm" and at(dom, "os/type", "machine") == "q35"
    assert spec.boot.kernel and spec.boot.initrd  # the local files, never named to libvirt:
    assert dom.findtext("os/kernel") == VOLUMES.kernel  # the host may be another machine
    assert dom.findtext("os/initrd") == VOLUMES.initrd
    assert dom.findtext("os/cmdline") == spec.boot.cmdline
    assert dom.find("os/boot") is None and dom.find("os/loader") is None
    assert at(dom, "cpu", "mode") == "maximum"
    disks = dom.findall("devices/disk")
    assert [disk_of(d) for d in disks] == [
        (VOLUMES.disk, "qcow2", "vda"),
        (VOLUMES.seed, "raw", "vdb"),
    ]
    assert disks[0].find("readonly") is None and disks[1].find("readonly") is not None
    nic = dom.find("devices/interface")
    assert nic is not None and nic.get("type") == "network"
    assert at(nic, "source", "network") == "default"
    assert at(nic, "mac", "address") == spec.mac
    assert at(nic, "model", "type") == "virtio"
    meta = dom.find(f"metadata/{{{NAMESPACE}}}instance")
    assert meta is not None and meta.get("name") == "vm1"
    assert meta.get("instance-id") == spec.instance_id and meta.get("image") == spec.image_id
    assert dom.find("devices/graphics") is None and dom.find("devices/rng") is not None


def test_kvm_passes_the_host_cpu_through_and_the_network_is_the_callers() -> None:
    dom = parse(domain_xml(make_spec("vm1"), VOLUMES, kvm=True, network="ketch"))
    assert dom.get("type") == "kvm" and at(dom, "cpu", "mode") == "host-passthrough"
    assert at(dom, "devices/interface/source", "network") == "ketch"


def test_firmware_boots() -> None:
    bios = replace(make_spec("vm1"), boot=BootSpec())
    dom = parse(domain_xml(bios, Volumes(disk="/p/vm1.qcow2"), kvm=False))
    assert at(dom, "os/boot", "dev") == "hd" and dom.find("os/loader") is None
    assert dom.find("os/kernel") is None and len(dom.findall("devices/disk")) == 1  # no seed
    uefi = replace(bios, boot=BootSpec(firmware="uefi"))
    dom = parse(domain_xml(uefi, UEFI, kvm=False))
    loader = dom.find("os/loader")
    assert loader is not None and loader.text == UEFI.efi_code
    assert loader.get("type") == "pflash" and loader.get("readonly") == "yes"
    assert dom.findtext("os/nvram") == UEFI.efi_vars
    with pytest.raises(ValueError, match="UEFI boot needs"):
        domain_xml(uefi, Volumes(disk="/p/vm1.qcow2"), kvm=False)


def test_a_direct_kernel_boot_needs_its_files_as_volumes() -> None:
    for volumes in (Volumes(disk="/p/vm1.qcow2"), Volumes(disk="/p/d", kernel="/p/k")):
        with pytest.raises(ValueError, match=r"kernel \(and initrd\) as volumes"):
            domain_xml(make_spec("vm1"), volumes, kvm=False)


def test_text_is_escaped_and_memory_has_a_floor() -> None:
    odd = replace(
        make_spec("vm1", memory=1024),
        boot=BootSpec(kernel="/k", cmdline='console=ttyS0 a<b & c="d"'),
    )
    text = domain_xml(odd, VOLUMES, kvm=False)
    assert 'a&lt;b &amp; c="d"' in text
    dom = parse(text)
    assert dom.findtext("os/cmdline") == 'console=ttyS0 a<b & c="d"'
    assert dom.findtext("memory") == str(64 * 1024)


def test_user_networking_forwards_ssh_from_loopback_through_qemus_own_netdev() -> None:
    spec = make_spec("vm1")
    dom = parse(domain_xml(spec, VOLUMES, kvm=False, user_net=True))
    assert dom.find("devices/interface") is None  # no libvirt network at all
    args = [a.get("value") for a in dom.iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    assert args == [
        "-netdev",
        f"user,id=ketchnet0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device",
        f"virtio-net-pci,netdev=ketchnet0,mac={spec.mac},bus=pcie.0,addr=0x1e",
    ]


def test_on_a_remote_host_qemu_listens_on_the_hosts_own_port() -> None:
    spec = replace(make_spec("vm1"), host_ssh_port=40022)
    assert host_port(spec) == 40022 != spec.ssh_port
    text = domain_xml(spec, VOLUMES, kvm=False, user_net=True)
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in text and f":{spec.ssh_port}-" not in text


def test_a_saved_definition_gets_the_specs_ssh_port_and_nothing_else() -> None:
    spec = make_spec("vm1")
    saved = domain_xml(spec, VOLUMES, kvm=False, user_net=True)
    assert with_host_port(saved, spec) is saved  # unchanged: the very text
    moved = replace(spec, ssh_port=spec.ssh_port + 1)
    text = with_host_port(saved, moved)
    assert f"hostfwd=tcp:127.0.0.1:{moved.ssh_port}-:22" in text
    assert f":{spec.ssh_port}-:22" not in text
    assert parse(text).findtext("os/kernel") == VOLUMES.kernel  # the rest as it was
    plain = domain_xml(spec, VOLUMES, kvm=False)  # a libvirt network's NIC: nothing to do
    assert with_host_port(plain, moved) is plain


def test_a_domain_defined_again_keeps_its_uuid() -> None:
    uuid = "6f1c2c0e-3c1a-4d38-9a53-0c9d2f9b7a11"
    assert parse(domain_xml(make_spec("vm1"), VOLUMES, kvm=False)).find("uuid") is None
    dom = parse(domain_xml(make_spec("vm1"), VOLUMES, kvm=False, uuid=uuid))
    assert dom.findtext("uuid") == uuid
    assert [c.tag for c in dom][:2] == ["name", "uuid"]


def test_the_pool_document() -> None:
    pool = parse(pool_xml("ketch", "/var/lib/libvirt/ketch"))
    assert pool.get("type") == "dir" and pool.findtext("name") == "ketch"
    assert pool.findtext("target/path") == "/var/lib/libvirt/ketch"


def test_a_snapshot_is_an_internal_one_of_the_disk_without_memory() -> None:
    snap = parse(snapshot_xml("ketch-snap-0123abcd"))
    assert snap.tag == "domainsnapshot" and snap.findtext("name") == "ketch-snap-0123abcd"
    assert at(snap, "memory", "snapshot") == "no"
    (disk,) = snap.findall("disks/disk")
    assert (disk.get("name"), disk.get("snapshot")) == ("vda", "internal")
    # the disk it names is the domain's qcow2 disk
    dom = parse(domain_xml(make_spec("vm1"), VOLUMES, kvm=False))
    assert disk_of(dom.findall("devices/disk")[0])[1:] == ("qcow2", "vda")


def test_the_same_spec_gives_the_same_document() -> None:
    assert domain_xml(make_spec("vm1"), VOLUMES, kvm=True) == domain_xml(
        make_spec("vm1"), VOLUMES, kvm=True
    )


@pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None, reason="libvirt-clients not installed"
)
@pytest.mark.parametrize(
    "case", ["kernel-tcg", "kernel-kvm", "bios", "uefi", "user-net", "snapshot"]
)
def test_libvirts_schema_takes_it(tmp_path: Path, case: str) -> None:
    spec = make_spec("vm1")
    text = {
        "kernel-tcg": lambda: domain_xml(spec, VOLUMES, kvm=False),
        "kernel-kvm": lambda: domain_xml(spec, VOLUMES, kvm=True),
        "bios": lambda: domain_xml(replace(spec, boot=BootSpec()), VOLUMES, kvm=False),
        "uefi": lambda: domain_xml(replace(spec, boot=BootSpec(firmware="uefi")), UEFI, kvm=True),
        "user-net": lambda: domain_xml(spec, VOLUMES, kvm=False, user_net=True),
        "snapshot": lambda: snapshot_xml("ketch-snap-0123abcd"),
    }[case]()
    path = tmp_path / "document.xml"
    path.write_text(text)
    schema = "domainsnapshot" if case == "snapshot" else "domain"
    done = subprocess.run(
        ["virt-xml-validate", str(path), schema], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
