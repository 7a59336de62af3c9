"""Choosing the accelerator: the probe's verdict (``judge``), its argv, and its cache.

The real probe (which boots a kernel under KVM) is never run here.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from ketch.host.accel import (
    PROBE_TIMEOUT,
    AccelChoice,
    judge,
    load_cached,
    probe_argv,
    save_cached,
)

QEMU = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
PANIC = (
    '[    0.912345] VFS: Cannot open root device "(null)" or unknown-block(0,0): error -6\n'
    "[    0.912400] Kernel panic - not syncing: VFS: Unable to mount root fs on "
    "unknown-block(0,0)\n"
)

# -- judge ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "serial", "ok", "reason"),
    [
        pytest.param(0, PANIC, True, "a KVM guest booted a kernel", id="panic-exit-0"),
        pytest.param(0, "Kernel panic - not syncing", True, "booted", id="panic-only"),
        pytest.param(0, "VFS: Cannot open root device", True, "booted", id="vfs-only"),
        pytest.param(1, PANIC, True, "booted", id="panic-but-nonzero-exit"),
        pytest.param(None, "", False, "did not finish booting", id="timeout-no-output"),
        pytest.param(None, PANIC, False, "did not finish booting", id="timeout-wins-over-output"),
        pytest.param(1, "", False, "QEMU with KVM exited 1", id="failed-no-output"),
        pytest.param(-9, "SeaBIOS", False, "exited -9", id="killed-no-kernel"),
        pytest.param(0, "", False, "exited without kernel output", id="exit-0-no-output"),
        pytest.param(0, "Linux version 6.1 ...", False, "without kernel output", id="no-panic"),
    ],
)
def test_judge(returncode: int | None, serial: str, ok: bool, reason: str) -> None:
    got_ok, got_reason = judge(returncode, serial)
    assert got_ok is ok
    assert reason in got_reason


def test_judge_timeout_reason_names_the_deadline() -> None:
    _, reason = judge(None, "")
    assert f"{PROBE_TIMEOUT:g} s" in reason
    assert "hangs" in reason


# -- probe_argv ------------------------------------------------------------------------------


def test_probe_argv() -> None:
    argv = probe_argv(Path("/vault/vmlinuz"), Path("/tmp/p/serial.log"))
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-kernel") + 1] == "/vault/vmlinuz"
    assert argv[argv.index("-serial") + 1] == "file:/tmp/p/serial.log"
    append = argv[argv.index("-append") + 1].split()
    assert "panic=-1" in append and "console=ttyS0" in append
    assert "-no-reboot" in argv  # with panic=-1, the panic ends QEMU
    assert "-nodefaults" in argv
    assert argv[argv.index("-display") + 1] == "none"


def test_probe_argv_has_no_disk_network_or_daemonize() -> None:
    argv = probe_argv(Path("/k"), Path("/s"))
    for flag in ("-drive", "-blockdev", "-hda", "-netdev", "-nic", "-daemonize", "-loadvm"):
        assert flag not in argv


def test_probe_argv_binary_override() -> None:
    argv = probe_argv(Path("/k"), Path("/s"), binary="/opt/qemu/bin/qemu-system-x86_64")
    assert argv[0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert argv[1:] == probe_argv(Path("/k"), Path("/s"))[1:]


# -- cache -----------------------------------------------------------------------------------


def choice(**kw: object) -> AccelChoice:
    base = AccelChoice(
        accel="kvm",
        reason="a KVM guest booted a kernel",
        qemu=QEMU,
        host_kernel=platform.release(),
        probed_at=1795670361.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "accel.json"  # parent created on save
    save_cached(path, choice())
    assert load_cached(path, qemu=QEMU) == choice()
    assert not path.with_suffix(".tmp").exists()
    assert json.loads(path.read_text()) == asdict(choice())


def test_cache_round_trip_tcg(tmp_path: Path) -> None:
    path = tmp_path / "accel.json"
    tcg = choice(accel="tcg", reason="a KVM guest did not finish booting within 10 s (it hangs)")
    save_cached(path, tcg)
    assert load_cached(path, qemu=QEMU) == tcg


def test_cache_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "accel.json"
    save_cached(path, choice())
    save_cached(path, choice(accel="tcg", reason="QEMU with KVM exited 1"))
    loaded = load_cached(path, qemu=QEMU)
    assert loaded is not None and loaded.accel == "tcg"


def test_cache_is_invalid_for_another_qemu_version(tmp_path: Path) -> None:
    path = tmp_path / "accel.json"
    save_cached(path, choice())
    assert load_cached(path, qemu="QEMU emulator version 8.2.0") is None
    assert path.exists()  # kept: the caller re-probes and overwrites


def test_cache_is_invalid_for_another_host_kernel(tmp_path: Path) -> None:
    path = tmp_path / "accel.json"
    save_cached(path, choice(host_kernel="0.0.1-some-other-kernel"))
    assert load_cached(path, qemu=QEMU) is None


def test_cache_of_an_unprobed_choice_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "accel.json"
    save_cached(path, choice(accel="tcg", reason="KVM not probed: no kernel to probe with yet"))
    assert load_cached(path, qemu=QEMU) is None


def test_cache_missing(tmp_path: Path) -> None:
    assert load_cached(tmp_path / "absent.json", qemu=QEMU) is None


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("", id="empty"),
        pytest.param("{not json", id="not-json"),
        pytest.param('{"accel": "kvm"}', id="missing-keys"),
        pytest.param(json.dumps({**asdict(choice()), "extra": 1}), id="unknown-key"),
        pytest.param("[1, 2]", id="a-list"),
        pytest.param("null", id="null"),
    ],
)
def test_cache_garbage_is_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "accel.json"
    path.write_text(content)
    assert load_cached(path, qemu=QEMU) is None


def test_cache_that_is_a_directory_is_ignored(tmp_path: Path) -> None:
    assert load_cached(tmp_path, qemu=QEMU) is None
