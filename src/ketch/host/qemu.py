"""The QEMU command line (pure) and starting QEMU detached.

QEMU is started with ``-daemonize`` and ``-pidfile`` so it outlives ketchd:
a restarted daemon finds it through the pid file and the QMP socket in the
instance directory and takes it back instead of killing it.  Start-up errors
(a missing ``-loadvm`` tag, a size mismatch) are reported synchronously by the
parent process, which exits non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ketch.errors import HostCommandError
from ketch.host.run import run
from ketch.model import BootSpec

QEMU_SYSTEM = "qemu-system-x86_64"
DISK_NODE = "disk0"  # node name of the instance disk; the snapshot jobs name it
EFI_CODE_NODE = "efi-code"  # UEFI firmware code, read-only (pflash0)
EFI_VARS_NODE = "efivars"  # the instance's UEFI variables, raw (pflash1)
MEMORY_NODE = "mem"  # the shared guest memory when native mounts are attached
AGENT_PORT = "org.ketch.warm.0"  # the warm agent's virtio-serial port (runtime/warm_guest.py)
AGENT_SERIAL = "warmser0"  # the warm agent's virtio-serial controller
MOUNT_SERIAL = "mountser0"  # the controller classic mounts' ports are hot-plugged into


@dataclass(frozen=True)
class QemuConfig:
    """Everything that decides one QEMU invocation for one instance."""

    name: str
    cpus: int
    memory: int  # bytes
    accel: str  # "kvm" or "tcg"
    disk: Path
    seed_iso: Path | None
    boot: BootSpec
    pidfile: Path
    qmp_socket: Path
    serial_log: Path
    ssh_port: int
    mac: str
    loadvm: str | None = None  # internal snapshot tag to resume from (-loadvm)
    efi_code: Path | None = None  # UEFI boot: the firmware, attached read-only
    efi_vars: Path | None = None  # UEFI boot: this instance's variables (raw)
    paused: bool = False  # -S: vCPUs wait for "cont" (a snapshot is loaded over QMP first)
    # native mounts: (virtiofs tag, virtiofsd's vhost-user socket) each; the guest's
    # memory is then a shared memfd (vhost-user maps it into virtiofsd)
    shares: tuple[tuple[str, Path], ...] = ()
    # TAP NICs after the user-mode net0, as (TAP name, MAC): the managed network's, then
    # the --network ones, in their order
    taps: tuple[tuple[str, str], ...] = ()
    # warm launch (runtime/template.py): the guest's RAM is the file ``memory_file``
    # (share=on: a template being made, the RAM lands in the file; share=off: a
    # clone's private copy-on-write mapping of it), or with ``memory_ram`` plain RAM
    # under the same block name (a warm instance resumed from its suspend tag)
    memory_file: Path | None = None
    memory_shared: bool = False
    memory_ram: bool = False
    agent_socket: Path | None = None  # the warm agent's virtio-serial port (its host end)
    incoming: bool = False  # -incoming defer: the state comes over QMP (migrate-incoming)
    dummy_taps: bool = False  # a template: its TAP NICs' backends are empty hub ports
    vmgenid: str | None = None  # a VM generation ID (GUID): a clone's kernel reseeds on a new one
    # a virtio-serial controller for classic mounts' ports (host/mountport.py); only for an
    # instance recorded with it (layout.MOUNT_SERIAL): a saved state needs the same devices
    mount_serial: bool = False


def uses_uefi(boot: BootSpec) -> bool:
    """Does this boot go through OVMF (firmware boot, ``uefi``)?"""
    return not boot.kernel and boot.firmware == "uefi"


def opt(path: Path | str) -> str:
    """A path inside a QEMU option string: commas are doubled."""
    return str(path).replace(",", ",,")


def build_argv(cfg: QemuConfig, *, binary: str = QEMU_SYSTEM) -> list[str]:
    """The full argv for one instance (pure: same config, same argv)."""
    mem_mib = max(cfg.memory // (1024 * 1024), 64)
    disk_device = f"virtio-blk-pci,drive={DISK_NODE}"
    if not cfg.boot.kernel:
        disk_device += ",bootindex=0"
    machine = "q35"
    efi: tuple[Path, Path] | None = None
    if uses_uefi(cfg.boot):
        if cfg.efi_code is None or cfg.efi_vars is None:
            raise ValueError("UEFI boot needs the firmware and a variable store")
        efi = (cfg.efi_code, cfg.efi_vars)
        machine += f",pflash0={EFI_CODE_NODE},pflash1={EFI_VARS_NODE}"
    if cfg.shares or cfg.memory_file is not None or cfg.memory_ram:
        machine += f",memory-backend={MEMORY_NODE}"
    # fmt: off
    argv = [
        binary,
        "-name", f"ketch-{cfg.name},debug-threads=on",
        "-machine", machine,
        "-accel", cfg.accel,
        "-cpu", "host" if cfg.accel == "kvm" else "max",
        "-smp", str(cfg.cpus),
        "-m", f"{mem_mib}M",
        "-nodefaults",
        "-display", "none",
        "-vga", "none",
        "-daemonize",
        "-pidfile", str(cfg.pidfile),
        "-qmp", f"unix:{opt(cfg.qmp_socket)},server=on,wait=off",
        "-chardev", f"file,id=serial0,path={opt(cfg.serial_log)},append=on",
        "-serial", "chardev:serial0",
        "-blockdev", f"driver=file,filename={opt(cfg.disk)},node-name={DISK_NODE}-file",
        "-blockdev", f"driver=qcow2,file={DISK_NODE}-file,node-name={DISK_NODE}",
        "-device", disk_device,
    ]
    if cfg.seed_iso is not None:
        argv += [
            "-blockdev",
            f"driver=file,filename={opt(cfg.seed_iso)},node-name=seed-file,read-only=on",
            "-blockdev", "driver=raw,file=seed-file,node-name=seed,read-only=on",
            "-device", "virtio-blk-pci,drive=seed",
        ]
    argv += [
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{cfg.ssh_port}-:22",
        "-device", f"virtio-net-pci,netdev=net0,mac={cfg.mac}",
        "-device", "virtio-rng-pci",
    ]
    if cfg.mount_serial:  # before the TAPs, which come after every other device
        argv += ["-device", f"virtio-serial-pci,id={MOUNT_SERIAL}"]
    for i, (tap, mac) in enumerate(cfg.taps, 1):  # last: the other devices keep their slots
        netdev = (
            f"hubport,id=net{i},hubid={i}"
            if cfg.dummy_taps
            else f"tap,id=net{i},ifname={opt(tap)},script=no,downscript=no,vhost=off"
        )
        argv += [
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=net{i},mac={mac}",
        ]
    # fmt: on
    if cfg.shares:
        argv += ["-object", f"memory-backend-memfd,id={MEMORY_NODE},size={mem_mib}M,share=on"]
    elif cfg.memory_file is not None:
        share = "on" if cfg.memory_shared else "off"
        argv += [
            "-object",
            f"memory-backend-file,id={MEMORY_NODE},size={mem_mib}M,"
            f"mem-path={opt(cfg.memory_file)},share={share}",
        ]
    elif cfg.memory_ram:
        argv += ["-object", f"memory-backend-ram,id={MEMORY_NODE},size={mem_mib}M"]
    if cfg.vmgenid is not None:
        argv += ["-device", f"vmgenid,id=vmgenid0,guid={cfg.vmgenid}"]
    if cfg.agent_socket is not None:
        # fmt: off
        argv += [
            "-chardev", f"socket,id=warm0,path={opt(cfg.agent_socket)},server=on,wait=off",
            "-device", f"virtio-serial-pci,id={AGENT_SERIAL}",
            "-device", f"virtserialport,bus={AGENT_SERIAL}.0,chardev=warm0,name={AGENT_PORT}",
        ]
        # fmt: on
    for i, (tag, socket) in enumerate(cfg.shares):
        argv += [
            "-chardev",
            f"socket,id=vfs{i},path={opt(socket)}",
            "-device",
            f"vhost-user-fs-pci,chardev=vfs{i},tag={tag},queue-size=1024",
        ]
    if cfg.boot.kernel:
        argv += ["-kernel", cfg.boot.kernel]
        if cfg.boot.initrd:
            argv += ["-initrd", cfg.boot.initrd]
        if cfg.boot.cmdline:
            argv += ["-append", cfg.boot.cmdline]
    elif efi is not None:
        code, variables = efi
        # fmt: off
        argv += [
            "-blockdev",
            f"driver=file,filename={opt(code)},node-name={EFI_CODE_NODE}-file,read-only=on",
            "-blockdev",
            f"driver=raw,file={EFI_CODE_NODE}-file,node-name={EFI_CODE_NODE},read-only=on",
            "-blockdev", f"driver=file,filename={opt(variables)},node-name={EFI_VARS_NODE}-file",
            "-blockdev", f"driver=raw,file={EFI_VARS_NODE}-file,node-name={EFI_VARS_NODE}",
        ]
        # fmt: on
    if cfg.loadvm:
        argv += ["-loadvm", cfg.loadvm]
    if cfg.paused:
        argv.append("-S")
    if cfg.incoming:
        argv += ["-incoming", "defer"]
    return argv


def argv_matches(cmdline: list[str], disk: Path) -> bool:
    """Is a process's argv (from /proc/PID/cmdline) QEMU running this disk?"""
    if not cmdline or "qemu-system" not in Path(cmdline[0]).name:
        return False
    want = f"filename={opt(disk)},"
    return any(arg.startswith("driver=file,") and want in arg + "," for arg in cmdline)


async def start(cfg: QemuConfig, *, log: Path, timeout: float = 120.0) -> None:
    """Start QEMU detached; returns once it runs (pid file written).

    QEMU's start-up output goes to ``log``; a failure raises HostCommandError
    whose message carries QEMU's own words.
    """
    argv = build_argv(cfg)
    done = await run(argv, timeout=timeout, check=False)
    with log.open("ab") as f:
        f.write(("$ " + " ".join(argv) + "\n").encode())
        f.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise HostCommandError(argv, done.returncode, done.stderr.decode("utf-8", "replace"))
