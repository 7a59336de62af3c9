"""Warm launch, the pure parts: the QEMU argv of templates and clones, the guest
agent's protocol, the reseed helper's ELF, the template seed's padding."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from ketch.host.qemu import AGENT_PORT, MEMORY_NODE, QemuConfig, build_argv
from ketch.images.tiny.stage import elf_deps
from ketch.model import BootSpec
from ketch.runtime import warm_guest
from ketch.runtime.warm_flavors import TINY
from ketch.service import templates

DIR = Path("/store/instances/vm1")
CFG = QemuConfig(
    name="vm1",
    cpus=1,
    memory=512 * 1024**2,
    accel="tcg",
    disk=DIR / "disk.qcow2",
    seed_iso=DIR / "cidata.iso",
    boot=BootSpec(kernel="/vault/vmlinuz", initrd="/vault/initrd.img", cmdline="console=ttyS0"),
    pidfile=DIR / "qemu.pid",
    qmp_socket=DIR / "qmp.sock",
    serial_log=DIR / "serial.log",
    ssh_port=42017,
    mac="52:54:00:ab:cd:ef",
)
MEM = Path("/store/templates/tiny-0123/memory.ram")


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_a_template_keeps_its_ram_in_the_memory_file_shared() -> None:
    argv = build_argv(replace(CFG, memory_file=MEM, memory_shared=True))
    assert f"memory-backend={MEMORY_NODE}" in values(argv, "-machine")[0]
    (obj,) = values(argv, "-object")
    assert obj == f"memory-backend-file,id=mem,size=512M,mem-path={MEM},share=on"
    assert "-incoming" not in argv


def test_a_clone_maps_the_same_file_privately_and_waits_for_its_state() -> None:
    cfg = replace(CFG, memory_file=MEM, agent_socket=DIR / "warm-agent.sock", paused=True)
    argv = build_argv(replace(cfg, incoming=True, vmgenid="6c0f2a5e-0000-4000-8000-000000000001"))
    (obj,) = values(argv, "-object")
    assert obj.endswith("share=off")
    assert argv[-2:] == ["-incoming", "defer"] and "-S" in argv
    assert f"virtserialport,bus=warmser0.0,chardev=warm0,name={AGENT_PORT}" in values(
        argv, "-device"
    )
    assert "vmgenid,id=vmgenid0,guid=6c0f2a5e-0000-4000-8000-000000000001" in values(
        argv, "-device"
    )
    # the device layout (every -device, in order) is the template's: the state loads
    template = build_argv(
        replace(cfg, memory_shared=True, vmgenid="6c0f2a5e-0000-4000-8000-000000000002")
    )
    strip = [d.split(",guid=")[0].split(",mac=")[0] for d in values(argv, "-device")]
    assert strip == [d.split(",guid=")[0].split(",mac=")[0] for d in values(template, "-device")]


def test_a_resumed_warm_instance_has_plain_ram_under_the_same_block_name() -> None:
    argv = build_argv(replace(CFG, memory_ram=True, agent_socket=DIR / "a.sock"))
    assert values(argv, "-object") == [f"memory-backend-ram,id={MEMORY_NODE},size=512M"]
    assert f"memory-backend={MEMORY_NODE}" in values(argv, "-machine")[0]


def test_a_templates_managed_nic_has_an_empty_backend_in_the_same_slot() -> None:
    taps = (("kt-0123", "52:54:00:00:00:02"),)
    template = build_argv(replace(CFG, taps=taps, dummy_taps=True))
    clone = build_argv(replace(CFG, taps=taps))
    assert values(template, "-netdev")[1] == "hubport,id=net1,hubid=1"
    assert values(clone, "-netdev")[1].startswith("tap,id=net1,ifname=kt-0123,")
    assert values(template, "-device") == values(clone, "-device")


def test_a_cold_instance_has_none_of_it() -> None:
    argv = build_argv(CFG)
    assert "-object" not in argv and "-incoming" not in argv
    assert not any("virtserialport" in a or "vmgenid" in a for a in argv)


def test_the_memory_file_path_is_quoted_for_qemu() -> None:
    argv = build_argv(replace(CFG, memory_file=Path("/a,b/memory.ram")))
    assert "mem-path=/a,,b/memory.ram," in values(argv, "-object")[0]


def test_the_handover_sends_entropy_first_and_nothing_else_secret() -> None:
    entropy = bytes(range(64))
    macs = [("52:54:00:aa:bb:cc", "52:54:00:01:02:03"), ("52:54:00:aa:bb:cd", "52:54:00:01:02:04")]
    text = warm_guest.handover(entropy, 1796000000.6, macs, grow=False)
    lines = text.decode().splitlines()
    assert lines[0] == f"entropy {base64.b64encode(entropy).decode()}"
    assert lines[1:] == [
        "time 1796000001",
        "mac 52:54:00:aa:bb:cc 52:54:00:01:02:03",
        "mac 52:54:00:aa:bb:cd 52:54:00:01:02:04",
        "go",
    ]
    grown = warm_guest.handover(entropy, 1796000000.6, macs, grow=True).decode().splitlines()
    assert grown[-2:] == ["grow", "go"] and grown[:-2] == lines[:-1]


def test_agent_replies() -> None:
    assert warm_guest.parse_reply(b"template-ready\n") == ("template-ready", "")
    assert warm_guest.parse_reply(b"warn reseed-failed\n") == ("warn", "reseed-failed")


def test_the_reseed_helper_is_a_static_elf_with_the_two_ioctls() -> None:
    elf = warm_guest.reseed_elf()
    deps = elf_deps(elf)
    assert deps is not None and deps.interp is None and deps.needed == ()
    entry = struct.unpack_from("<Q", elf, 24)[0]
    assert entry == 0x400000 + 120
    assert struct.pack("<I", 0x40085203) in elf  # RNDADDENTROPY
    assert struct.pack("<I", 0x5207) in elf  # RNDRESEEDCRNG
    assert elf.endswith(b"/dev/urandom\0")


@pytest.mark.skipif(os.geteuid() != 0, reason="the ioctls need CAP_SYS_ADMIN")
def test_the_reseed_helper_runs_here(tmp_path: Path) -> None:
    helper = tmp_path / "reseed"
    helper.write_bytes(warm_guest.reseed_elf())
    helper.chmod(0o700)
    ok = subprocess.run([str(helper)], input=os.urandom(64), check=False)
    short = subprocess.run([str(helper)], input=b"x" * 8, check=False)
    assert (ok.returncode, short.returncode) == (0, 1)


def test_the_template_config_starts_the_agent_from_a_tmpfs() -> None:
    cfg = warm_guest.template_config(TINY)
    paths = [f["path"] for f in cfg["write_files"]]
    assert paths == [warm_guest.AGENT_PATH, warm_guest.RESEED_PATH]
    assert all(p.startswith("/run/") for p in paths)
    assert warm_guest.AGENT_PATH in cfg["runcmd"][0]


def test_the_agent_digest_follows_the_agent() -> None:
    assert warm_guest.digest(TINY) == warm_guest.digest(TINY)
    assert len(warm_guest.digest(TINY)) == 16


def test_user_data_that_acts_early_in_a_boot_means_cold() -> None:
    from ketch.service.warm import cold_reason_of_user_data

    assert cold_reason_of_user_data(None) is None
    assert cold_reason_of_user_data({"runcmd": ["true"], "write_files": []}) is None
    why = cold_reason_of_user_data({"bootcmd": ["echo"], "mounts": [["a", "b"]]})
    assert why == "its cloud-config uses bootcmd, mounts, which act early in a boot"
    assert "resize_rootfs" in (cold_reason_of_user_data({"resize_rootfs": False}) or "")


def test_a_native_mount_means_cold_a_classic_one_does_not() -> None:
    from ketch.model import MountSpec, MountType
    from ketch.service.launch import native_mount_reason

    classic = MountSpec(source="/src", target="/mnt")
    assert native_mount_reason([classic]) is None
    reason = native_mount_reason([classic, MountSpec("/a", "/b", type=MountType.NATIVE)])
    assert reason is not None and "native mount" in reason


def test_a_seed_is_padded_sparse_to_the_templates_size_or_refused(tmp_path: Path) -> None:
    from ketch.service.template_seed import pad_seed

    small = tmp_path / "small.iso"
    small.write_bytes(b"CD001" * 100)
    assert pad_seed(small) and small.stat().st_size == warm_guest.SEED_SIZE
    assert small.read_bytes()[:5] == b"CD001"
    assert small.stat().st_blocks * 512 < 1024 * 1024  # sparse
    big = tmp_path / "big.iso"
    with big.open("wb") as f:
        f.truncate(warm_guest.SEED_SIZE + 1)
    assert not pad_seed(big) and big.stat().st_size == warm_guest.SEED_SIZE + 1


def test_an_unfinished_template_is_not_one(tmp_path: Path) -> None:
    import json

    from ketch.layout import Root
    from ketch.service.templates import all_templates_at, load

    root = Root(tmp_path)
    tdir = root.template("tiny-0123456789abcdef")
    tdir.path.mkdir(parents=True)
    tdir.memory.write_bytes(b"\0" * 4096)
    assert load(tdir) is None and all_templates_at(root) == []  # no record yet
    record = {
        "image": "tiny", "image_id": "ketch:tiny@1", "cpus": 1, "memory": 256 * 1024**2,
        "firmware": "kernel", "macs": ["52:54:00:00:00:01"], "disk": 5 * 1024**3,
        "base": "/vault/tiny/disk.qcow2", "qemu": "QEMU 7.2", "agent": "x", "created": 1.0,
    }  # fmt: skip
    tdir.record.write_text(json.dumps(record))
    (t,) = all_templates_at(root)
    assert (t.image, t.nics, t.disk, t.size >= 4096) == ("tiny", 0, 5 * 1024**3, True)


def _template(tmp_path: Path, memory: int = 4096) -> templates.Template:
    from ketch.layout import TemplateDir

    tdir = TemplateDir(tmp_path / "tiny-0123")
    tdir.path.mkdir()
    tdir.memory.write_bytes(b"\0" * memory)
    tdir.state.write_bytes(templates.STATE_MAGIC + b"\0\0\0\3")
    tdir.disk.write_bytes(templates.DISK_MAGIC + b"\0\0\0\3")
    return templates.Template(
        key=tdir.path.name, image="tiny", image_id="x", cpus=1, memory=memory,
        firmware="kernel", macs=("52:54:00:00:00:01",), disk=2**30, base="/b", qemu="q",
        agent="a", created=0.0, build_seconds=0.0, size=0, tdir=tdir,
    )  # fmt: skip


def test_a_sound_template_has_no_damage(tmp_path: Path) -> None:
    assert templates.damage(_template(tmp_path)) is None


def test_each_damage_is_named(tmp_path: Path) -> None:
    t = _template(tmp_path)
    t.tdir.memory.write_bytes(b"\0" * 2048)  # cut short: a clone would read zeros and hang
    assert templates.damage(t) == "its memory file is 2048 bytes, not 4096"
    t.tdir.memory.write_bytes(b"\0" * 4096)
    t.tdir.state.write_bytes(b"garbage!")
    assert templates.damage(t) == "its device state is not a QEMU migration stream"
    t.tdir.state.unlink()
    assert templates.damage(t) == "device.state: No such file or directory"
    t.tdir.state.write_bytes(templates.STATE_MAGIC)
    t.tdir.disk.write_bytes(b"garbage!")
    assert templates.damage(t) == "its disk is not a qcow2 image"


def test_a_uefi_templates_variable_store_must_be_there(tmp_path: Path) -> None:
    """A clone's store is a copy of the template's: without one, the template is damaged
    (a BIOS or kernel template has none, and needs none)."""
    from dataclasses import replace

    t = replace(_template(tmp_path), firmware="uefi")
    assert templates.damage(t) == "efivars.fd: No such file or directory"
    t.tdir.boot.efi_vars.write_bytes(b"")
    assert templates.damage(t) == "its UEFI variable store is empty"
    t.tdir.boot.efi_vars.write_bytes(b"\0" * 4096)
    assert templates.damage(t) is None
    assert templates.damage(replace(t, firmware="bios")) is None
