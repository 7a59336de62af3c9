"""The systemd unit `ketch daemon --install-unit` writes (issue 18 item 4): text and place."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.cli.parser import build_parser
from ketch.daemon import unit


def test_a_user_unit_runs_this_interpreter_on_this_root() -> None:
    text = unit.render("/opt/ketch/.venv/bin/python", "/home/a b/ketch", system=False)
    assert (
        "ExecStart=/opt/ketch/.venv/bin/python -m ketch.daemon.main --storage '/home/a b/ketch'"
        in text
    )
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text
    assert "KillMode=process" in text  # stopping the service never kills the VMs


def test_a_system_unit_is_wanted_by_multi_user() -> None:
    assert "WantedBy=multi-user.target" in unit.render("/usr/bin/python3", "/srv/k", system=True)


def test_where_the_unit_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert unit.unit_path(system=False, home="/home/u") == Path(
        "/home/u/.config/systemd/user/ketchd.service"
    )
    assert unit.unit_path(system=True) == Path("/etc/systemd/system/ketchd.service")
    assert unit.systemctl_argv(system=False)[-1] == [
        "systemctl", "--user", "enable", "--now", "ketchd.service"
    ]  # fmt: skip


def test_the_cli_takes_install_unit() -> None:
    args = build_parser().parse_args(["daemon", "--install-unit", "--system"])
    assert args.install_unit and args.system
