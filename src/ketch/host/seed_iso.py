"""The NoCloud seed ISO (:func:`build_seed_iso`).

An ISO9660 filesystem with the volume label ``cidata`` and Joliet + Rock Ridge
names, holding ``meta-data``, ``user-data`` and, when given, ``vendor-data``
and ``network-config``: what cloud-init's NoCloud datasource reads.  ketch
attaches it to the guest as a read-only virtio disk.  ``extra_files`` adds
files beside them; ketch adds :data:`ketch.host.seed.GUEST_CONFIG_FILE`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from ketch.errors import InvalidArgument, KetchError

VOLUME_LABEL = "cidata"

_SEED_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def build_seed_iso(
    path: Path,
    *,
    meta_data: str,
    user_data: str,
    vendor_data: str | None = None,
    network_config: str | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> None:
    """Write a NoCloud seed ISO at ``path``, atomically (temp file + rename)."""
    files: dict[str, bytes] = {
        "meta-data": meta_data.encode(),
        "user-data": user_data.encode(),
    }
    if vendor_data is not None:
        files["vendor-data"] = vendor_data.encode()
    if network_config is not None:
        files["network-config"] = network_config.encode()
    for name, data in (extra_files or {}).items():
        if not _SEED_NAME_RE.fullmatch(name) or name in (".", ".."):
            raise InvalidArgument(f"invalid seed file name: {name!r}")
        if name in files:
            raise InvalidArgument(f"seed file {name!r} given twice")
        files[name] = bytes(data)

    path = Path(path)
    iso = pycdlib.PyCdlib()
    tmp: str | None = None
    try:
        iso.new(interchange_level=3, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
        used: set[str] = set()
        for name, data in files.items():
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                iso_path="/" + _iso9660_name(name, used),
                rr_name=name,
                joliet_path="/" + name,
            )
        # 0600: the seed holds the instance's private SSH host key.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            iso.write_fp(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, PyCdlibException) as exc:
        raise KetchError(f"cannot write the seed ISO {path}: {exc}") from exc
    finally:
        iso.close()
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _iso9660_name(name: str, used: set[str]) -> str:
    """A unique level-3 ISO9660 name (``NAME.EXT;1``) standing in for ``name``."""
    stem, dot, ext = name.upper().rpartition(".")
    if not dot:
        stem, ext = ext, ""
    stem = re.sub(r"[^A-Z0-9_]", "_", stem)[:24] or "FILE"
    ext = re.sub(r"[^A-Z0-9_]", "_", ext)[:3]
    candidate = f"{stem}.{ext}"
    n = 1
    while candidate in used:
        suffix = f"_{n}"
        candidate = f"{stem[: 24 - len(suffix)]}{suffix}.{ext}"
        n += 1
    used.add(candidate)
    return candidate + ";1"
