"""Parsing what ``info`` reads from inside a guest (recorded from the tiny image)."""

from __future__ import annotations

from ketch.service.guest_stats import parse

# Output of guest_stats.SCRIPT in a ketch tiny guest (busybox 1.35, kernel 6.1), 2026-11-26.
TINY = """0.15 0.03 0.01 1/56 257
MemTotal:         995588 kB
MemAvailable:     884984 kB
/dev/vda               5143200     11708   4902780   0% /
PRETTY_NAME=ketch tiny (busybox, Debian 12 cloud kernel)
"""


def test_parse_tiny_output() -> None:
    got = parse(TINY)
    assert got["load"] == [0.15, 0.03, 0.01]
    assert got["mem_total"] == 995588 * 1024
    assert got["mem_used"] == (995588 - 884984) * 1024
    assert got["disk_total"] == 5143200 * 1024
    assert got["disk_used"] == 11708 * 1024
    assert got["release"] == "ketch tiny (busybox, Debian 12 cloud kernel)"


def test_parse_partial_output_leaves_out_what_is_missing() -> None:
    got = parse("MemTotal: 100 kB\n")
    assert got == {}
    assert parse("") == {}
