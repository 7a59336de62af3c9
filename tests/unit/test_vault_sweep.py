"""A dead download's ``.part`` is swept even while its process is still a zombie.

Found by the chaos walk's kill-download: a ``kill -9``ed ketchd stayed a zombie
until its parent reaped it, and the next daemon's one sweep kept its ``.part``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from ketch.images.vault import Vault


def test_a_zombies_part_is_swept_a_live_ones_kept(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    vault.tmp.mkdir(parents=True)
    zombie = subprocess.Popen(["true"])  # exits at once; not waited for: a zombie
    live = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 60  # a bound against a hang on a loaded host
        while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "'true' never became a zombie"
            time.sleep(0.01)
        while Path(f"/proc/{live.pid}/cmdline").read_bytes() != b"sleep\x0060\x00":
            assert time.monotonic() < deadline, "'sleep' never ran"  # (mid-exec: no cmdline)
            time.sleep(0.01)
        dead = vault.tmp / f"{'a' * 64}.{zombie.pid}.0123abcd.part"
        kept = vault.tmp / f"{'b' * 64}.{live.pid}.0123abcd.part"
        dead.write_bytes(b"half")
        kept.write_bytes(b"half")
        vault._sweep_tmp()
        assert not dead.exists()
        assert kept.exists()
    finally:
        live.kill()
        live.wait()
        zombie.wait()
