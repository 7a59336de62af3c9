"""After a host reboot, what is started again (issue 18 item 4): the pure parts, real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.errors import InvalidArgument
from ketch.service import autostart, settings


def test_a_reboot_is_a_different_recorded_boot_id() -> None:
    assert autostart.rebooted("a", "b")
    assert not autostart.rebooted("a", "a")
    assert not autostart.rebooted(None, "b")  # first start on this root: nothing to restart
    assert not autostart.rebooted("a", None)  # no /proc: never guess


def test_the_boot_id_is_recorded_and_the_previous_one_returned(tmp_path: Path) -> None:
    path = tmp_path / "boot_id"
    assert autostart.record_boot_id(path, "one") is None
    assert autostart.record_boot_id(path, "two") == "one"
    assert path.read_text() == "two\n"
    assert autostart.record_boot_id(path, None) == "two" and path.read_text() == "two\n"


def test_this_host_has_a_boot_id() -> None:
    boot = autostart.current_boot_id()
    assert boot is not None and len(boot) == 36


def test_batches_fit_in_the_memory_available() -> None:
    g = 1024**3
    wanted = [("a", 2 * g), ("b", 1 * g), ("c", 1 * g), ("d", 8 * g), ("e", 1 * g)]
    assert autostart.batches(wanted, 4 * g) == [["a", "b", "c"], ["d"], ["e"]]
    assert autostart.batches(wanted, 0) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert autostart.batches([], 4 * g) == []


def test_available_memory_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:  2048 kB\n")
    assert autostart.available_memory(meminfo) == 2048 * 1024
    meminfo.write_text("garbage\n")
    assert autostart.available_memory(meminfo) == 0
    assert autostart.available_memory() > 0


def test_the_autostart_setting_is_true_or_false() -> None:
    assert settings.autostart_key("local.web.autostart") == "web"
    assert settings.autostart_key("local.web.cpus") is None
    assert settings.known("local.web.autostart")
    with pytest.raises(InvalidArgument):
        settings._check("local.web.autostart", "maybe")
    assert settings._check("local.web.autostart", "false") == "false"
