"""Native mounts' host side: virtiofsd's argv, the tag, QEMU's devices, ID maps,
the suspend refusal, and the real virtiofsd started, found again and ended
(no QEMU: virtiofsd waits for one on its socket)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import FakeDriver, FakeImages

from ketch.errors import HostCommandError, InvalidArgument, InvalidState
from ketch.host import procs, squashed
from ketch.host.qemu import QemuConfig, build_argv
from ketch.layout import InstanceDir, Root
from ketch.model import BootSpec, IdMap, InstanceSpec, Intent, MountSpec, MountType
from ketch.progress import ListReporter
from ketch.runtime import virtiofs
from ketch.service import lifecycle
from ketch.service.context import Context
from ketch.store.db import Store

NATIVE = MountSpec(source="/srv/project", target="/project", type=MountType.NATIVE)
needs_virtiofsd = pytest.mark.skipif(
    not os.access(virtiofs.VIRTIOFSD, os.X_OK) or os.geteuid() != 0,
    reason="virtiofsd (QEMU's) not installed, or not root",
)

SOCK = Path("/st/instances/vm/virtiofs-ketch-0123456789abcdef.sock")


# -- the tag ---------------------------------------------------------------------------------


def test_tag_is_stable_short_and_differs_per_target() -> None:
    tag = virtiofs.mount_tag(NATIVE)
    assert tag == virtiofs.mount_tag(replace(NATIVE, source="/elsewhere"))  # target decides
    assert tag != virtiofs.mount_tag(replace(NATIVE, target="/project2"))
    assert tag.startswith("ketch-") and len(tag.encode()) <= 36
    long = replace(NATIVE, target="/" + "é" * 300)
    assert len(virtiofs.mount_tag(long).encode()) <= 36
    assert virtiofs.mount_tag(NATIVE).isascii()


# -- virtiofsd's argv ------------------------------------------------------------------------


def test_argv_serves_only_the_source_in_a_sandbox() -> None:
    argv = virtiofs.build_argv()
    assert argv[0] == virtiofs.VIRTIOFSD
    assert "--fd=3" in argv  # the socket ketch.host.squashed binds
    opts = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-o"]
    assert f"source={squashed.SOURCE_PATH}" in opts
    assert "sandbox=namespace" in opts
    assert "no_xattr" in opts
    assert "modcaps=-mknod:-setfcap" in opts  # no device nodes, no file capabilities
    assert "-f" in argv  # foreground: ketch detaches it itself
    assert "--daemonize" not in argv
    assert argv == virtiofs.build_argv()  # pure


def test_launch_argv_passes_every_word_literally() -> None:
    inner = ["virtiofsd", "-o", "x; rm -rf /", "$(touch /pwned)"]
    argv = virtiofs.launch_argv(
        inner, source="/a b,c", socket=SOCK, pidfile=Path("/d/p.pid"), log=Path("/d/l.log")
    )
    assert argv[1:4] == ["-P", "-m", "ketch.host.squashed"]  # -P: not from the cwd
    assert argv[4:] == ["/d/p.pid", str(SOCK), "/a b,c", "/d/l.log", "--", *inner]


def test_id_map_squashes_root_only() -> None:
    assert squashed.id_map() == "0 65534 1\n1 1 65533\n65535 65535 4294901760\n"
    lines = [tuple(map(int, line.split())) for line in squashed.id_map().splitlines()]
    inside = [(first, first + count - 1) for first, _, count in lines]
    assert inside == [(0, 0), (1, 65533), (65535, squashed.ID_MAX)]  # all but 65534
    assert sorted(outer for _, outer, _ in lines)[0] == 1  # host 0 is never inside


def env(socket: Path) -> bytes:
    return b"PATH=/bin\0" + f"{squashed.SOCKET_ENV}={socket}".encode() + b"\0"


def test_argv_matches_only_this_socket() -> None:
    argv = virtiofs.build_argv()
    assert virtiofs.argv_matches(argv, env(SOCK), SOCK)
    assert virtiofs.argv_matches(["/usr/libexec/virtiofsd", *argv[1:]], env(SOCK), SOCK)
    assert not virtiofs.argv_matches(argv, env(SOCK.with_name("virtiofs-other.sock")), SOCK)
    assert not virtiofs.argv_matches(argv, env(Path(str(SOCK) + "x")), SOCK)
    assert not virtiofs.argv_matches(["sleep", *argv[1:]], env(SOCK), SOCK)
    assert not virtiofs.argv_matches([], env(SOCK), SOCK)
    assert not virtiofs.argv_matches(argv, b"", SOCK)


# -- the source at start -----------------------------------------------------------------------


def test_source_problems(tmp_path: Path) -> None:
    real = tmp_path.resolve() / "src"
    real.mkdir()
    assert virtiofs.source_problem(replace(NATIVE, source=str(real))) is None
    gone = replace(NATIVE, source=str(real / "gone"))
    assert virtiofs.source_problem(gone) == f"{real / 'gone'} is missing"
    # Someone who can write above SOURCE swaps it for a symlink to /: never served.
    swapped = tmp_path.resolve() / "swapped"
    swapped.symlink_to("/")
    problem = virtiofs.source_problem(replace(NATIVE, source=str(swapped)))
    assert problem is not None and "symlink" in problem
    assert virtiofs.source_problem(replace(NATIVE, source="relative/dir")) is not None


@needs_virtiofsd
def test_a_ketch_package_planted_in_the_working_directory_is_not_run(
    short_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = short_tmp_path / "cwd" / "ketch"
    planted.mkdir(parents=True)
    marker = short_tmp_path / "ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(planted.parent)
    idir = InstanceDir(short_tmp_path / "vm")
    idir.path.mkdir()
    source = short_tmp_path / "src"
    source.mkdir()
    asyncio.run(virtiofs.start(idir, replace(NATIVE, source=str(source))))
    asyncio.run(virtiofs.stop_all(idir))
    assert not marker.exists()


# -- ID maps ---------------------------------------------------------------------------------


def test_identity_maps_are_accepted() -> None:
    virtiofs.check_maps(NATIVE)
    virtiofs.check_maps(replace(NATIVE, uid_maps=(IdMap(1000, 1000),), gid_maps=(IdMap(5, 5),)))


@pytest.mark.parametrize(
    "mount",
    [
        replace(NATIVE, uid_maps=(IdMap(1000, 0),)),
        replace(NATIVE, uid_maps=(IdMap(1000, None),)),
        replace(NATIVE, gid_maps=(IdMap(1000, 1001),)),
        replace(NATIVE, uid_maps=(IdMap(0, 0),)),  # the guest's root is squashed
        replace(NATIVE, gid_maps=(IdMap(65534, 65534),)),  # nobody is the guest's root
    ],
)
def test_other_maps_are_refused_with_what_to_do(mount: MountSpec) -> None:
    with pytest.raises(InvalidArgument) as caught:
        virtiofs.check_maps(mount)
    assert caught.value.exit_code == 1
    assert "maps no ids" in caught.value.message
    assert caught.value.hint is not None and "classic" in caught.value.hint


# -- QEMU's devices --------------------------------------------------------------------------

CFG = QemuConfig(
    name="vm",
    cpus=1,
    memory=512 * 1024**2,
    accel="tcg",
    disk=Path("/st/instances/vm/disk.qcow2"),
    seed_iso=None,
    boot=BootSpec(kernel="/vault/vmlinuz"),
    pidfile=Path("/st/instances/vm/qemu.pid"),
    qmp_socket=Path("/st/instances/vm/qmp.sock"),
    serial_log=Path("/st/instances/vm/serial.log"),
    ssh_port=42000,
    mac="52:54:00:00:00:01",
)


def test_no_shares_no_shared_memory() -> None:
    argv = build_argv(CFG)
    assert not any("memory-backend" in a or "vhost-user" in a for a in argv)


def test_shares_give_shared_memory_and_a_device_each() -> None:
    cfg = replace(CFG, shares=(("ketch-a", SOCK), ("ketch-b", Path("/st/b,c.sock"))))
    argv = build_argv(cfg)
    machine = argv[argv.index("-machine") + 1]
    assert machine == "q35,memory-backend=mem"
    obj = argv[argv.index("-object") + 1]
    assert obj == "memory-backend-memfd,id=mem,size=512M,share=on"
    assert argv[argv.index("-m") + 1] == "512M"  # the same size as the backend
    chardevs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-chardev"]
    assert f"socket,id=vfs0,path={SOCK}" in chardevs
    assert "socket,id=vfs1,path=/st/b,,c.sock" in chardevs  # commas doubled
    devices = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-device"]
    assert "vhost-user-fs-pci,chardev=vfs0,tag=ketch-a,queue-size=1024" in devices
    assert "vhost-user-fs-pci,chardev=vfs1,tag=ketch-b,queue-size=1024" in devices


# -- the real virtiofsd ----------------------------------------------------------------------


@needs_virtiofsd
def test_started_detached_found_again_and_ended(short_tmp_path: Path) -> None:
    idir = InstanceDir(short_tmp_path.resolve() / "vm")
    idir.path.mkdir()
    source = short_tmp_path / "src"
    source.mkdir()
    mount = replace(NATIVE, source=str(source))
    share = asyncio.run(virtiofs.start(idir, mount))
    tag = virtiofs.mount_tag(mount)
    assert share.tag == tag and share.socket == idir.virtiofs_socket(tag)
    assert stat.S_IMODE(share.socket.stat().st_mode) == 0o600
    pid = procs.read_pidfile(idir.virtiofs_pidfile(tag))
    assert pid is not None and procs.alive(pid)
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid != os.getpid()  # detached: not ketchd's child, never its zombie
    assert os.getsid(pid) != os.getsid(0)
    assert virtiofs.find(idir, tag) == (pid, procs.cmdline(pid))
    assert virtiofs.running(idir, mount)
    # In a user namespace where the guest's root is the host's nobody.
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == squashed.id_map().split()
    # A daemon that lost the pid file still finds it (through /proc).
    idir.virtiofs_pidfile(tag).unlink()
    found = virtiofs.find(idir, tag)
    assert found is not None and found[0] == pid
    assert virtiofs.tags_in(idir) == {tag}
    asyncio.run(virtiofs.stop_all(idir))
    assert not procs.alive(pid)
    assert not share.socket.exists()
    assert virtiofs.find(idir, tag) is None
    assert "$ " in idir.virtiofs_log(tag).read_text()  # the command line is logged


@needs_virtiofsd
def test_a_source_that_cannot_be_served_raises_with_virtiofsds_words(tmp_path: Path) -> None:
    idir = InstanceDir(tmp_path / "vm")
    idir.path.mkdir()
    mount = replace(NATIVE, source=str(tmp_path / "gone"))
    with pytest.raises(HostCommandError) as caught:
        asyncio.run(virtiofs.start(idir, mount))
    assert "No such file or directory" in caught.value.message, caught.value.message
    assert virtiofs.find(idir, virtiofs.mount_tag(mount)) is None
    assert not idir.virtiofs_pidfile(virtiofs.mount_tag(mount)).exists()


def test_a_foreign_process_on_a_lookalike_pid_file_is_never_signalled(tmp_path: Path) -> None:
    idir = InstanceDir(tmp_path / "vm")
    idir.path.mkdir()
    tag = virtiofs.mount_tag(NATIVE)
    other = subprocess.Popen(["sleep", "60"])
    try:
        idir.virtiofs_pidfile(tag).write_text(f"{other.pid}\n")
        assert virtiofs.find(idir, tag) is None
        asyncio.run(virtiofs.stop(idir, tag))
        assert other.poll() is None  # still running
        assert not idir.virtiofs_pidfile(tag).exists()
    finally:
        other.kill()
        other.wait()


# -- suspend ---------------------------------------------------------------------------------


def test_suspend_with_a_native_mount_is_refused_before_anything_is_done(tmp_path: Path) -> None:
    root = Root(tmp_path / "root")
    root.path.mkdir()
    store = Store(root.database)
    driver = FakeDriver()
    spec = InstanceSpec(
        name="vm", image="test", image_id="test:base", release="test", cpus=1,
        memory=256 * 1024**2, disk=64 * 1024**2, boot=BootSpec(kernel="/nonexistent"),
        base_disk="/nonexistent", ssh_port=42001, mac="52:54:00:00:00:01",
        instance_id="i-vm", mounts=(NATIVE,),
    )  # fmt: skip
    store.add(spec, Intent.RUN)
    root.instance("vm").path.mkdir(parents=True)
    driver.add("vm", running=True, tags=set())
    ctx = Context(root, store, driver, FakeImages())
    with pytest.raises(InvalidState) as caught:
        asyncio.run(lifecycle.suspend(ctx, "vm", ListReporter()))
    assert "native mount (/project)" in caught.value.message
    assert "keeps running" in caught.value.message
    assert caught.value.hint is not None and "ketch umount vm:/project" in caught.value.hint
    assert [c.what for c in driver.calls] == []  # the driver was never asked
    assert driver.vm("vm").running
    assert store.get("vm").intent is Intent.RUN
    assert list(store.unfinished()) == []
