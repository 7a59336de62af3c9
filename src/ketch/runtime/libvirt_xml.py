"""The libvirt domain XML of an instance, from its spec: a pure function, for the libvirt driver.

The domain mirrors the QEMU driver's machine (``host/qemu.py``'s argv): q35, the spec's
CPUs and memory (64 MiB at least), the qcow2 disk and the NoCloud seed as virtio disks,
one virtio NIC with the spec's MAC, a virtio RNG, the serial console, no display.  What
differs is libvirt's to decide: the domain type (``kvm`` where the host's probe says KVM
works, else ``qemu``, i.e. TCG), the CPU model (``host-passthrough`` on KVM,
``maximum`` on TCG, as the QEMU driver's ``-cpu host``/``max``), and the NIC's network (a
libvirt network on the host, NAT by default).  Disk and seed are paths on that host
(volumes of ketch's storage pool there): :class:`Volumes`.

The domain is named ``ketch-<instance>`` and carries the instance's name and instance-id
in its ``<metadata>`` (namespace :data:`NAMESPACE`), so the driver can tell ketch's
domains from others on a shared host.  Not used yet: the libvirt driver is the next
slice of issue 20.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ketch.model import InstanceSpec

NAMESPACE = "urn:x-ketch:instance:1"
PREFIX = "ketch-"
MIN_MEMORY = 64 * 1024 * 1024

ET.register_namespace("ketch", NAMESPACE)  # <ketch:instance> in the metadata


@dataclass(frozen=True)
class Volumes:
    """Where the instance's files are on its host (paths in ketch's storage pool there)."""

    disk: str  # the instance's qcow2 (its backing file the base image's volume)
    seed: str | None = None  # the NoCloud seed (raw ISO); None once the guest needs none
    efi_code: str | None = None  # UEFI: the firmware code (read-only pflash)
    efi_vars: str | None = None  # UEFI: the instance's own variable store


def domain_name(instance: str) -> str:
    return PREFIX + instance


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _disk(devices: ET.Element, path: str, fmt: str, target: str, *, readonly: bool) -> None:
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt, discard="unmap" if fmt == "qcow2" else "ignore")
    _sub(disk, "source", file=path)
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")


def domain_xml(spec: InstanceSpec, volumes: Volumes, *, kvm: bool, network: str = "default") -> str:
    """The ``<domain>`` document libvirt defines the instance from (pure)."""
    uefi = spec.boot.kernel is None and spec.boot.firmware == "uefi"
    if uefi and (volumes.efi_code is None or volumes.efi_vars is None):
        raise ValueError("UEFI boot needs the firmware and a variable store")
    dom = ET.Element("domain", type="kvm" if kvm else "qemu")
    _sub(dom, "name", domain_name(spec.name))
    meta = _sub(dom, "metadata")
    ET.SubElement(
        meta, f"{{{NAMESPACE}}}instance",
        {"name": spec.name, "instance-id": spec.instance_id, "image": spec.image_id},
    )  # fmt: skip
    _sub(dom, "memory", str(max(spec.memory, MIN_MEMORY) // 1024), unit="KiB")
    _sub(dom, "vcpu", str(spec.cpus), placement="static")
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="q35")
    if spec.boot.kernel:
        _sub(os_, "kernel", spec.boot.kernel)
        if spec.boot.initrd:
            _sub(os_, "initrd", spec.boot.initrd)
        if spec.boot.cmdline:
            _sub(os_, "cmdline", spec.boot.cmdline)
    else:
        if uefi:
            assert volumes.efi_code is not None and volumes.efi_vars is not None
            _sub(os_, "loader", volumes.efi_code, readonly="yes", type="pflash")
            _sub(os_, "nvram", volumes.efi_vars)
        _sub(os_, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if kvm:
        _sub(dom, "cpu", mode="host-passthrough", check="none")
    else:
        _sub(dom, "cpu", mode="maximum", check="none")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    _disk(devices, volumes.disk, "qcow2", "vda", readonly=False)
    if volumes.seed is not None:
        _disk(devices, volumes.seed, "raw", "vdb", readonly=True)
    nic = _sub(devices, "interface", type="network")
    _sub(nic, "source", network=network)
    _sub(nic, "mac", address=spec.mac)
    _sub(nic, "model", type="virtio")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"
