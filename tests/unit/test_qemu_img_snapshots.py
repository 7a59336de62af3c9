"""qemu-img for snapshots and clones: ``snapshot -a/-l``, ``convert``, on real files.

The argv builders are checked for shape and then run against the real
``qemu-img`` on small files, whose contents are compared with
``qemu-img compare`` and read back with ``qemu-io``; the ``snapshot -l``
parser is checked on the recorded output in ``data/`` and on live output.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ketch.errors import HostCommandError
from ketch.host import qemu_img
from ketch.host.qemu_img import (
    convert_argv,
    parse_info,
    parse_snapshot_list,
    read_snapshot_names,
    snapshot_apply_argv,
    snapshot_list_argv,
)

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


def qi(*args: str) -> str:
    return subprocess.run(
        ["qemu-img", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def write(path: Path, pattern: int, offset: str, length: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def reads_as(path: Path, pattern: int, offset: str, length: str) -> bool:
    """Does the range read back as ``pattern`` (qemu-io's verifying read)?"""
    done = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern:#x} {offset} {length}", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path]:
    """A base with data and an overlay that changed part of it (like an instance disk)."""
    base = tmp_path / "base.qcow2"
    qi("create", "-q", "-f", "qcow2", str(base), "16M")
    write(base, 0xAA, "0", "2M")
    overlay = tmp_path / "disk.qcow2"
    qi("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay), "16M")
    write(overlay, 0xBB, "1M", "1M")
    return base, overlay


# -- argv ---------------------------------------------------------------------------------


def test_snapshot_apply_and_list_argv() -> None:
    assert snapshot_apply_argv(Path("/d"), "t") == ["qemu-img", "snapshot", "-a", "t", "/d"]
    assert snapshot_list_argv(Path("/d")) == [
        "qemu-img", "snapshot", "-l", "-U", "/d",
    ]  # fmt: skip
    assert "-U" not in snapshot_list_argv(Path("/d"), force_share=False)


def test_convert_argv_overlay_and_full_copy() -> None:
    assert convert_argv(Path("/s"), Path("/d"), backing=Path("/b"), backing_format="raw") == [
        "qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", "-B", "/b", "-F", "raw",
        "/s", "/d",
    ]  # fmt: skip
    assert convert_argv(Path("/s"), Path("/d")) == [
        "qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", "/s", "/d",
    ]  # fmt: skip


# -- snapshot -l parser -------------------------------------------------------------------


def test_parse_snapshot_list_recorded() -> None:
    lines = (DATA / "qemu-img-7.2-snapshot-list.txt").read_text().splitlines(keepends=True)
    assert parse_snapshot_list("".join(lines[2:])) == ("suspend", "other")


def test_parse_snapshot_list_empty_output_is_no_tags() -> None:
    assert parse_snapshot_list("") == ()


def test_parse_snapshot_list_rejects_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unexpected line"):
        parse_snapshot_list("Snapshot list:\nsomething else entirely\n")


def test_snapshot_list_runner_agrees_with_the_header_reader(tmp_path: Path) -> None:
    disk = tmp_path / "d.qcow2"
    qi("create", "-q", "-f", "qcow2", str(disk), "1M")
    tags = ["suspend", "ketch-snap-0123abcd", "with inner space", "x"]
    for tag in tags:
        qi("snapshot", "-c", tag, str(disk))
    got = asyncio.run(qemu_img.snapshot_list(disk))
    assert got == tuple(tags) == read_snapshot_names(disk)


# -- create / apply / delete runners --------------------------------------------------------


def test_snapshot_create_apply_restores_data_and_size(chain: tuple[Path, Path]) -> None:
    _, disk = chain

    async def go() -> None:
        await qemu_img.snapshot_create(disk, "ketch-snap-1")
        write(disk, 0xCC, "1M", "1M")  # written after the snapshot
        await qemu_img.resize(disk, 32 * 1024**2)  # and grown
        await qemu_img.snapshot_apply(disk, "ketch-snap-1")

    asyncio.run(go())
    assert reads_as(disk, 0xBB, "1M", "1M")  # the snapshot's data is back
    assert reads_as(disk, 0xAA, "0", "1M")  # the base still shows through
    assert parse_info(qi("info", "--output=json", str(disk))).virtual_size == 16 * 1024**2
    assert read_snapshot_names(disk) == ("ketch-snap-1",)  # applying keeps the tag


def test_snapshot_apply_of_a_missing_tag_fails_and_changes_nothing(
    chain: tuple[Path, Path],
) -> None:
    _, disk = chain
    with pytest.raises(HostCommandError, match="qemu-img exited"):
        asyncio.run(qemu_img.snapshot_apply(disk, "nope"))
    assert reads_as(disk, 0xBB, "1M", "1M")


# -- convert: what a clone's disk is made with ------------------------------------------------


def test_convert_onto_the_same_base_is_identical_small_and_drops_tags(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    base, disk = chain
    qi("snapshot", "-c", "suspend", str(disk))
    qi("snapshot", "-c", "ketch-snap-x", str(disk))
    write(disk, 0x00, "0", "512k")  # zeros over base data must be copied too
    clone = tmp_path / "clone.qcow2"
    asyncio.run(qemu_img.convert(disk, clone, backing=base, backing_format="qcow2"))
    assert "identical" in qi("compare", str(disk), str(clone))
    info = parse_info(qi("info", "--output=json", str(clone)))
    assert info.backing == str(base) and info.backing_format == "qcow2"
    assert info.snapshots == ()  # internal snapshots never reach the clone
    # Only the overlay's own clusters were copied, not the base's 2 MiB of data.
    mapped = json.loads(qi("map", "--output=json", str(clone)))
    own = sum(e["length"] for e in mapped if e["depth"] == 0 and e["data"])
    assert own == 1024**2


def test_convert_result_survives_removing_the_source(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    base, disk = chain
    clone = tmp_path / "clone.qcow2"
    asyncio.run(qemu_img.convert(disk, clone, backing=base, backing_format="qcow2"))
    disk.unlink()
    qi("check", str(clone))
    assert reads_as(clone, 0xBB, "1M", "1M") and reads_as(clone, 0xAA, "0", "1M")


def test_convert_without_backing_is_a_full_copy(chain: tuple[Path, Path], tmp_path: Path) -> None:
    _, disk = chain
    full = tmp_path / "full.qcow2"
    asyncio.run(qemu_img.convert(disk, full))
    info = parse_info(qi("info", "--output=json", str(full)))
    assert info.backing is None
    assert "identical" in qi("compare", str(disk), str(full))
