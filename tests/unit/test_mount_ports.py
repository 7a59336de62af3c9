"""Classic mounts over a virtio-serial port: the pure parts and the driver's QMP calls.

The QEMU argv with the mounts' controller, the port's QMP arguments and bus,
the supervisor's ``--connect`` argv and its transport, the guest script's port
lookup (run by ``sh`` on a sysfs tree made from a real tiny guest's), and the
hot-plug's QMP sequence against a recording monitor (no QEMU runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_qemu_argv import CFG

from ketch.errors import KetchError, QMPError
from ketch.host import mountport, qemu, qmp
from ketch.host.qemu import build_argv
from ketch.host.sftp.launch import (
    GUEST_PORT_SCRIPT,
    PORT_LOOKUP,
    guest_port_argv,
    is_supervisor,
    supervisor_argv,
    transport,
)
from ketch.layout import InstanceDir, mount_key
from ketch.model import BootSpec, InstanceSpec, PidStatus
from ketch.runtime import mount_ports
from ketch.runtime.driver import MountPorts
from ketch.runtime.qemu_driver import QemuDriver
from ketch.runtime.template import write_record

DATA = Path(__file__).parent / "data"
KEY = "be98fcf9606acdd7"
SPEC = InstanceSpec(
    name="vm", image="tiny", image_id="ketch:tiny@1", release="ketch tiny", cpus=1,
    memory=512 * 1024**2, disk=64 * 1024**2, boot=BootSpec(kernel="/k"), base_disk="/b",
    ssh_port=42001, mac="52:54:00:00:00:01", instance_id="i-vm",
)  # fmt: skip


def test_the_controller_comes_before_the_taps_and_only_when_asked() -> None:
    taps = (("kt-0123456789", "52:54:01:aa:bb:cc"),)
    plain = build_argv(replace(CFG, taps=taps))
    argv = build_argv(replace(CFG, taps=taps, mount_serial=True))
    controller = ["-device", "virtio-serial-pci,id=mountser0"]
    at = argv.index(controller[1]) - 1
    assert argv[:at] + argv[at + 2 :] == plain
    assert argv[at - 1] == "virtio-rng-pci" and argv[at + 2 : at + 4] == ["-netdev", argv[at + 3]]
    assert "-device" not in argv[argv.index("virtio-net-pci,netdev=net1,mac=52:54:01:aa:bb:cc") :]


def test_the_ports_bus_is_the_mounts_controller_else_a_warm_clones() -> None:
    assert mountport.bus(build_argv(CFG)) is None
    assert mountport.bus(build_argv(replace(CFG, mount_serial=True))) == "mountser0.0"
    warm = replace(CFG, agent_socket=Path("/st/instances/vm1/warm-agent.sock"))
    assert mountport.bus(build_argv(warm)) == "warmser0.0"


def test_the_ports_qmp_arguments() -> None:
    sock = Path("/r/instances/vm/mounts/k.sock")
    assert mountport.chardev_add_args("k", sock) == {
        "id": "kmount-k",
        "backend": {
            "type": "socket",
            "data": {
                "addr": {"type": "unix", "data": {"path": str(sock)}},
                "server": True,
                "wait": False,
            },
        },
    }
    assert mountport.device_add_args("k", "mountser0.0") == {
        "driver": "virtserialport",
        "id": "kmountport-k",
        "bus": "mountser0.0",
        "chardev": "kmount-k",
        "name": "org.ketch.mount.k",
    }


def test_the_supervisor_over_a_port_and_its_transport() -> None:
    common: dict[str, Any] = {
        "uid": 1234,
        "gid": 1234,
        "uid_maps": [(1234, 1000)],
        "gid_maps": [],
        "pidfile": "/r/m/k.pid",
        "log": "/r/m/k.log",
        "python": "/usr/bin/python3",
    }
    argv = supervisor_argv("/src", connect="/r/m/k.sock", **common)
    assert argv[-2:] == ["--connect", "/r/m/k.sock"] and "--" not in argv
    assert is_supervisor(argv, "/r/m/k.pid") and transport(argv) == "virtio-serial"
    over_ssh = supervisor_argv("/src", ssh=["ssh", "--connect", "x"], **common)
    assert transport(over_ssh) == "ssh"  # words after "--" are ssh's


def _sysfs(tmp_path: Path, recorded: str) -> Path:
    root = tmp_path / "virtio-ports"
    for line in recorded.splitlines():
        if line.startswith("/sys/"):
            path, name = line.split(" ", 1)
            port = root / Path(path).parent.name
            port.mkdir(parents=True)
            (port / "name").write_text(name + "\n")
    return root


def _lookup(sysfs: Path, name: str) -> str:
    script = PORT_LOOKUP.format(sysfs=sysfs, tries=2) + 'echo "$d"'
    done = subprocess.run(
        ["sh", "-c", script, "ketch-mount", "/mnt/x", "k", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


def test_the_guest_finds_its_port_by_name(tmp_path: Path) -> None:
    sysfs = _sysfs(tmp_path, (DATA / "tiny-virtio-ports.txt").read_text())
    (sysfs / "vport5p1").mkdir()  # a warm clone's agent port beside it
    (sysfs / "vport5p1" / "name").write_text("org.ketch.warm.0\n")
    (sysfs / "vport5p2").mkdir()  # a port without a name (an empty file)
    (sysfs / "vport5p2" / "name").write_text("")
    assert _lookup(sysfs, mountport.port_name(KEY)) == "vport4p1"
    assert _lookup(sysfs, "org.ketch.warm.0") == "vport5p1"
    assert _lookup(sysfs, mountport.port_name("0000000000000000")) == ""


def test_the_guest_script_passes_its_words_as_arguments() -> None:
    argv = guest_port_argv("/mnt/a b", KEY, mountport.port_name(KEY))
    assert argv[:7] == [
        "sudo",
        "-n",
        "env",
        "KETCH_MOUNT_AT=/mnt/a\\040b",
        "sh",
        "-c",
        GUEST_PORT_SCRIPT,
    ]
    assert argv[7:] == ["ketch-mount", "/mnt/a b", KEY, f"org.ketch.mount.{KEY}"]
    assert '0<>"/dev/$d" 1>&0' in GUEST_PORT_SCRIPT  # one open: a port takes one opener


class Recorder:
    """A QMP monitor that records what it is asked and fails where told."""

    def __init__(self, fail: dict[str, str]) -> None:
        self.calls: list[tuple[str, dict[str, Any] | None]] = []
        self.fail = fail

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 10.0
    ) -> Any:
        self.calls.append((command, arguments))
        if command in self.fail:
            raise QMPError(self.fail[command])
        if command == "chardev-add" and arguments is not None:
            Path(arguments["backend"]["data"]["addr"]["data"]["path"]).touch()
        return {}


def _driver(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mon: Recorder, *, controller: bool
) -> tuple[QemuDriver, InstanceDir]:
    idir = InstanceDir(tmp_path / "vm")
    idir.path.mkdir(parents=True)
    driver = QemuDriver()
    argv = build_argv(replace(CFG, mount_serial=controller))
    monkeypatch.setattr(driver, "_pid", lambda _: (42, PidStatus.OURS, argv, None))

    @contextlib.asynccontextmanager
    async def connect(socket: Path, *, timeout: float = 3.0) -> AsyncIterator[Recorder]:
        yield mon

    monkeypatch.setattr(qmp, "connect", connect)
    return driver, idir


def test_a_port_is_plugged_and_unplugged_over_qmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mon = Recorder({"device_del": "Device 'kmountport-k' not found",
                    "chardev-remove": "Chardev 'kmount-k' not found"})  # fmt: skip
    driver, idir = _driver(monkeypatch, tmp_path, mon, controller=True)
    assert isinstance(driver, MountPorts)
    spec = SPEC
    key = mount_key("/mnt/a")
    sock = asyncio.run(driver.add_mount_port(spec, idir, "/mnt/a"))
    assert sock is not None
    assert sock == idir.mount_socket("/mnt/a") and (sock.stat().st_mode & 0o777) == 0o600
    assert [c for c, _ in mon.calls] == [
        "device_del",
        "chardev-remove",
        "chardev-add",
        "device_add",
    ]
    assert mon.calls[3][1] == mountport.device_add_args(key, "mountser0.0")
    mon.calls.clear()
    mon.fail.clear()
    asyncio.run(driver.remove_mount_port(spec, idir, "/mnt/a"))
    assert mon.calls == [
        ("device_del", {"id": mountport.device_id(key)}),
        ("chardev-remove", {"id": mountport.chardev_id(key)}),
    ]
    assert not sock.exists()


def test_a_refused_device_add_leaves_no_chardev_and_no_bus_means_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = SPEC
    mon = Recorder({"device_add": "Bus 'mountser0.0' is full"})
    driver, idir = _driver(monkeypatch, tmp_path, mon, controller=True)
    with pytest.raises(KetchError, match="is full"):
        asyncio.run(driver.add_mount_port(spec, idir, "/mnt/a"))
    assert mon.calls[-1] == ("chardev-remove", {"id": mountport.chardev_id(mount_key("/mnt/a"))})
    assert not idir.mount_socket("/mnt/a").exists()
    mon = Recorder({})
    driver, idir = _driver(monkeypatch, tmp_path / "b", mon, controller=False)
    assert asyncio.run(driver.add_mount_port(spec, idir, "/mnt/a")) is None and mon.calls == []


def test_the_config_has_the_controller_when_recorded_and_not_warm(tmp_path: Path) -> None:
    idir = InstanceDir(tmp_path / "vm")
    idir.path.mkdir()
    driver = QemuDriver()

    def config(*, resume: bool) -> qemu.QemuConfig:
        return driver._config(SPEC, idir, "tcg", None, loadvm=resume, paused=False)

    assert not config(resume=False).mount_serial  # no record: the older layout
    mount_ports.mark(idir)
    assert idir.mount_serial.read_text() == "virtio-serial-pci\n"
    assert config(resume=False).mount_serial and config(resume=True).mount_serial
    write_record(idir, template="t", shape=True)  # a warm clone resumed: its template's layout
    warm = config(resume=True)
    assert warm.agent_socket is not None and not warm.mount_serial
