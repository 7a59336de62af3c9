"""The QEMU command line (``build_argv``) and recognising our QEMU (``argv_matches``).

Nothing here starts QEMU.  One test starts a harmless process whose
``/proc/PID/cmdline`` looks like our QEMU's, to check ``argv_matches`` on what
the kernel really reports.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ketch.host import procs
from ketch.host.qemu import (
    DISK_NODE,
    QEMU_SYSTEM,
    QemuConfig,
    argv_matches,
    build_argv,
)
from ketch.model import BootSpec

DIR = Path("/st/instances/vm1")

CFG = QemuConfig(
    name="vm1",
    cpus=2,
    memory=1024**3,
    accel="kvm",
    disk=DIR / "disk.qcow2",
    seed_iso=None,
    boot=BootSpec(kernel="/vault/vmlinuz", initrd="/vault/initrd.img", cmdline="console=ttyS0"),
    pidfile=DIR / "qemu.pid",
    qmp_socket=DIR / "qmp.sock",
    serial_log=DIR / "serial.log",
    ssh_port=42017,
    mac="52:54:00:ab:cd:ef",
)


def values(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` (flags that take one value)."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def value(argv: list[str], flag: str) -> str:
    (found,) = values(argv, flag)
    return found


# -- build_argv ----------------------------------------------------------------------------


def test_binary_and_purity() -> None:
    argv = build_argv(CFG)
    assert argv[0] == QEMU_SYSTEM
    assert build_argv(CFG) == argv
    assert build_argv(CFG, binary="/opt/qemu/bin/qemu-system-x86_64")[1:] == argv[1:]


def test_direct_kernel_boot() -> None:
    argv = build_argv(CFG)
    assert value(argv, "-kernel") == "/vault/vmlinuz"
    assert value(argv, "-initrd") == "/vault/initrd.img"
    assert value(argv, "-append") == "console=ttyS0"
    assert not any("pflash" in a for a in argv)


def test_direct_kernel_boot_without_initrd_or_cmdline() -> None:
    argv = build_argv(replace(CFG, boot=BootSpec(kernel="/vault/vmlinuz")))
    assert value(argv, "-kernel") == "/vault/vmlinuz"
    assert "-initrd" not in argv and "-append" not in argv


UEFI = replace(
    CFG,
    boot=BootSpec(firmware="uefi"),
    efi_code=Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    efi_vars=DIR / "efivars.fd",
)


def test_uefi_firmware_boot_is_read_only_code_and_the_instances_variables() -> None:
    argv = build_argv(UEFI)
    assert "-kernel" not in argv and "-drive" not in argv
    assert value(argv, "-machine") == "q35,pflash0=efi-code,pflash1=efivars"
    blockdevs = [b.split(",") for b in values(argv, "-blockdev")]
    code_file = next(b for b in blockdevs if "node-name=efi-code-file" in b)
    assert "filename=/usr/share/OVMF/OVMF_CODE_4M.fd" in code_file and "read-only=on" in code_file
    code = next(b for b in blockdevs if "node-name=efi-code" in b)
    assert "driver=raw" in code and "read-only=on" in code
    vars_file = next(b for b in blockdevs if "node-name=efivars-file" in b)
    assert f"filename={DIR / 'efivars.fd'}" in vars_file and "read-only=on" not in vars_file
    assert ["driver=raw", "file=efivars-file", "node-name=efivars"] in blockdevs


def test_uefi_without_its_files_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="UEFI"):
        build_argv(replace(UEFI, efi_vars=None))


def test_paused_start_waits_for_cont() -> None:
    assert "-S" not in build_argv(UEFI)
    argv = build_argv(replace(UEFI, paused=True))
    assert argv[-1] == "-S" and "-loadvm" not in argv


def test_bios_firmware_boot_adds_nothing() -> None:
    argv = build_argv(replace(CFG, boot=BootSpec(firmware="bios")))
    assert "-kernel" not in argv and "-drive" not in argv and "-bios" not in argv


def test_kernel_wins_over_firmware() -> None:
    argv = build_argv(replace(UEFI, boot=BootSpec(kernel="/k", firmware="uefi")))
    assert value(argv, "-kernel") == "/k"
    assert value(argv, "-machine") == "q35"
    assert not any("efi" in a for a in argv)


def test_loadvm_only_when_resuming() -> None:
    assert "-loadvm" not in build_argv(CFG)
    argv = build_argv(replace(CFG, loadvm="suspend"))
    assert value(argv, "-loadvm") == "suspend"


def test_seed_iso_absent() -> None:
    argv = build_argv(CFG)
    assert not any("seed" in a for a in argv)
    assert len(values(argv, "-blockdev")) == 2


def test_seed_iso_present_is_read_only() -> None:
    argv = build_argv(replace(CFG, seed_iso=DIR / "cidata.iso"))
    blockdevs = values(argv, "-blockdev")
    seed_file = next(b for b in blockdevs if "node-name=seed-file" in b)
    seed = next(b for b in blockdevs if "node-name=seed," in b + ",")
    assert f"filename={DIR / 'cidata.iso'}" in seed_file.split(",")
    assert "read-only=on" in seed_file.split(",")
    assert "read-only=on" in seed.split(",")
    assert "driver=raw" in seed.split(",")
    assert "virtio-blk-pci,drive=seed" in values(argv, "-device")


def test_instance_disk_is_a_writable_qcow2() -> None:
    argv = build_argv(CFG)
    file_node, fmt_node = values(argv, "-blockdev")
    assert file_node.split(",") == [
        "driver=file",
        f"filename={CFG.disk}",
        f"node-name={DISK_NODE}-file",
    ]
    assert fmt_node.split(",") == [
        "driver=qcow2",
        f"file={DISK_NODE}-file",
        f"node-name={DISK_NODE}",
    ]
    assert "read-only=on" not in file_node


def test_disk_has_a_boot_index_only_for_firmware_boot() -> None:
    direct = values(build_argv(CFG), "-device")
    assert f"virtio-blk-pci,drive={DISK_NODE}" in direct
    assert not any("bootindex" in d for d in direct)
    firmware = values(build_argv(UEFI), "-device")
    assert f"virtio-blk-pci,drive={DISK_NODE},bootindex=0" in firmware


@pytest.mark.parametrize(("accel", "cpu"), [("kvm", "host"), ("tcg", "max")])
def test_accel_and_cpu_model(accel: str, cpu: str) -> None:
    argv = build_argv(replace(CFG, accel=accel))
    assert value(argv, "-accel") == accel
    assert value(argv, "-cpu") == cpu


def test_daemonized_with_pidfile_and_qmp_socket() -> None:
    argv = build_argv(CFG)
    assert "-daemonize" in argv
    assert value(argv, "-pidfile") == str(DIR / "qemu.pid")
    assert value(argv, "-qmp") == f"unix:{DIR / 'qmp.sock'},server=on,wait=off"


def test_no_display_no_default_devices_serial_to_file() -> None:
    argv = build_argv(CFG)
    assert "-nodefaults" in argv
    assert value(argv, "-display") == "none"
    assert value(argv, "-vga") == "none"
    assert value(argv, "-chardev") == f"file,id=serial0,path={DIR / 'serial.log'},append=on"
    assert value(argv, "-serial") == "chardev:serial0"


def test_ssh_is_forwarded_on_loopback_only() -> None:
    argv = build_argv(CFG)
    netdev = value(argv, "-netdev")
    assert netdev.split(",") == ["user", "id=net0", "hostfwd=tcp:127.0.0.1:42017-:22"]
    assert not any("0.0.0.0" in a for a in argv)
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:ab:cd:ef" in values(argv, "-device")


def test_resources() -> None:
    argv = build_argv(replace(CFG, cpus=3, memory=1536 * 1024**2))
    assert value(argv, "-smp") == "3"
    assert value(argv, "-m") == "1536M"


def test_memory_has_a_floor() -> None:
    assert value(build_argv(replace(CFG, memory=1024)), "-m") == "64M"


def test_name_is_labelled_for_ps() -> None:
    assert value(build_argv(CFG), "-name") == "ketch-vm1,debug-threads=on"


def test_every_flag_value_is_a_separate_argument() -> None:
    """No argument holds a space-separated pair: the argv is never shell-joined."""
    for arg in build_argv(replace(CFG, seed_iso=DIR / "cidata.iso", loadvm="suspend")):
        if arg.startswith("-"):
            assert " " not in arg


def test_disk_path_with_a_comma_is_escaped() -> None:
    disk = Path("/home/a,b/instances/vm1/disk.qcow2")
    argv = build_argv(replace(CFG, disk=disk))
    file_node = values(argv, "-blockdev")[0]
    assert "filename=/home/a,,b/instances/vm1/disk.qcow2" in file_node
    assert argv_matches(argv, disk)


# -- argv_matches -------------------------------------------------------------------------


def test_matches_our_own_argv() -> None:
    assert argv_matches(build_argv(CFG), CFG.disk)
    assert argv_matches(build_argv(replace(CFG, seed_iso=DIR / "cidata.iso")), CFG.disk)


def test_matches_with_a_full_binary_path_and_other_arch() -> None:
    argv = build_argv(CFG, binary="/usr/bin/qemu-system-x86_64")
    assert argv_matches(argv, CFG.disk)
    assert argv_matches(build_argv(CFG, binary="qemu-system-aarch64"), CFG.disk)


def test_another_disk_does_not_match() -> None:
    assert not argv_matches(build_argv(CFG), Path("/st/instances/vm2/disk.qcow2"))


def test_another_storage_root_does_not_match() -> None:
    other = replace(CFG, disk=Path("/other/instances/vm1/disk.qcow2"))
    assert not argv_matches(build_argv(other), CFG.disk)


def test_disk_path_prefix_of_another_does_not_match() -> None:
    bak = replace(CFG, disk=Path("/x/disk.qcow2.bak"))
    assert not argv_matches(build_argv(bak), Path("/x/disk.qcow2"))
    plain = replace(CFG, disk=Path("/x/disk.qcow2"))
    assert not argv_matches(build_argv(plain), Path("/x/disk.qcow2.bak"))


def test_disk_path_suffix_of_another_does_not_match() -> None:
    deeper = replace(CFG, disk=Path("/y/x/disk.qcow2"))
    assert not argv_matches(build_argv(deeper), Path("/x/disk.qcow2"))


def test_non_qemu_program_does_not_match() -> None:
    argv = build_argv(CFG)
    assert not argv_matches(["/usr/bin/sleep", *argv[1:]], CFG.disk)
    assert not argv_matches(["python3", "-c", f"driver=file,filename={CFG.disk},x"], CFG.disk)


def test_empty_cmdline_does_not_match() -> None:
    assert not argv_matches([], CFG.disk)
    assert not argv_matches([""], CFG.disk)


def test_qemu_with_the_disk_only_in_an_unrelated_argument_does_not_match() -> None:
    argv = ["qemu-system-x86_64", "-name", f"filename={CFG.disk},", "-m", "64M"]
    assert not argv_matches(argv, CFG.disk)


def test_matches_what_proc_reports_for_a_qemu_lookalike(tmp_path: Path) -> None:
    """A real process named like QEMU, with our -blockdev; read back from /proc."""
    disk = tmp_path / "disk.qcow2"
    argv = build_argv(replace(CFG, disk=disk))
    code = "import sys, time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        ["bash", "-c", 'exec -a "$0" "$@"', argv[0], sys.executable, "-c", code, *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        seen = procs.cmdline(proc.pid)
        assert seen is not None and seen[0] == "qemu-system-x86_64"
        assert argv_matches(seen, disk)
        assert not argv_matches(seen, tmp_path / "other.qcow2")
    finally:
        proc.kill()
        proc.wait(timeout=10)
