"""Parsing what ``info`` reads from inside a guest (recorded from the tiny image)."""

from __future__ import annotations

from ketch.service.guest_stats import parse

# Output of guest_stats.SCRIPT in a ketch tiny guest (busybox 1.35, kernel 6.1), 2026-11-26.
TINY = """0.00 0.01 0.00 1/43 211
MemTotal:         995640 kB
MemAvailable:     885080 kB
/dev/vda               5095040     11712   4824328   0% /
PRETTY_NAME=ketch tiny (busybox, Debian 12 cloud kernel)
"""


def test_parse_tiny_output() -> None:
    got = parse(TINY)
    assert got["load"] == [0.0, 0.01, 0.0]
    assert got["mem_total"] == 995640 * 1024
    assert got["mem_used"] == (995640 - 885080) * 1024
    assert got["disk_total"] == 5095040 * 1024
    assert got["disk_used"] == 11712 * 1024
    assert got["release"] == "ketch tiny (busybox, Debian 12 cloud kernel)"


def test_parse_partial_output_leaves_out_what_is_missing() -> None:
    got = parse("MemTotal: 100 kB\n")
    assert got == {}
    assert parse("") == {}
