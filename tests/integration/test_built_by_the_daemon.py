"""The tiny image as ketchd itself builds it (the README's first command does this).

Every other test boots the image the test fixture built in the test cache,
in the test process (umask 022).  ketchd runs with umask 077; a tiny image it
built in its own process had a 0700 ``/`` and ``/lib``, so the guest's
default user could run nothing (every ``ketch exec`` exited 1) while every
test passed.  Here a storage root with an empty vault makes ketchd build the
image (in a child process with the build's own umask), and the guest is used
as the default user.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch

pytestmark = pytest.mark.vm


@pytest.fixture
def unseeded() -> Iterator[Ketch]:
    root = Path(tempfile.mkdtemp(prefix="ketch-built-", dir="/tmp"))
    k = Ketch(root)
    try:
        yield k
    finally:
        k.teardown()
        shutil.rmtree(root, ignore_errors=True)


def test_an_image_ketchd_built_serves_its_default_user(unseeded: Ketch) -> None:
    with unseeded.launched("built", "--memory", "256M") as name:
        done = unseeded.run("exec", name, "--", "sh", "-c", "id -un; stat -c %a / /lib /etc")
        assert done.stdout.split() == ["ubuntu", "755", "755", "755"], done.stdout
    built = list((unseeded.root / "vault" / "built" / "tiny").iterdir())
    assert [p.name for p in built if not p.name.startswith(".")], built  # it did build
