"""Storage roots whose path ssh would misread (issue 12 item 8).

ssh reads each ``-o`` value as a config line: a root with a space
(``.../my vms``) broke every guest connection ("keyword identityfile extra
arguments"), and one with ``%d`` (``.../100%d``) pointed ssh at a key below the
home directory instead.  Here a tiny VM is launched through the real CLI in
each such root, and ``ketch exec`` and ``ketch transfer`` reach it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _seed_vault
from ketchcli import Ketch

from ketch.model import ImageInfo

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("qemu-system-x86_64", "qemu-img", "ssh")),
        reason="needs QEMU and OpenSSH",
    ),
]


@pytest.fixture(params=["my vms", "100%d"], ids=["space", "percent"])
def odd_root(request: pytest.FixtureRequest, tiny_image: ImageInfo) -> Iterator[Ketch]:
    """A storage root named ``request.param`` (short: Unix sockets live in it)."""
    base = Path(tempfile.mkdtemp(prefix="ketch-", dir="/tmp"))
    root = base / str(request.param)
    root.mkdir(mode=0o700)  # ketchd refuses a root other users can open
    _seed_vault(root, tiny_image)
    k = Ketch(root)
    try:
        yield k
    finally:
        k.teardown()
        shutil.rmtree(base, ignore_errors=True)


def test_exec_and_transfer_reach_a_guest_in_the_root(odd_root: Ketch, tmp_path: Path) -> None:
    with odd_root.launched("odd", "--memory", "512M") as name:
        key = odd_root.root / "ssh"
        assert key.is_dir(), sorted(p.name for p in odd_root.root.iterdir())
        assert odd_root.exec(name, "echo", "hello from", str(odd_root.root)) == (
            f"hello from {odd_root.root}\n"
        )
        sent = tmp_path / "sent.txt"
        sent.write_text("through the odd root\n")
        odd_root.run("transfer", str(sent), f"{name}:/tmp/sent.txt")
        assert odd_root.exec(name, "cat", "/tmp/sent.txt") == "through the odd root\n"
        back = tmp_path / "back.txt"
        odd_root.run("transfer", f"{name}:/tmp/sent.txt", str(back))
        assert back.read_text() == "through the odd root\n"
