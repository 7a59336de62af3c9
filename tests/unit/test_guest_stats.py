"""Parsing what ``info`` reads from inside a guest (recorded from the tiny image)."""

from __future__ import annotations

from ketch.service.guest_stats import NONE, GuestStats, parse

# Output of guest_stats.SCRIPT in a ketch tiny guest (busybox 1.35, kernel 6.1), 2026-11-26.
TINY = """0.15 0.03 0.01 1/56 257
MemTotal:         995588 kB
MemAvailable:     884984 kB
/dev/vda               5143200     11708   4902780   0% /
PRETTY_NAME=ketch tiny (busybox, Debian 12 cloud kernel)
"""


def test_parse_tiny_output() -> None:
    assert parse(TINY) == GuestStats(
        release="ketch tiny (busybox, Debian 12 cloud kernel)",
        load=(0.15, 0.03, 0.01),
        mem_total=995588 * 1024,
        mem_used=(995588 - 884984) * 1024,
        disk_total=5143200 * 1024,
        disk_used=11708 * 1024,
    )


def test_parse_partial_output_leaves_out_what_is_missing() -> None:
    assert parse("MemTotal: 100 kB\n") == NONE  # no MemAvailable: no memory figures
    assert parse("") == NONE


def test_parse_ignores_garbage_from_a_hostile_guest() -> None:
    got = parse("x y z 1/2 w\nMemTotal: lots kB\nMemAvailable: 1 kB\n/dev/vda 9 x 1 0% /\n")
    assert got == NONE
