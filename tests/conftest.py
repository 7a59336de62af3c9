"""Fixtures shared by every test directory."""

from __future__ import annotations

import os

import pytest

from ketch.model import ImageInfo

# The network rule: no test makes a bridge, TAP, dnsmasq or NAT in the machine's own
# network namespace.  Every ketchd a test starts inherits this default (user-mode
# networking); tests of the managed network set local.network=managed, inside a
# namespace they made (tests/integration/test_network.py).
os.environ["KETCH_NETWORK_DEFAULT"] = "user"


@pytest.fixture(scope="session")
def tiny_image() -> ImageInfo:
    """The built-in tiny image, built once into a persistent cache.

    The cache is ``$KETCH_TEST_CACHE`` or ``~/.cache/ketch-test/images``; the
    image is rebuilt only when its packages or ketch's guest files change.
    Never modify the image's files: boot instances from qcow2 overlays.
    """
    import asyncio
    import os
    from pathlib import Path

    from ketch.images.tiny import build_tiny

    cache = Path(os.environ.get("KETCH_TEST_CACHE") or "~/.cache/ketch-test/images").expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    return asyncio.run(build_tiny(cache))
