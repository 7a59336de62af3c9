"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest

from ketch.model import ImageInfo


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
