"""Damage a qcow2 on purpose, the way crashes do: leaked clusters, refcount corruption."""

from __future__ import annotations

import os
import struct
from pathlib import Path


def _layout(f: object) -> tuple[int, int, int]:
    """(cluster size, first refcount block offset, L1 table offset); refcount_bits 16."""
    f.seek(0)  # type: ignore[attr-defined]
    h = f.read(104)  # type: ignore[attr-defined]
    cluster = 1 << struct.unpack(">I", h[20:24])[0]
    l1 = struct.unpack(">Q", h[40:48])[0]
    f.seek(struct.unpack(">Q", h[48:56])[0])  # type: ignore[attr-defined]
    block = struct.unpack(">Q", f.read(8))[0]  # type: ignore[attr-defined]
    return cluster, block, l1


def leak_cluster(path: Path) -> None:
    """Append a cluster whose refcount is 1 but which nothing references."""
    with path.open("r+b") as f:
        cluster, block, _ = _layout(f)
        size = -(-os.path.getsize(path) // cluster) * cluster
        f.truncate(size + cluster)
        f.seek(block + (size // cluster) * 2)
        f.write(struct.pack(">H", 1))


def corrupt_refcount(path: Path) -> None:
    """Set the refcount of the L1 table's cluster to 0: a corruption qemu-img check reports."""
    with path.open("r+b") as f:
        cluster, block, l1 = _layout(f)
        f.seek(block + (l1 // cluster) * 2)
        f.write(struct.pack(">H", 0))
