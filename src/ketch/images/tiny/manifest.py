"""The ``tiny`` image's key and manifest, and finding its builds on disk (pure
but for reading the build directories and apt's lists' times)."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ketch.errors import ImageError
from ketch.images.built import BuiltImage, recipe_source
from ketch.images.tiny.recipe import (
    CMDLINE,
    DISK,
    GUEST_DIR,
    IMAGE_FILES,
    INITRD,
    KERNEL,
    MANIFEST,
    MANIFEST_FORMAT,
    NAME,
    ROOT_SIZE,
)
from ketch.model import BootSpec, ImageInfo

RECIPE_DIR = Path(__file__).resolve().parent


def guest_digest(guest_dir: Path = GUEST_DIR, recipe: bytes | None = None) -> str:
    """sha256 of ketch's guest files and of the build recipe (this package's modules)."""
    h = hashlib.sha256()
    for path in sorted(p for p in guest_dir.iterdir() if p.is_file()):
        data = path.read_bytes()
        h.update(f"{path.name}\0{len(data)}\0".encode())
        h.update(data)
    if recipe is None:
        recipe = recipe_source(RECIPE_DIR)
    h.update(b"recipe\0")
    h.update(recipe)
    return h.hexdigest()


def cache_key(versions: Mapping[str, str], digest: str) -> str:
    """The build key: package candidate versions plus the guest-files digest."""
    blob = json.dumps(
        {"format": MANIFEST_FORMAT, "packages": dict(sorted(versions.items())), "guest": digest},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_manifest(
    *,
    key: str,
    build: str | None = None,
    packages: Mapping[str, str],
    files: Mapping[str, tuple[str, int]],
    kernel_version: str,
    guest: str,
    built: datetime.datetime,
    cmdline: str = CMDLINE,
    disk_virtual_size: int = ROOT_SIZE,
) -> dict[str, Any]:
    """The manifest of a built image; ``files`` maps a name to (sha256, size).

    ``build`` names this build (its directory): the key, or the key and a time
    for a forced rebuild.

    ``files`` (name: sha256), ``version``, ``release``, ``release_title`` and
    ``kernel_cmdline`` are what :func:`ketch.images.publish.from_image_dir`
    reads to publish the image in a simplestreams tree.
    """
    when = built.astimezone(datetime.UTC)
    return {
        "format": MANIFEST_FORMAT,
        "name": NAME,
        "key": key,
        "build": build or key,
        "built": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "version": when.strftime("%Y%m%d"),
        "release": NAME,
        "release_title": f"ketch tiny {when:%Y-%m-%d}",
        "os": "ketch",
        "kernel_version": kernel_version,
        "kernel_cmdline": cmdline,
        "kernel": KERNEL,
        "initrd": INITRD,
        "disk": DISK,
        "disk_format": "qcow2",
        "disk_virtual_size": disk_virtual_size,
        "packages": dict(sorted(packages.items())),
        "guest_digest": guest,
        "files": {name: digest for name, (digest, _) in sorted(files.items())},
        "sizes": {name: size for name, (_, size) in sorted(files.items())},
    }


def image_info(manifest: Mapping[str, Any], image_dir: Path) -> ImageInfo:
    """The :class:`ImageInfo` of a built image, from its manifest."""
    try:
        if manifest["format"] != MANIFEST_FORMAT or manifest["name"] != NAME:
            raise ImageError(f"{image_dir}: not a format-{MANIFEST_FORMAT} tiny image manifest")
        image_dir = image_dir.resolve()
        return ImageInfo(
            id=f"ketch:{NAME}@{manifest.get('build') or manifest['key']}",
            release=str(manifest["release_title"]),
            disk=str(image_dir / manifest["disk"]),
            disk_format=str(manifest["disk_format"]),
            boot=BootSpec(
                kernel=str(image_dir / manifest["kernel"]),
                initrd=str(image_dir / manifest["initrd"]),
                cmdline=str(manifest["kernel_cmdline"]),
            ),
            aliases=(NAME,),
            remote="ketch",
            version=str(manifest["version"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{image_dir}: malformed tiny image manifest ({exc!r})") from exc


def load_tiny(image_dir: Path) -> ImageInfo:
    """Read a built tiny image's manifest (files are checked to exist, not hashed)."""
    manifest = BUILT.read_manifest(image_dir)
    info = image_info(manifest, image_dir)
    for name in IMAGE_FILES:
        if not (image_dir / name).is_file():
            raise ImageError(
                f"tiny image {image_dir} is incomplete: {name} is missing",
                hint="rebuild it (ketch rebuilds the tiny image when it is missing)",
            )
    return info


def verify_tiny(image_dir: Path) -> None:
    """Check every file of a built image against its manifest's sha256."""
    BUILT.verify(image_dir)


BUILT = BuiltImage(NAME, IMAGE_FILES, load_tiny, manifest=MANIFEST, lock_poll=0.2)


APT_LISTS = Path("/var/lib/apt/lists")


def apt_lists_changed(lists: Path = APT_LISTS) -> float | None:
    """When apt's package lists last changed (None: unknown, so never trust a build)."""
    try:
        return max(p.stat().st_mtime for p in lists.iterdir() if p.is_file())
    except (OSError, ValueError):
        return None


def fresh(tiny_dir: Path, digest: str, lists_changed: float | None) -> ImageInfo | None:
    """The newest build from these guest files made after apt's lists last changed."""
    if lists_changed is None:
        return None
    for path in BUILT.image_dirs(tiny_dir, None):
        try:
            manifest = BUILT.read_manifest(path)
            built_after = (path / MANIFEST).stat().st_mtime > lists_changed
        except (ImageError, OSError):
            continue
        if manifest.get("guest_digest") == digest and built_after:
            return BUILT.cached(path)
    return None


def fresh_build(images_dir: Path) -> ImageInfo | None:
    """A build below ``images_dir`` that cannot be stale (:func:`fresh`), or None.

    Read only (it creates nothing, so the builder's umask does not matter): the
    daemon runs it in its own process and starts a build child only when it
    finds nothing, which spares every launch of ``tiny`` a Python process.
    """
    return fresh(Path(images_dir) / NAME, guest_digest(), apt_lists_changed())


def newest_built(images_dir: Path) -> ImageInfo | None:
    """The newest tiny image on disk, whatever its key (no build, no checksums)."""
    for path in BUILT.image_dirs(Path(images_dir) / NAME, None):
        try:
            return load_tiny(path)
        except ImageError:
            continue
    return None


def newest_of_key(tiny_dir: Path, key: str) -> ImageInfo | None:
    for path in BUILT.image_dirs(tiny_dir, key):
        info = BUILT.cached(path)
        if info is not None:
            return info
    return None
