"""Space checked before it runs out (issue 18 item 5): estimates, refusals, the real statvfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch import space
from ketch.errors import NoSpace


def test_estimates_say_how() -> None:
    assert space.estimate("launch") == (
        space.FLOOR,
        "a floor of 64.0 MiB for a new disk's first writes",
    )
    needed, how = space.estimate("suspend", memory=2 * 1024**3)
    assert needed == 2 * 1024**3 + space.MARGIN and "its memory in use (2.0 GiB)" in how
    needed, how = space.estimate("clone", size=300 * space.MiB)
    assert needed == 300 * space.MiB + space.FLOOR and "300.0 MiB" in how
    needed, how = space.estimate("download", size=5)
    assert needed == 5 + space.FLOOR and "the image" in how


def test_a_refusal_gives_both_numbers_and_what_to_delete() -> None:
    err = space.refusal("suspend", Path("/r"), 3 * 1024**3, "its memory", 100 * space.MiB)
    assert err.code == "no-space" and err.exit_code == 2
    assert "needs about 3.0 GiB" in err.message and "only 100.0 MiB free" in err.message
    assert err.hint and "ketch image prune" in err.hint and "delete --purge" in err.hint


def test_require_measures_the_real_filesystem(tmp_path: Path) -> None:
    free = space.free_bytes(tmp_path)
    assert free > 0
    if free > space.FLOOR:
        space.require("snapshot", tmp_path)
    with pytest.raises(NoSpace) as caught:
        space.require("suspend", tmp_path / "not" / "yet", memory=free * 4)  # a parent is measured
    assert "only" in caught.value.message and "free" in caught.value.message


def test_allocated_counts_blocks_not_length(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as f:
        f.truncate(1024**3)
    assert space.allocated(sparse) < space.MiB
    assert space.allocated(tmp_path / "absent") == 0


def test_vmrss_is_read_from_proc_status() -> None:
    from ketch.host import procs

    assert procs.parse_vmrss("Name:\tqemu\nVmRSS:\t  204800 kB\n") == 200 * space.MiB
    assert procs.parse_vmrss("Name:\tkthreadd\n") is None
    import os

    rss = procs.resident(os.getpid())
    assert rss is not None and rss > 0
