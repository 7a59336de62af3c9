"""Where the storage root is: ``$KETCH_STORAGE``, else the XDG data directory (no pathlib)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.client import Client
from ketch.layout import DAEMON_LOG, SOCKET, Root, storage_dir, storage_root, xdg_data_home


def test_ketch_storage_wins_and_is_made_absolute_with_symlinks_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("KETCH_STORAGE", str(tmp_path / "link"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert storage_dir() == str(real)
    assert storage_root() == real


def test_the_xdg_data_home_when_ketch_storage_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KETCH_STORAGE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert storage_dir() == str(tmp_path / "ketch")
    assert xdg_data_home() == str(tmp_path)


@pytest.mark.parametrize("value", ["", "relative/dir"])
def test_an_empty_or_relative_xdg_data_home_is_ignored(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KETCH_STORAGE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", value)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert storage_dir() == str(tmp_path / ".local" / "share" / "ketch")


def test_a_client_finds_the_same_socket_and_log_from_a_string_or_a_root(tmp_path: Path) -> None:
    root = Root(tmp_path)
    for c in (Client(str(tmp_path), autostart=False), Client(root, autostart=False)):
        assert c.socket == str(root.socket) == str(tmp_path / SOCKET)
        assert c.daemon_log == str(root.daemon_log) == str(tmp_path / DAEMON_LOG)
