"""The ``debian-12`` image's sources, key and manifest (pure but for reading a
build directory): what apt's sources are, what a build is keyed by, how a
build is described and loaded."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch.errors import ImageError
from ketch.images.built import BuiltImage, recipe_source
from ketch.images.debian.recipe import (
    ARCH,
    CMDLINE,
    DISK,
    DISK_SIZE,
    FIRMWARE,
    IMAGE_FILES,
    MANIFEST,
    MANIFEST_FORMAT,
    NAME,
    ORIGIN,
    ROOT_LABEL,
    SUITE,
)
from ketch.model import BootSpec, ImageInfo

RECIPE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, order=True)
class AptSource:
    """One Debian package index apt uses: ``deb URI SUITE COMPONENT``."""

    uri: str
    suite: str
    component: str


_POLICY_INDEX = re.compile(r"^\s*-?\d+\s+(\S+)\s+(\S+)/(\S+)\s+(\S+)\s+Packages\s*$")


def parse_sources(text: str, *, arch: str = ARCH, origin: str = ORIGIN) -> list[AptSource]:
    """The ``origin`` indexes of ``arch`` that ``apt-cache policy`` (no package) lists.

    Only the suites of :data:`SUITE` (``bookworm``, ``bookworm-updates``,
    ``bookworm-security``...) count; other repositories apt knows are ignored.
    """
    found: set[AptSource] = set()
    pending: tuple[AptSource, str] | None = None
    for line in text.splitlines():
        match = _POLICY_INDEX.match(line)
        if match:
            uri, suite, component, index_arch = match.groups()
            pending = (AptSource(uri.rstrip("/"), suite, component), index_arch)
            continue
        stripped = line.strip()
        if pending is not None and stripped.startswith("release "):
            fields = dict(
                f.split("=", 1) for f in stripped[len("release ") :].split(",") if "=" in f
            )
            source, index_arch = pending
            suite_ok = source.suite == SUITE or source.suite.startswith(SUITE + "-")
            if fields.get("o") == origin and index_arch == arch and suite_ok:
                found.add(source)
            pending = None
    return sorted(found)


def sources_list(sources: Sequence[AptSource]) -> str:
    """``/etc/apt/sources.list`` for the image: one line per suite, components joined."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for s in sources:
        grouped.setdefault((s.uri, s.suite), [])
        if s.component not in grouped[(s.uri, s.suite)]:
            grouped[(s.uri, s.suite)].append(s.component)
    lines = ["# ketch debian-12 image: the Debian sources of the host that built it"]
    for (uri, suite), components in sorted(grouped.items(), key=lambda kv: _suite_order(kv[0])):
        lines.append(f"deb {uri} {suite} {' '.join(sorted(components))}")
    return "\n".join(lines) + "\n"


def _suite_order(item: tuple[str, str]) -> tuple[int, str, str]:
    uri, suite = item
    return (0 if suite == SUITE else 1, suite, uri)


def mirror(sources: Sequence[AptSource]) -> str:
    """The mirror debootstrap fetches the base system from (``SUITE main``)."""
    for s in sources:
        if s.suite == SUITE and s.component == "main":
            return s.uri
    raise ImageError(
        f"apt knows no Debian mirror with '{SUITE} main' for {ARCH}",
        hint=f"add one to /etc/apt/sources.list (Debian 12 '{SUITE}'), then run 'apt-get update'",
    )


def recipe_digest(recipe: bytes | None = None) -> str:
    """sha256 of the build recipe: this package's modules."""
    if recipe is None:
        recipe = recipe_source(RECIPE_DIR)
    return hashlib.sha256(b"ketch debian recipe\0" + recipe).hexdigest()


def cache_key(versions: Mapping[str, str], sources: Sequence[AptSource], recipe: str) -> str:
    """The build key: package candidate versions, the Debian sources, the recipe."""
    blob = json.dumps(
        {
            "format": MANIFEST_FORMAT,
            "name": NAME,
            "suite": SUITE,
            "arch": ARCH,
            "packages": dict(sorted(versions.items())),
            "sources": [[s.uri, s.suite, s.component] for s in sorted(set(sources))],
            "recipe": recipe,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_dpkg_list(text: str) -> dict[str, str]:
    """``dpkg-query -W -f '${Package}\\t${Version}\\n'`` output as {package: version}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, version = line.partition("\t")
        if sep and name and version:
            out[name] = version
    return out


def make_manifest(
    *,
    key: str,
    versions: Mapping[str, str],
    packages: Mapping[str, str],
    sources: Sequence[AptSource],
    files: Mapping[str, tuple[str, int]],
    kernel_version: str,
    recipe: str,
    built: datetime.datetime,
    disk_virtual_size: int = DISK_SIZE,
) -> dict[str, Any]:
    """The manifest of a built image; ``files`` maps a name to (sha256, size).

    ``versions`` are the requested packages' versions the key was made from;
    ``packages`` every package installed in the image.
    """
    when = built.astimezone(datetime.UTC)
    return {
        "format": MANIFEST_FORMAT,
        "name": NAME,
        "key": key,
        "built": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "version": when.strftime("%Y%m%d"),
        "release": SUITE,
        "release_title": f"Debian 12 ({SUITE}), ketch build {when:%Y-%m-%d}",
        "os": "debian",
        "arch": ARCH,
        "firmware": FIRMWARE,
        "kernel_version": kernel_version,
        "kernel_cmdline": CMDLINE,
        "root_label": ROOT_LABEL,
        "disk": DISK,
        "disk_format": "qcow2",
        "disk_virtual_size": disk_virtual_size,
        "requested": dict(sorted(versions.items())),
        "packages": dict(sorted(packages.items())),
        "sources": [f"deb {s.uri} {s.suite} {s.component}" for s in sorted(set(sources))],
        "recipe_digest": recipe,
        "files": {name: digest for name, (digest, _) in sorted(files.items())},
        "sizes": {name: size for name, (_, size) in sorted(files.items())},
    }


def image_info(manifest: Mapping[str, Any], image_dir: Path) -> ImageInfo:
    """The :class:`ImageInfo` of a built image: a disk booted through firmware."""
    try:
        if manifest["format"] != MANIFEST_FORMAT or manifest["name"] != NAME:
            raise ImageError(f"{image_dir}: not a format-{MANIFEST_FORMAT} {NAME} manifest")
        firmware = str(manifest["firmware"])
        if firmware not in ("bios", "uefi"):
            raise ImageError(f"{image_dir}: unknown firmware {firmware!r} in the manifest")
        image_dir = image_dir.resolve()
        return ImageInfo(
            id=f"ketch:{NAME}@{manifest['key']}",
            release=str(manifest["release_title"]),
            disk=str(image_dir / manifest["disk"]),
            disk_format=str(manifest["disk_format"]),
            boot=BootSpec(firmware=firmware),
            aliases=(NAME,),
            remote="ketch",
            version=str(manifest["version"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{image_dir}: malformed {NAME} manifest ({exc!r})") from exc


def load_debian(image_dir: Path) -> ImageInfo:
    """Read a built image's manifest (the disk is checked to exist, not hashed)."""
    info = image_info(BUILT.read_manifest(image_dir), image_dir)
    if not Path(info.disk).is_file():
        raise ImageError(
            f"{NAME} image {image_dir} is incomplete: {DISK} is missing",
            hint=f"rebuild it: ketch image build {NAME} --force",
        )
    return info


def verify_debian(image_dir: Path) -> None:
    """Check the image's files against its manifest's sha256 and sizes."""
    BUILT.verify(image_dir)


BUILT = BuiltImage(
    NAME, IMAGE_FILES, load_debian, manifest=MANIFEST, leftovers=(".build-", ".old-")
)
