"""Sizes as Multipass spells them: 512M, 1G, 5GiB, bytes."""

from __future__ import annotations

import re

from ketch.errors import InvalidArgument

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
SIZE_RULE = (
    "need a non-negative integer (in base 10) or a decimal followed by K, M, or G "
    "(e.g. 1234B, 42MiB, 0.5G)"
)
_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, what: str) -> int:
    """Parse a size like ``512M`` or ``5G`` into bytes (binary units, as Multipass)."""
    m = _SIZE.match(str(text))
    if not m:
        # Multipass's sentence (include/multipass/exceptions/invalid_memory_size_exception.h),
        # which it says of a disk size too; ketch's hint names which size it was.
        raise InvalidArgument(
            f"{text} is not a valid memory size - {SIZE_RULE}",
            hint=f"that was the {what} size: use a number with an optional unit: "
            "K, M, G (for example 1G or 512M)",
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
