"""The libvirt domain XML of an instance, from its spec: a pure function, for the libvirt driver.

The domain mirrors the QEMU driver's machine (``host/qemu.py``'s argv): q35, the spec's
CPUs and memory (64 MiB at least), the qcow2 disk and the NoCloud seed as virtio disks,
one virtio NIC with the spec's MAC, a virtio RNG, the serial console, no display.  What
differs is libvirt's to decide: the domain type (``kvm`` where the host's probe says KVM
works, else ``qemu``, i.e. TCG), the CPU model (``host-passthrough`` on KVM,
``maximum`` on TCG, as the QEMU driver's ``-cpu host``/``max``), and the NIC's network (a
libvirt network on the host, NAT by default; or, with ``user_net``, QEMU's user-mode
networking with the guest's SSH forwarded from the host's 127.0.0.1 (:func:`host_port`),
as the QEMU driver's ``-netdev user,hostfwd=...``: libvirt 9.0's ``<interface
type='user'>`` has no port forwards on its slirp backend (``<portForward>`` is passt's
only), so the NIC is passed to QEMU through ``<qemu:commandline>``).  Disk, seed, and the
kernel and initrd of a direct kernel boot are paths on that host (volumes of ketch's
storage pool there, never the local vault's files: the host may be another machine):
:class:`Volumes`.  The pool's and its volumes' documents are here too (:func:`pool_xml`,
:func:`volume_xml`), and a snapshot's (:func:`snapshot_xml`: an internal snapshot of the
disk of a stopped domain).

The domain is named ``ketch-<instance>`` and carries the instance's name and instance-id
in its ``<metadata>`` (namespace :data:`NAMESPACE`), so the driver can tell ketch's
domains from others on a shared host.  Used by :mod:`ketch.runtime.libvirt_driver`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ketch.model import InstanceSpec

NAMESPACE = "urn:x-ketch:instance:1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"  # <qemu:commandline> passthrough
USER_NETDEV = "ketchnet0"
USER_NIC_SLOT = "0x1e"  # on pcie.0: see user_net_args
PREFIX = "ketch-"
MIN_MEMORY = 64 * 1024 * 1024

ET.register_namespace("ketch", NAMESPACE)  # <ketch:instance> in the metadata
ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class Volumes:
    """Where the instance's files are on its host (paths in ketch's storage pool there)."""

    disk: str  # the instance's qcow2 (its backing file the base image's volume)
    seed: str | None = None  # the NoCloud seed (raw ISO); None once the guest needs none
    efi_code: str | None = None  # UEFI: the firmware code (read-only pflash)
    efi_vars: str | None = None  # UEFI: the instance's own variable store
    kernel: str | None = None  # a direct kernel boot: the image's kernel, uploaded
    initrd: str | None = None  # and its initrd


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


def domain_xml(
    spec: InstanceSpec,
    volumes: Volumes,
    *,
    kvm: bool,
    network: str = "default",
    user_net: bool = False,
    uuid: str | None = None,
) -> str:
    """The ``<domain>`` document libvirt defines the instance from (pure).

    ``user_net``: no libvirt network; QEMU's user networking with the guest's port 22
    forwarded from 127.0.0.1:``host_port(spec)`` (``network`` is then unused).  ``uuid``:
    the defined domain's, when it is defined again (libvirt refuses another UUID).
    """
    uefi = spec.boot.kernel is None and spec.boot.firmware == "uefi"
    if uefi and (volumes.efi_code is None or volumes.efi_vars is None):
        raise ValueError("UEFI boot needs the firmware and a variable store")
    dom = ET.Element("domain", type="kvm" if kvm else "qemu")
    _sub(dom, "name", domain_name(spec.name))
    if uuid is not None:
        _sub(dom, "uuid", uuid)
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
        if volumes.kernel is None or (spec.boot.initrd and volumes.initrd is None):
            raise ValueError("a direct kernel boot needs the kernel (and initrd) as volumes")
        _sub(os_, "kernel", volumes.kernel)
        if volumes.initrd is not None:
            _sub(os_, "initrd", volumes.initrd)
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
    if not user_net:
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
    if user_net:
        line = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in user_net_args(spec):
            ET.SubElement(line, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def host_port(spec: InstanceSpec) -> int:
    """The port on its host's loopback the guest's SSH is forwarded from: ``ssh_port``,
    or on a remote host the one the jump reaches (``host_ssh_port``)."""
    return spec.host_ssh_port or spec.ssh_port


def user_net_args(spec: InstanceSpec) -> tuple[str, ...]:
    """QEMU's arguments for the user-mode NIC with the SSH forward (as ``host/qemu.py``'s).

    The NIC sits in slot 0x1e of ``pcie.0``, one libvirt leaves alone: QEMU creates a
    legacy ``-device`` before libvirt's JSON ones, so one without an address takes slot 1,
    which libvirt gave its first root port, and the domain does not start.
    """
    return (
        "-netdev",
        f"user,id={USER_NETDEV},hostfwd=tcp:127.0.0.1:{host_port(spec)}-:22",
        "-device",
        f"virtio-net-pci,netdev={USER_NETDEV},mac={spec.mac},bus=pcie.0,addr={USER_NIC_SLOT}",
    )


def with_host_port(xml: str, spec: InstanceSpec) -> str:
    """``xml`` (a domain's, as libvirt gives it back) with its user NIC's SSH forward the
    spec's now (:func:`host_port`); the very text when it has it already or has no such
    NIC.  For a managed save whose port was taken meanwhile (pure)."""
    netdev = user_net_args(spec)[1]
    dom = ET.fromstring(xml)
    changed = False
    for arg in dom.iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg"):
        value = arg.get("value", "")
        if value.startswith(f"user,id={USER_NETDEV},") and value != netdev:
            arg.set("value", netdev)
            changed = True
    return ET.tostring(dom, encoding="unicode") + "\n" if changed else xml


def pool_xml(name: str, path: str) -> str:
    """A ``dir`` storage pool at ``path`` (pure)."""
    pool = ET.Element("pool", type="dir")
    _sub(pool, "name", name)
    target = _sub(pool, "target")
    _sub(target, "path", path)
    ET.indent(pool)
    return ET.tostring(pool, encoding="unicode") + "\n"


def volume_xml(
    name: str,
    capacity: int,
    fmt: str,
    *,
    backing: str | None = None,
    backing_format: str | None = None,
) -> str:
    """A volume of ``capacity`` bytes in format ``fmt``; with ``backing``, an overlay on
    that path (a qcow2 whose backing file is the base image's volume).  Pure."""
    if capacity <= 0:
        raise ValueError(f"a volume's capacity must be positive, not {capacity}")
    if backing is not None and (fmt != "qcow2" or backing_format is None):
        raise ValueError("an overlay is a qcow2 volume with the backing file's format")
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity), unit="bytes")
    target = _sub(vol, "target")
    _sub(target, "format", type=fmt)
    if backing is not None:
        assert backing_format is not None
        store = _sub(vol, "backingStore")
        _sub(store, "path", backing)
        _sub(store, "format", type=backing_format)
    ET.indent(vol)
    return ET.tostring(vol, encoding="unicode") + "\n"


def snapshot_xml(name: str, disk: str = "vda") -> str:
    """A ``<domainsnapshot>`` named ``name``: an internal qcow2 snapshot of the domain's disk
    ``disk`` (the target ``domain_xml`` gives it), taken while the domain is shut off, so
    no memory state (libvirt runs ``qemu-img snapshot -c NAME`` on the disk).  Pure."""
    snap = ET.Element("domainsnapshot")
    _sub(snap, "name", name)
    _sub(snap, "memory", snapshot="no")
    disks = _sub(snap, "disks")
    _sub(disks, "disk", name=disk, snapshot="internal")
    ET.indent(snap)
    return ET.tostring(snap, encoding="unicode") + "\n"
