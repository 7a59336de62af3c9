"""What the images ketch builds itself (``tiny``, ``debian-12``) share on disk.

Each such image is built below ``images_dir/<name>/``, one directory a build
(named by its key, or ``<key>-<suffix>``), holding the image files and a JSON
manifest whose ``files`` and ``sizes`` give each file's sha256 and size.  A
:class:`BuiltImage` describes one image (its name, manifest and files, and the
function that loads a build as :class:`ImageInfo`) and does for it what does
not depend on how it is made:

- read a build's manifest and check its files against it (:meth:`~BuiltImage.verify`);
- find a valid build (:meth:`~BuiltImage.cached`), or the newest valid build of
  another key to fall back to when a new one cannot be made
  (:meth:`~BuiltImage.fall_back`);
- take the flock that serialises builds, saying once that it waits
  (:meth:`~BuiltImage.locked`), and remove what interrupted builds left
  (:meth:`~BuiltImage.clean_leftovers`).

Beside it, what both recipes need: :func:`parse_policy` reads the candidate
versions apt offers, :func:`recipe_source` gives the bytes of a recipe (its
package's modules) that a build key hashes.

What an image is made of, its key and its manifest's other fields stay in its
own package (:mod:`ketch.images.tiny`, :mod:`ketch.images.debian`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch.errors import ImageError, KetchError
from ketch.model import ImageInfo
from ketch.progress import Reporter


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_policy(text: str) -> dict[str, str | None]:
    """Candidate versions from ``apt-cache policy PKG...`` (None: no candidate)."""
    out: dict[str, str | None] = {}
    current: str | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1]
            out[current] = None
        elif current is not None and line.strip().startswith("Candidate:"):
            value = line.split(":", 1)[1].strip()
            out[current] = None if value in ("", "(none)") else value
    return out


def recipe_source(package_dir: Path) -> bytes:
    """The build recipe of an image: its package's modules, names and contents, in order."""
    out = bytearray()
    for path in sorted(package_dir.glob("*.py")):
        data = path.read_bytes()
        out += f"{path.name}\0{len(data)}\0".encode() + data
    return bytes(out)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class BuiltImage:
    """One image ketch builds: where its builds are and how to check them.

    ``load`` reads a build directory as an :class:`ImageInfo` (checking its
    files exist, not their checksums); ``leftovers`` are the name prefixes of
    the work directories an interrupted build may leave beside the builds;
    ``lock_poll`` is how often (seconds) a waiting build tries the lock again.
    """

    name: str
    files: tuple[str, ...]
    load: Callable[[Path], ImageInfo]
    manifest: str = "manifest.json"
    leftovers: tuple[str, ...] = (".build-",)
    lock_poll: float = 0.5

    def read_manifest(self, image_dir: Path) -> dict[str, Any]:
        """The manifest of the build in ``image_dir``, as JSON (not checked further)."""
        path = image_dir / self.manifest
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ImageError(
                f"no {self.name} image in {image_dir}: {self.manifest} is missing"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ImageError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ImageError(f"{path} is not a manifest")
        return data

    def verify(self, image_dir: Path) -> None:
        """Check every file of a build against its manifest's sha256 and size."""
        manifest = self.read_manifest(image_dir)
        digests = manifest.get("files")
        sizes = manifest.get("sizes")
        if not isinstance(digests, dict) or not isinstance(sizes, dict):
            raise ImageError(f"{self.name} image {image_dir}: the manifest lists no files")
        if set(digests) != set(self.files):
            raise ImageError(
                f"{self.name} image {image_dir}: "
                f"the manifest must list exactly {', '.join(self.files)}"
            )
        for name, digest in digests.items():
            path = image_dir / name
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise ImageError(f"{self.name} image file {path} is missing") from exc
            if size != sizes.get(name) or file_sha256(path) != digest:
                raise ImageError(f"{self.name} image file {path} does not match its manifest")

    def cached(self, image_dir: Path) -> ImageInfo | None:
        """The build in ``image_dir`` if it is there and verifies, else None."""
        if not (image_dir / self.manifest).is_file():
            return None
        try:
            self.verify(image_dir)
            return self.load(image_dir)
        except ImageError:
            return None

    def image_dirs(self, base: Path, key: str | None) -> list[Path]:
        """Build directories in ``base`` (of ``key``, or of every key), newest first.

        A build of ``key`` is named ``key`` or ``key-<suffix>``; "newest" is by
        the time of its manifest, and a directory without one is left out.
        """
        found: list[tuple[float, Path]] = []
        if not base.is_dir():
            return []
        for path in base.iterdir():
            if path.name.startswith("."):
                continue
            if key is not None and not _of_key(path, key):
                continue
            with contextlib.suppress(OSError):
                found.append(((path / self.manifest).stat().st_mtime, path))
        return [path for _, path in sorted(found, reverse=True)]

    def newest_other(self, base: Path, key: str | None) -> Path | None:
        """The newest valid build directory in ``base`` of another key than ``key``."""
        for path in self.image_dirs(base, None):
            if key is not None and _of_key(path, key):
                continue
            if self.cached(path) is not None:
                return path
        return None

    async def fall_back(
        self, base: Path, key: str | None, exc: KetchError, reporter: Reporter, force: bool
    ) -> ImageInfo:
        """A build made earlier, when a new one cannot be made; else raise ``exc``.

        Never when ``force``: a forced build must be a new one.
        """
        fallback = None if force else await asyncio.to_thread(self.newest_other, base, key)
        if fallback is None:
            raise exc
        reporter.warn(
            f"cannot check for or build a newer {self.name} image ({exc}); using {fallback.name}"
        )
        return self.load(fallback)

    def clean_leftovers(self, base: Path, remove: Callable[[Path], None] = _remove_tree) -> None:
        """Remove what interrupted builds left in ``base`` (call only under the lock)."""
        for path in base.iterdir():
            if path.name.startswith(self.leftovers) and path.is_dir():
                remove(path)

    @contextlib.asynccontextmanager
    async def locked(self, path: Path, reporter: Reporter) -> AsyncIterator[None]:
        """Hold an exclusive flock on ``path``, created if need be, polling for it.

        While another process (or task) holds it, ``reporter`` is told once
        that this build waits.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise ImageError(f"cannot lock {path}: {exc}") from exc
                if not told:
                    reporter.step(f"Waiting for another build of the {self.name} image")
                    told = True
                await asyncio.sleep(self.lock_poll)
            yield
        finally:
            os.close(fd)


def _of_key(path: Path, key: str) -> bool:
    return path.name == key or path.name.startswith(key + "-")
