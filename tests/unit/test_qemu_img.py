"""qemu-img wrappers: argv builders, the JSON parser, and the direct qcow2 snapshot reader.

The parser is checked against outputs recorded from qemu-img 7.2 (files in
``data/``, each opening with two ``#`` lines naming the command and the
version).  The snapshot-table reader is checked on real qcow2 files made with
the real ``qemu-img`` and compared with what ``qemu-img info`` says about the
same file, so the two readers cannot drift apart unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.errors import HostCommandError
from ketch.host import qemu_img
from ketch.host.qemu_img import (
    NotQcow2,
    create_overlay_argv,
    info_argv,
    parse_info,
    parse_snapshot_table,
    read_snapshot_names,
    resize_argv,
    snapshot_create_argv,
    snapshot_delete_argv,
)
from ketch.model import DiskInfo

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


# -- helpers -----------------------------------------------------------------------


def recorded(name: str) -> str:
    """A recorded output without its two ``#`` header lines."""
    lines = (DATA / name).read_text().splitlines(keepends=True)
    assert lines[0].startswith("# command:") and lines[1].startswith("# qemu-img version:")
    return "".join(lines[2:])


def qemu_img_run(*args: str) -> str:
    done = subprocess.run(
        ["qemu-img", *args], check=True, capture_output=True, text=True, timeout=30
    )
    return done.stdout


def make_qcow2(
    path: Path,
    tags: Sequence[str] = (),
    *,
    size: str = "16M",
    compat: str = "1.1",
    backing: Path | None = None,
) -> Path:
    argv = ["create", "-q", "-f", "qcow2", "-o", f"compat={compat}"]
    if backing is not None:
        argv += ["-F", "qcow2", "-b", str(backing)]
    qemu_img_run(*argv, str(path), *([] if backing is not None else [size]))
    for tag in tags:
        qemu_img_run("snapshot", "-c", tag, str(path))
    return path


def names_by_qemu_img(path: Path) -> tuple[str, ...]:
    doc = json.loads(qemu_img_run("info", "--output=json", "-U", str(path)))
    return tuple(s["name"] for s in doc.get("snapshots", []))


def header_fields(path: Path) -> tuple[int, int]:
    """(nb_snapshots, snapshots_offset) read straight from the qcow2 header (spec offsets)."""
    raw = path.read_bytes()[:72]
    nb, offset = struct.unpack(">IQ", raw[60:72])
    return nb, offset


# -- argv builders -----------------------------------------------------------------


def test_create_overlay_argv_with_size() -> None:
    argv = create_overlay_argv(Path("/v/disk.qcow2"), Path("/b/base.img"), "raw", 5 * 1024**3)
    assert argv == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/b/base.img",
        "/v/disk.qcow2", str(5 * 1024**3),
    ]  # fmt: skip


def test_create_overlay_argv_without_size_keeps_the_base_size() -> None:
    argv = create_overlay_argv(Path("/v/disk.qcow2"), Path("/b/base.qcow2"), "qcow2", None)
    assert argv[-1] == "/v/disk.qcow2"
    assert argv[argv.index("-F") + 1] == "qcow2"
    assert argv[argv.index("-b") + 1] == "/b/base.qcow2"


def test_resize_argv() -> None:
    assert resize_argv(Path("/v/d.qcow2"), 1024) == [
        "qemu-img", "resize", "-q", "-f", "qcow2", "/v/d.qcow2", "1024",
    ]  # fmt: skip


def test_info_argv_force_share_by_default() -> None:
    assert info_argv(Path("/v/d.qcow2")) == [
        "qemu-img",
        "info",
        "--output=json",
        "-U",
        "/v/d.qcow2",
    ]
    assert "-U" not in info_argv(Path("/v/d.qcow2"), force_share=False)


def test_info_argv_can_pin_the_format() -> None:
    argv = info_argv(Path("/v/d.qcow2"), fmt="qcow2")
    assert argv[argv.index("-f") + 1] == "qcow2"
    assert argv[-1] == "/v/d.qcow2"
    assert "-f" not in info_argv(Path("/v/d.qcow2"))


def test_snapshot_argvs() -> None:
    assert snapshot_create_argv(Path("/d"), "suspend") == [
        "qemu-img",
        "snapshot",
        "-c",
        "suspend",
        "/d",
    ]
    assert snapshot_delete_argv(Path("/d"), "suspend") == [
        "qemu-img",
        "snapshot",
        "-d",
        "suspend",
        "/d",
    ]


def test_argv_builders_run_against_real_qemu_img(tmp_path: Path) -> None:
    """The builders' argv are accepted by the real qemu-img and do what they say."""
    base = make_qcow2(tmp_path / "base.qcow2", size="8M")
    disk = tmp_path / "disk.qcow2"
    subprocess.run(create_overlay_argv(disk, base, "qcow2", 16 * 1024**2), check=True)
    subprocess.run(resize_argv(disk, 32 * 1024**2), check=True)
    subprocess.run(snapshot_create_argv(disk, "suspend"), check=True)
    subprocess.run(snapshot_create_argv(disk, "keep"), check=True)
    subprocess.run(snapshot_delete_argv(disk, "suspend"), check=True)
    out = subprocess.run(info_argv(disk), check=True, capture_output=True, text=True).stdout
    got = parse_info(out)
    assert got.format == "qcow2"
    assert got.virtual_size == 32 * 1024**2
    assert got.backing is not None and Path(got.backing).name == "base.qcow2"
    assert got.snapshots == ("keep",)


# -- parse_info on recorded outputs ----------------------------------------------------


def test_parse_info_plain_recorded() -> None:
    assert parse_info(recorded("qemu-img-7.2-info-plain.json.txt")) == DiskInfo(
        format="qcow2",
        virtual_size=1073741824,
        actual_size=200704,
        backing=None,
        snapshots=(),
        corrupt=False,
    )


def test_parse_info_overlay_with_snapshots_recorded() -> None:
    got = parse_info(recorded("qemu-img-7.2-info-snapshots.json.txt"))
    assert got.format == "qcow2"
    assert got.virtual_size == 134217728
    assert got.actual_size == 217088
    assert got.backing == "base.qcow2"
    assert got.snapshots == ("suspend", "other")
    assert got.corrupt is False


def test_parse_info_agrees_with_recorded_snapshot_list() -> None:
    """The tags in ``qemu-img snapshot -l`` (same file, same version) are the JSON's."""
    table = recorded("qemu-img-7.2-snapshot-list.txt").splitlines()
    assert table[0] == "Snapshot list:"
    tags = tuple(line.split()[1] for line in table[2:] if line.strip())
    assert tags == parse_info(recorded("qemu-img-7.2-info-snapshots.json.txt")).snapshots


def test_parse_info_prefers_full_backing_filename() -> None:
    doc = json.loads(recorded("qemu-img-7.2-info-snapshots.json.txt"))
    doc["full-backing-filename"] = "/abs/base.qcow2"
    assert parse_info(json.dumps(doc)).backing == "/abs/base.qcow2"
    del doc["full-backing-filename"]
    assert parse_info(json.dumps(doc)).backing == "base.qcow2"


def test_parse_info_reports_corrupt_flag() -> None:
    doc = json.loads(recorded("qemu-img-7.2-info-plain.json.txt"))
    doc["format-specific"]["data"]["corrupt"] = True
    assert parse_info(json.dumps(doc)).corrupt is True


def test_parse_info_raw_image_without_format_specific() -> None:
    doc = {"virtual-size": 4096, "filename": "x.img", "format": "raw", "actual-size": 4096}
    got = parse_info(json.dumps(doc))
    assert (got.format, got.virtual_size, got.snapshots, got.backing) == ("raw", 4096, (), None)


def test_parse_info_rejects_text_output() -> None:
    with pytest.raises(ValueError):
        parse_info(recorded("qemu-img-7.2-snapshot-list.txt"))


def test_parse_info_missing_required_key() -> None:
    with pytest.raises(KeyError):
        parse_info(json.dumps({"format": "qcow2"}))


# -- the direct snapshot-table reader on real files ------------------------------------------


@pytest.mark.parametrize(
    "tags",
    [
        pytest.param([], id="no-tags"),
        pytest.param(["suspend"], id="one-tag"),
        pytest.param(["suspend", "other", "third", "x"], id="several-tags"),
        pytest.param(["a" * 200, "b" * 7], id="long-name"),
        pytest.param(["a b", "héllo wörld", "-dash", "1"], id="odd-names"),
        pytest.param(["dup", "dup"], id="duplicate-names"),
    ],
)
@pytest.mark.parametrize("compat", ["1.1", "0.10"], ids=["qcow2-v3", "qcow2-v2"])
def test_read_snapshot_names_matches_qemu_img(tmp_path: Path, tags: list[str], compat: str) -> None:
    disk = make_qcow2(tmp_path / "d.qcow2", tags, compat=compat)
    got = read_snapshot_names(disk)
    assert got == tuple(tags)
    assert got == names_by_qemu_img(disk)


def test_read_snapshot_names_name_truncated_by_qemu_is_read_as_stored(tmp_path: Path) -> None:
    """qemu-img keeps at most 255 bytes of a tag; the reader returns what is on disk."""
    disk = make_qcow2(tmp_path / "d.qcow2", ["z" * 300])
    assert read_snapshot_names(disk) == names_by_qemu_img(disk) == ("z" * 255,)


def test_read_snapshot_names_overlay_with_backing_file(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", ["base-tag"])
    overlay = make_qcow2(tmp_path / "ov.qcow2", ["suspend", "other"], backing=base)
    # The overlay's own table only: tags of the backing file are not the overlay's.
    assert read_snapshot_names(overlay) == ("suspend", "other") == names_by_qemu_img(overlay)
    assert read_snapshot_names(base) == ("base-tag",)


def test_read_snapshot_names_after_delete(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "d.qcow2", ["a", "suspend", "b"])
    qemu_img_run("snapshot", "-d", "suspend", str(disk))
    assert read_snapshot_names(disk) == ("a", "b") == names_by_qemu_img(disk)


def test_parse_snapshot_table_over_in_memory_bytes(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "d.qcow2", ["one", "two"])
    data = disk.read_bytes()
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return data[offset : offset + size]

    assert parse_snapshot_table(data[:512], read_at) == ("one", "two")
    _, table = header_fields(disk)
    assert reads[0][0] == table  # the first entry is read where the header says


# -- not qcow2, truncated ------------------------------------------------------------------


def test_raw_file_is_not_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    qemu_img_run("create", "-q", "-f", "raw", str(raw), "1M")
    with pytest.raises(NotQcow2):
        read_snapshot_names(raw)


def test_empty_file_is_not_qcow2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(NotQcow2, match="too short"):
        read_snapshot_names(empty)


def test_text_file_is_not_qcow2(tmp_path: Path) -> None:
    text = tmp_path / "t.qcow2"
    text.write_text("this is not a disk image, but it is long enough to fill a header " * 4)
    with pytest.raises(NotQcow2):
        read_snapshot_names(text)


def test_header_cut_short_is_not_qcow2(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "d.qcow2", ["suspend"])
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(disk.read_bytes()[:40])
    with pytest.raises(NotQcow2, match="too short"):
        read_snapshot_names(cut)


def test_unknown_qcow2_version_is_refused(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "d.qcow2", ["suspend"])
    data = bytearray(disk.read_bytes())
    data[4:8] = struct.pack(">I", 1)  # qcow version 1
    disk.write_bytes(bytes(data))
    with pytest.raises(NotQcow2, match="v2/v3"):
        read_snapshot_names(disk)


def test_table_beyond_end_of_file_is_truncated(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "d.qcow2", ["suspend", "other"])
    _, table = header_fields(disk)
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(disk.read_bytes()[:table])  # header intact, table gone
    with pytest.raises(NotQcow2, match="truncated"):
        read_snapshot_names(cut)


def test_table_cut_inside_a_name_is_truncated(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "d.qcow2", ["a-rather-long-snapshot-name"])
    _, table = header_fields(disk)
    cut = tmp_path / "cut.qcow2"
    # The fixed part of the entry (40 bytes) plus a few bytes of what follows it.
    cut.write_bytes(disk.read_bytes()[: table + 40 + 4])
    with pytest.raises(NotQcow2, match="truncated"):
        read_snapshot_names(cut)


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_snapshot_names(tmp_path / "absent.qcow2")


# -- async runners ----------------------------------------------------------------------


def test_info_runner_on_a_real_overlay(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", size="8M")
    disk = tmp_path / "disk.qcow2"

    async def go() -> DiskInfo:
        await qemu_img.create_overlay(disk, base, "qcow2", 16 * 1024**2)
        await qemu_img.resize(disk, 24 * 1024**2)
        qemu_img_run("snapshot", "-c", "suspend", str(disk))
        await qemu_img.snapshot_delete(disk, "suspend")
        return await qemu_img.info(disk)

    got = asyncio.run(go())
    assert got.virtual_size == 24 * 1024**2
    assert got.snapshots == ()
    assert got.backing == str(base)


def test_info_runner_failure_is_host_command_error(tmp_path: Path) -> None:
    with pytest.raises(HostCommandError, match="qemu-img exited"):
        asyncio.run(qemu_img.info(tmp_path / "absent.qcow2"))


def test_info_runner_with_pinned_format_does_not_probe_as_raw(tmp_path: Path) -> None:
    """A file that is not qcow2 is an error with fmt='qcow2', not a 'raw' image."""
    damaged = tmp_path / "disk.qcow2"
    damaged.write_bytes(b"\0" * 65536)
    assert asyncio.run(qemu_img.info(damaged)).format == "raw"  # what probing would say
    with pytest.raises(HostCommandError):
        asyncio.run(qemu_img.info(damaged, fmt="qcow2"))


def test_snapshot_delete_of_missing_tag_fails(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "d.qcow2")
    with pytest.raises(HostCommandError):
        asyncio.run(qemu_img.snapshot_delete(disk, "nope"))


# -- property: both readers agree on any list of tags --------------------------------------

_TAG = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    min_size=1,
    max_size=60,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tags=st.lists(_TAG, max_size=5))
def test_property_direct_reader_agrees_with_qemu_img(tags: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="ketch-qcow2-") as tmp:
        disk = make_qcow2(Path(tmp) / "d.qcow2", tags, size="1M")
        assert read_snapshot_names(disk) == names_by_qemu_img(disk) == tuple(tags)
