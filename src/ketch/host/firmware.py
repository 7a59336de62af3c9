"""Finding UEFI firmware (OVMF) for QEMU: descriptor files, parsed (pure), then read.

QEMU's firmware packages describe what they install in JSON descriptor files
(``/usr/share/qemu/firmware/*.json``, QEMU's ``docs/interop/firmware.json``);
libvirt picks firmware from them and so does ketch.  Of the descriptors that
are plain UEFI flash images for x86_64 on the ``q35`` machine, the first in
priority order (file name, lower first; a file in ``/etc`` or under
``$XDG_CONFIG_HOME`` overrides one of the same name in ``/usr/share``) that
needs neither Secure Boot keys nor SMM is used: ketch boots unsigned
bootloaders and does not emulate SMM.  Its executable is attached read-only;
its ``nvram-template`` is copied once per instance (the instance's own UEFI
variables, see ``docs/internals.md``).

When no descriptor says anything useful, Debian's ``ovmf`` paths are tried.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch.errors import KetchError

DESCRIPTOR_DIRS = (
    Path("/usr/share/qemu/firmware"),
    Path("/etc/qemu/firmware"),
)  # later directories override earlier ones, file by file
MACHINE = "pc-q35-8.0"  # any q35 version: descriptors name machines with globs
ARCH = "x86_64"
UNWANTED_FEATURES = frozenset({"requires-smm", "enrolled-keys", "secure-boot", "amd-sev-es"})
FALLBACKS = (
    (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")),
    (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")),
)
HINT = "install OVMF (Debian: apt-get install ovmf; scripts/install does)"


@dataclass(frozen=True)
class Uefi:
    """One UEFI firmware: its code (read-only) and the template of its variables."""

    code: Path
    vars_template: Path
    description: str = ""


def pick(descriptors: Iterable[tuple[str, Mapping[str, Any]]]) -> Uefi | None:
    """The first usable descriptor of ``(file name, parsed JSON)`` pairs (pure).

    Pairs are taken in the order given; ill-formed ones are skipped.
    """
    for _, doc in descriptors:
        try:
            if "uefi" not in doc["interface-types"]:
                continue
            mapping = doc["mapping"]
            if mapping.get("device") != "flash" or mapping.get("mode", "split") != "split":
                continue
            if UNWANTED_FEATURES & set(doc.get("features", ())):
                continue
            if not any(_targets(t) for t in doc["targets"]):
                continue
            code, template = mapping["executable"], mapping["nvram-template"]
            if code.get("format", "raw") != "raw" or template.get("format", "raw") != "raw":
                continue
            return Uefi(
                Path(code["filename"]),
                Path(template["filename"]),
                str(doc.get("description", "")),
            )
        except (KeyError, TypeError, AttributeError):
            continue
    return None


def _targets(target: Mapping[str, Any]) -> bool:
    return target.get("architecture") == ARCH and any(
        fnmatch.fnmatch(MACHINE, str(glob)) for glob in target.get("machines", ())
    )


def descriptor_files(dirs: Sequence[Path]) -> list[Path]:
    """Descriptor files by priority: sorted by name, a later directory's file wins."""
    chosen: dict[str, Path] = {}
    for directory in dirs:
        try:
            names = sorted(p for p in directory.iterdir() if p.suffix == ".json")
        except OSError:
            continue
        for path in names:
            chosen[path.name] = path
    return [chosen[name] for name in sorted(chosen)]


def _search_dirs() -> list[Path]:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [*DESCRIPTOR_DIRS, Path(config) / "qemu" / "firmware"]


def _load(paths: Iterable[Path]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for path in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            yield path.name, doc


def find_uefi(dirs: Sequence[Path] | None = None) -> Uefi:
    """The UEFI firmware to use on this host; both its files exist.

    Raises KetchError (with an install hint) when there is none.
    """
    found = pick(_load(descriptor_files(_search_dirs() if dirs is None else dirs)))
    candidates = [found] if found is not None else []
    candidates += [Uefi(code, template, "ovmf") for code, template in FALLBACKS]
    for uefi in candidates:
        if uefi.code.is_file() and uefi.vars_template.is_file():
            return uefi
    raise KetchError("no UEFI firmware (OVMF) found on this host", hint=HINT)
