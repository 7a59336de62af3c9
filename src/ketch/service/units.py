"""Sizes as Multipass spells them: 512M, 1G, 5GiB, bytes."""

from __future__ import annotations

import re

from ketch.errors import InvalidArgument

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, what: str) -> int:
    """Parse a size like ``512M`` or ``5G`` into bytes (binary units, as Multipass)."""
    m = _SIZE.match(str(text))
    if not m:
        raise InvalidArgument(
            f"invalid {what} size '{text}'",
            hint="use a number with an optional unit: K, M, G (for example 1G or 512M)",
        )
    return int(float(m.group(1)) * _FACTORS[m.group(2).upper()])


def human(n: int) -> str:
    """Bytes as Multipass shows them (binary units, one decimal)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"
