"""``ketch image build/list/prune`` and ``ketch find`` through the CLI."""

from __future__ import annotations

import os
import shutil
import time

from ketchcli import Ketch


def test_build_is_a_cache_hit_and_list_shows_built_images(ketch: Ketch) -> None:
    done = ketch.run("image", "build", "tiny")
    assert done.stdout.startswith("Built: ketch:tiny@")
    table = ketch.run("image", "list").stdout
    assert "tiny@" in table and "built" in table
    assert "tiny" in ketch.run("find").stdout


def test_prune_removes_old_unused_builds_and_keeps_the_newest(ketch: Ketch) -> None:
    tiny_dir = ketch.root / "vault" / "built" / "tiny"
    current = max(tiny_dir.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime).parent
    old = tiny_dir / "00000000deadbeef"
    shutil.copytree(current, old)
    past = time.time() - 30 * 86400
    os.utime(old / "manifest.json", (past, past))
    os.utime(current / "manifest.json")  # the newest build is always kept
    done = ketch.run("image", "prune", "--days", "7")
    assert "tiny@0000000" in done.stdout
    assert not old.exists()
    assert current.exists()


def test_unknown_build_target_is_refused(ketch: Ketch) -> None:
    done = ketch.run("image", "build", "windows-95", check=False)
    assert done.returncode == 1
    assert "ketch can build" in done.stderr
