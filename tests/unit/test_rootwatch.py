"""A daemon's life ends with its root: what the watch sees (issue 18 item 3)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ketch.daemon import rootwatch


def test_nothing_changed_is_no_reason(tmp_path: Path) -> None:
    sock = tmp_path / "ketchd.sock"
    sock.write_text("")
    watched = {p: rootwatch.identity(p) for p in (tmp_path, sock)}
    assert None not in watched.values()
    assert rootwatch.gone({p: i for p, i in watched.items() if i}) is None


def test_a_removed_socket_is_a_reason(tmp_path: Path) -> None:
    sock = tmp_path / "ketchd.sock"
    sock.write_text("")
    ident = rootwatch.identity(sock)
    assert ident is not None
    sock.unlink()
    assert rootwatch.gone({sock: ident}) == f"{sock} was removed"


def test_a_replaced_root_is_a_reason(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    ident = rootwatch.identity(root)
    assert ident is not None
    os.rename(root, tmp_path / "moved")
    root.mkdir()  # same name, another directory
    assert rootwatch.gone({root: ident}) == f"{root} was replaced"


def test_watch_calls_back_once_the_path_is_gone(tmp_path: Path) -> None:
    victim = tmp_path / "f"
    victim.write_text("")
    ident = rootwatch.identity(victim)
    assert ident is not None
    reasons: list[str] = []

    async def go() -> None:
        task = asyncio.create_task(rootwatch.watch({victim: ident}, reasons.append, period=0.01))
        await asyncio.sleep(0.05)
        assert reasons == []
        victim.unlink()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())
    assert reasons == [f"{victim} was removed"]
