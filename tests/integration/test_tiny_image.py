"""The built-in tiny image boots under QEMU/TCG and acts as a NoCloud cloud image.

One VM for the module, booted from a qcow2 overlay of the cached image with a
seed ISO made by ketch.host.seed; every test talks to it over OpenSSH with
the host key pinned.  Bounded waits only: no test asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from ketch.host.seed import GUEST_CONFIG_FILE, build_seed_iso, render_guest_config
from ketch.images.tiny import build_tiny
from ketch.model import ImageInfo
from ketch.progress import ListReporter

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen")),
        reason="needs qemu-system-x86_64, qemu-img and OpenSSH",
    ),
]

NAME = "tinyvm"
SSH_READY_TIMEOUT = 300.0  # a bound against hangs, not a performance target
POWEROFF_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Guest:
    """A tiny-image VM under QEMU/TCG, reached over SSH on a forwarded port."""

    image: ImageInfo
    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    boots: int = 0
    known_hosts: Path = field(init=False)

    def __post_init__(self) -> None:
        self.known_hosts = self.workdir / "known_hosts"

    @property
    def serial(self) -> Path:
        return self.workdir / f"serial-{self.boots}.log"

    def serial_tail(self) -> str:
        try:
            return "\n".join(self.serial.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return "(no serial log)"

    def start(self) -> None:
        assert self.proc is None
        self.boots += 1
        self.port = free_port()
        boot = self.image.boot
        assert boot.kernel and boot.initrd and boot.cmdline
        argv = [
            "qemu-system-x86_64",
            "-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1",
            "-nographic", "-nodefaults",
            "-serial", f"file:{self.serial}",
            "-kernel", boot.kernel, "-initrd", boot.initrd, "-append", boot.cmdline,
            "-drive", f"file={self.workdir / 'overlay.qcow2'},if=virtio,format=qcow2",
            "-drive", f"file={self.workdir / 'cidata.iso'},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            "-qmp", f"unix:{self.workdir / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip
        log = (self.workdir / f"qemu-{self.boots}.log").open("wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()

    def ssh_argv(self, command: str, known_hosts: Path | None = None) -> list[str]:
        return [
            "ssh", "-F", "/dev/null",
            "-i", str(self.workdir / "client"),
            "-p", str(self.port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlias={NAME}",
            "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
            "ubuntu@127.0.0.1", command,
        ]  # fmt: skip

    def ssh(self, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.ssh_argv(command), capture_output=True, text=True, timeout=120, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"ssh {command!r} exited {done.returncode}: {done.stderr}\n{self.serial_tail()}"
            )
        return done

    def _banner(self) -> bool:
        """True once something on the port speaks SSH (user-mode networking
        accepts TCP before the guest listens)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.settimeout(10)
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def wait_ready(self) -> None:
        """Wait for SSH with the pinned key, and for cloud-init's boot-finished."""
        assert self.proc is not None
        deadline = time.monotonic() + SSH_READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited {self.proc.returncode}\n{self.serial_tail()}")
            if self._banner():
                done = self.ssh("test -e /var/lib/cloud/instance/boot-finished", check=False)
                if done.returncode == 0:
                    return
            time.sleep(0.5)
        raise AssertionError(f"no SSH login within {SSH_READY_TIMEOUT:g} s\n{self.serial_tail()}")

    def qmp(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(self.workdir / "qmp.sock"))
            f = s.makefile("rw")
            assert "QMP" in json.loads(f.readline())
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply:
                        break
                    assert "error" not in reply, reply

    def powerdown(self) -> int:
        """ACPI power button; QEMU must exit by itself.  Its exit code."""
        assert self.proc is not None
        self.qmp("system_powerdown")
        try:
            code = self.proc.wait(timeout=POWEROFF_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"the guest did not power off within {POWEROFF_TIMEOUT:g} s\n{self.serial_tail()}"
            ) from exc
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            self.proc = None


CLOUD_CONFIG_EXTRA = {
    "users": [
        "default",
        {"name": "alice", "uid": 1500, "gecos": "Alice A", "groups": ["adm", "video"]},
    ],
    "write_files": [
        {"path": "/etc/ketch-test/hello.txt", "content": "hello from write_files\n"},
        {"path": "/etc/ketch-test/secret", "content": "s3cret\n", "permissions": "0600"},
    ],
    "runcmd": [
        "echo ran >> /var/tmp/runcmd-count",
        ["sh", "-c", "id -u > /var/tmp/runcmd-uid"],
    ],
}


@pytest.fixture(scope="module")
def guest(tiny_image: ImageInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    workdir = Path(tmp_path_factory.mktemp("tinyvm"))
    for key in ("client", "hostkey"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", str(workdir / key)],
            check=True,
        )
    host_public = (workdir / "hostkey.pub").read_text().split()
    (workdir / "known_hosts").write_text(f"{NAME} {host_public[0]} {host_public[1]}\n")
    cloud_config = {
        "hostname": NAME,
        "ssh_authorized_keys": [(workdir / "client.pub").read_text().strip()],
        "ssh_keys": {
            "ed25519_private": (workdir / "hostkey").read_text(),
            "ed25519_public": (workdir / "hostkey.pub").read_text().strip(),
        },
        **CLOUD_CONFIG_EXTRA,
    }
    meta = {"instance-id": "i-tiny-test", "local-hostname": NAME}
    build_seed_iso(
        workdir / "cidata.iso",
        meta_data=yaml.safe_dump(meta),
        user_data="#cloud-config\n" + yaml.safe_dump(cloud_config),
        extra_files={GUEST_CONFIG_FILE: render_guest_config(cloud_config, meta).encode()},
    )
    overlay = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", tiny_image.disk_format]
    overlay += ["-b", tiny_image.disk, str(workdir / "overlay.qcow2"), "1G"]
    subprocess.run(overlay, check=True)
    vm = Guest(tiny_image, workdir)
    try:
        vm.start()
        vm.wait_ready()
        yield vm
    finally:
        vm.kill()


def test_ssh_presents_exactly_the_pinned_host_key(guest: Guest) -> None:
    assert guest.ssh("echo ok").stdout == "ok\n"
    other = guest.workdir / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = guest.workdir / "known_hosts.wrong"
    kind, key = (other.with_suffix(".pub")).read_text().split()[:2]
    wrong.write_text(f"{NAME} {kind} {key}\n")
    done = subprocess.run(
        guest.ssh_argv("echo should-not-run", known_hosts=wrong),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 255
    assert "should-not-run" not in done.stdout
    assert "verification failed" in done.stderr or "IDENTIFICATION HAS CHANGED" in done.stderr


def test_boot_finished_as_cloud_init_writes_it(guest: Guest) -> None:
    text = guest.ssh("cat /var/lib/cloud/instance/boot-finished").stdout
    assert " - v. " in text
    assert guest.ssh("readlink /var/lib/cloud/instance").stdout.strip() == "instances/i-tiny-test"
    assert "boot finished" in guest.ssh("cat /var/log/cloud-init.log").stdout


def test_the_datasource_keeps_cloud_inits_layout(guest: Guest) -> None:
    """The seed's files in the instance's directory, as cloud-init names them, 0600, and
    nothing left of their copy (``.ketch-new``)."""
    listing = guest.ssh("sudo ls -A /var/lib/cloud/instance/").stdout.split()
    assert {"meta-data", "user-data.txt", "ketch-guest.sh", "sem"} <= set(listing), listing
    assert ".ketch-new" not in listing and not any(n.endswith(".ketch-new") for n in listing)
    modes = guest.ssh("sudo stat -c '%a %n' /var/lib/cloud/instance/user-data.txt").stdout
    assert modes.split()[0] == "600"


def test_the_default_users_groups(guest: Guest) -> None:
    assert {"adm", "sudo"} <= set(guest.ssh("id -nG").stdout.split())


def test_a_user_of_the_user_data(guest: Guest) -> None:
    """``users:`` beside the default: its passwd entry, its own group, the groups it asked
    for (``video`` made on the way), its home; the default user keeps its own."""
    entry = guest.ssh("grep '^alice:' /etc/passwd").stdout.strip().split(":")
    assert entry[2:7] == ["1500", "1500", "Alice A", "/home/alice", "/bin/sh"]
    assert set(guest.ssh("id -nG alice").stdout.split()) == {"alice", "adm", "video"}
    assert guest.ssh("stat -c '%u:%g %a' /home/alice").stdout.split() == ["1500:1500", "755"]
    assert guest.ssh("id -un").stdout.strip() == "ubuntu"


def test_sudo_without_password(guest: Guest) -> None:
    assert guest.ssh("sudo -n id -u").stdout.strip() == "0"
    assert guest.ssh("sudo sh -c 'id -u'").stdout.strip() == "0"
    guest.ssh("sudo -n true")
    assert guest.ssh("id -un").stdout.strip() == "ubuntu"


def test_hostname(guest: Guest) -> None:
    assert guest.ssh("hostname").stdout.strip() == NAME


def test_write_files_and_runcmd(guest: Guest) -> None:
    assert guest.ssh("cat /etc/ketch-test/hello.txt").stdout == "hello from write_files\n"
    assert guest.ssh("sudo stat -c '%a %U' /etc/ketch-test/secret").stdout.split() == [
        "600",
        "root",
    ]
    assert guest.ssh("sudo cat /etc/ketch-test/secret").stdout == "s3cret\n"
    assert guest.ssh("cat /var/tmp/runcmd-uid").stdout.strip() == "0"
    assert guest.ssh("cat /var/tmp/runcmd-count").stdout == "ran\n"


def test_tools_ketch_uses(guest: Guest) -> None:
    tools = ("sh", "cat", "tar", "mkdir", "sync", "uptime", "nproc", "df", "sha256sum")
    out = guest.ssh(" && ".join(f"command -v {t}" for t in tools)).stdout.split()
    assert len(out) == len(tools)
    boot_id = guest.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    assert len(boot_id) == 36
    assert guest.ssh("nproc").stdout.strip() == "1"
    assert guest.ssh("echo -n abc | sha256sum").stdout.startswith(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    guest.ssh("df -k / && uptime && mkdir -p /tmp/t && tar -cf - /etc/hostname >/dev/null")


def test_root_filesystem_grows_to_the_disk(guest: Guest) -> None:
    blocks = int(guest.ssh("df -k / | tail -n 1").stdout.split()[1])
    assert blocks > 512 * 1024  # the overlay is 1 GiB; the image's filesystem 256 MiB


def test_writes_survive_powerdown_and_restart(guest: Guest) -> None:
    boot_id = guest.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    guest.ssh("echo persisted > ~/persist.txt && sync")
    assert guest.powerdown() == 0
    guest.start()
    guest.wait_ready()
    assert guest.ssh("cat ~/persist.txt").stdout == "persisted\n"
    assert guest.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip() != boot_id
    # Per-instance work ran once; per-boot state is back.
    assert guest.ssh("cat /var/tmp/runcmd-count").stdout == "ran\n"
    assert guest.ssh("sudo -n id -u").stdout.strip() == "0"
    assert guest.ssh("hostname").stdout.strip() == NAME
    # The second boot's datasource found the user in its groups: each named once.
    for group, user in (("adm", "ubuntu"), ("sudo", "ubuntu"), ("adm", "alice")):
        members = guest.ssh(f"grep '^{group}:' /etc/group").stdout.strip().split(":")[3]
        assert members.split(",").count(user) == 1, members
    assert guest.ssh("grep -c '^alice:' /etc/passwd").stdout.strip() == "1"
    # The filesystem was unmounted cleanly: no journal recovery at this boot.
    assert "recovery complete" not in guest.serial.read_text(errors="replace")


def test_second_build_is_a_cache_hit(tiny_image: ImageInfo) -> None:
    cache = Path(tiny_image.disk).parents[2]
    before = {p.name: p.stat().st_mtime_ns for p in Path(tiny_image.disk).parent.iterdir()}
    reporter = ListReporter()
    again = asyncio.run(build_tiny(cache, reporter))
    assert again == tiny_image
    assert reporter.steps == []
    after = {p.name: p.stat().st_mtime_ns for p in Path(tiny_image.disk).parent.iterdir()}
    assert after == before


def test_concurrent_builds_share_one_build_and_force_rebuilds(tmp_path: Path) -> None:
    reporters = [ListReporter(), ListReporter()]

    async def both() -> list[ImageInfo]:
        return list(await asyncio.gather(*(build_tiny(tmp_path, r) for r in reporters)))

    first, second = asyncio.run(both())
    assert first == second
    downloads = [r for r in reporters if "Downloading packages" in r.steps]
    assert len(downloads) == 1
    built = json.loads((Path(first.disk).parent / "manifest.json").read_text())["built"]

    # A forced rebuild never touches a built image (overlays name its disk):
    # it goes to a new directory, which is the one used from then on.
    forced = ListReporter()
    again = asyncio.run(build_tiny(tmp_path, forced, force=True))
    assert "Downloading packages" in forced.steps
    assert again.id != first.id and again.disk != first.disk
    assert json.loads((Path(first.disk).parent / "manifest.json").read_text())["built"] == built
    key = first.id.rsplit("@", 1)[1]
    manifest = json.loads((Path(again.disk).parent / "manifest.json").read_text())
    assert manifest["key"] == key and manifest["build"] == Path(again.disk).parent.name
    assert again.id == f"ketch:tiny@{manifest['build']}"
    assert asyncio.run(build_tiny(tmp_path)) == again
    entries = sorted(p.name for p in (tmp_path / "tiny").iterdir() if p.name != ".lock")
    assert entries == sorted([key, manifest["build"]])
