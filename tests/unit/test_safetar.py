"""ketch.safetar: hostile tar streams from a guest write nothing outside the destination.

Each archive is made here, member by member, as a hostile guest would send
it: the CVE-2025-4517 symlink chain, absolute and ``..`` link targets, hard
links to host files, a file written through a symbolic link, ``../x``.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from hostile_tar import Member, archive, cve_2025_4517_chain

from ketch import safetar
from ketch.errors import GuestError
from ketch.safetar import MAX_HEADER, Refused, extract_tree, link_problem


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """The destination directory, inside ``tmp_path`` (which must stay clean)."""
    path = tmp_path / "dest"
    path.mkdir()
    (tmp_path / "outside.txt").write_text("host data\n")
    return path


def outside_untouched(tmp_path: Path) -> None:
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["dest", "outside.txt"], names
    assert (tmp_path / "outside.txt").read_text() == "host data\n"


def test_cve_2025_4517_symlink_chain_is_refused(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(Refused, match="refused") as info:
        extract_tree(archive(*cve_2025_4517_chain(dest)), dest, "top", "top")
    assert info.value.exit_code == 2
    assert not (tmp_path / "PWNED").exists()
    assert not (dest / "top").exists()  # a refused stream leaves nothing half-written
    outside_untouched(tmp_path)


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([("file", "../x", "x")], "'..'"),
        ([("file", "./top/../../x", "x")], "'..'"),
        ([("file", "/tmp/x", "x")], "absolute name"),
        ([("file", "./other/x", "x")], "not inside 'top'"),
        ([("dir", "./top", ""), ("sym", "./top/abs", "/etc/passwd")], "absolute path"),
        ([("dir", "./top", ""), ("sym", "./top/up", "../x")], "outside the copied tree"),
        ([("dir", "./top", ""), ("sym", "./top/d/up", "../../outside.txt")], "outside"),
        ([("dir", "./top", ""), ("hard", "./top/h", "/etc/passwd")], "absolute name"),
        ([("dir", "./top", ""), ("hard", "./top/h", "./top/../../outside.txt")], "'..'"),
        ([("dir", "./top", ""), ("chr", "./top/dev", "")], "character device"),
        ([("dir", "./top", ""), ("fifo", "./top/fifo", "")], "FIFO"),
        ([("file", "./top", "x")], "must be a directory"),
        ([("sym", "./top", "..")], "must be a directory"),
    ],
)
def test_hostile_member_is_refused(
    tmp_path: Path, dest: Path, members: list[Member], why: str
) -> None:
    with pytest.raises(Refused, match=why):
        extract_tree(archive(*members), dest, "top", "top")
    assert list(dest.iterdir()) == []
    outside_untouched(tmp_path)


def test_with_skipped_a_link_out_is_not_made_and_the_rest_is(tmp_path: Path, dest: Path) -> None:
    seen: list[tuple[str, str]] = []
    members: list[Member] = [
        ("dir", "./top", ""),
        ("sym", "./top/py", "/usr/bin/python3"),
        ("sym", "./top/up", "../../outside.txt"),
        ("sym", "./top/in", "f"),
        ("file", "./top/f", "data"),
        ("file", "./top/up/x", "y"),
    ]
    extract_tree(archive(*members), dest, "top", "top", skipped=lambda n, w: seen.append((n, w)))
    assert [n for n, _ in seen] == ["./top/py", "./top/up"]
    assert "absolute path" in seen[0][1] and "outside the copied tree" in seen[1][1]
    assert os.readlink(dest / "top" / "in") == "f"
    assert not (dest / "top" / "py").exists() and not (dest / "top" / "py").is_symlink()
    assert (dest / "top" / "up" / "x").read_text() == "y"  # a plain directory, not the link
    outside_untouched(tmp_path)


def test_a_file_through_a_symlink_the_archive_made_is_refused(tmp_path: Path, dest: Path) -> None:
    # An in-tree link (allowed) then a file written through it (refused).
    members: list[Member] = [
        ("dir", "./top", ""),
        ("dir", "./top/real", ""),
        ("sym", "./top/link", "real"),
        ("file", "./top/link/f", "x"),
    ]
    with pytest.raises(Refused, match="top/link is a symbolic link"):
        extract_tree(archive(*members), dest, "top", "top")
    outside_untouched(tmp_path)


def test_dot_dot_after_a_link_is_refused(tmp_path: Path, dest: Path) -> None:
    # s -> ".." is inside; e -> "s/x/../../.." is lexically inside but, with s
    # expanded by the kernel, two levels above the destination.
    members: list[Member] = [
        ("dir", "./top", ""),
        ("dir", "./top/d", ""),
        ("sym", "./top/d/s", ".."),
        ("sym", "./top/e", "d/s/x/../../.."),
    ]
    with pytest.raises(Refused, match=r"'\.\.' after a name"):
        extract_tree(archive(*members), dest, "top", "top")
    outside_untouched(tmp_path)


def test_hard_link_to_a_host_file_in_the_destination_is_refused(tmp_path: Path, dest: Path) -> None:
    (dest / "top").mkdir()
    (dest / "top" / "mine").write_text("the user's\n")
    members: list[Member] = [("dir", "./top", ""), ("hard", "./top/h", "./top/mine")]
    with pytest.raises(Refused, match="not a file of this archive"):
        extract_tree(archive(*members), dest, "top", "top")
    assert (dest / "top" / "mine").stat().st_nlink == 1
    assert sorted(p.name for p in (dest / "top").iterdir()) == ["mine"]  # the top existed: kept


def test_an_existing_link_in_the_destination_is_replaced_not_written_through(
    tmp_path: Path, dest: Path
) -> None:
    (dest / "top").mkdir()
    (dest / "top" / "f").symlink_to(tmp_path / "outside.txt")
    extract_tree(archive(("dir", "./top", ""), ("file", "./top/f", "guest\n")), dest, "top", "top")
    assert not (dest / "top" / "f").is_symlink()
    assert (dest / "top" / "f").read_text() == "guest\n"
    outside_untouched(tmp_path)


def test_an_existing_link_as_a_directory_is_refused(tmp_path: Path, dest: Path) -> None:
    (dest / "top").mkdir()
    (dest / "top" / "sub").symlink_to(tmp_path)
    members: list[Member] = [("dir", "./top", ""), ("file", "./top/sub/outside.txt", "pwned")]
    with pytest.raises(Refused, match="top/sub is a symbolic link"):
        extract_tree(archive(*members), dest, "top", "top")
    outside_untouched(tmp_path)


def test_an_oversized_long_name_header_is_refused_unread(tmp_path: Path, dest: Path) -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 1 << 30  # announced; never sent
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    stream = io.BytesIO(header + b"x" * 4096)
    with pytest.raises(Refused, match=f"the limit is {MAX_HEADER}"):
        extract_tree(stream, dest, "top", "top")
    outside_untouched(tmp_path)


def test_a_file_larger_than_the_free_space_is_refused_before_writing(
    tmp_path: Path, dest: Path
) -> None:
    vfs = os.statvfs(dest)
    info = tarfile.TarInfo("./top/huge")
    info.size = vfs.f_bavail * vfs.f_frsize + (1 << 30)
    head = archive(("dir", "./top", "")).getvalue()[: tarfile.BLOCKSIZE]
    stream = io.BytesIO(head + info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 8192)
    with pytest.raises(Refused, match="bytes free and ketch leaves"):
        extract_tree(stream, dest, "top", "top")
    assert list(dest.iterdir()) == []


def test_a_truncated_archive_is_a_clear_error(dest: Path) -> None:
    data = archive(("dir", "./top", ""), ("file", "./top/f", "x" * 5000)).getvalue()
    with pytest.raises(GuestError, match="could not be read"):
        extract_tree(io.BytesIO(data[:2048]), dest, "top", "top")
    assert list(dest.iterdir()) == []


def test_a_legitimate_tree_is_unpacked_and_renamed(tmp_path: Path, dest: Path) -> None:
    members: list[Member] = [
        ("dir", "./top", ""),
        ("dir", "./top/sub", ""),
        ("file", "./top/a", "1"),
        ("file", "./top/sub/b", "2"),
        ("sym", "./top/sub/up", "../a"),
        ("sym", "./top/sub/here", "./b"),
        ("sym", "./top/self", "."),
        ("hard", "./top/sub/a-again", "./top/a"),
        ("file", "./top/implicit/dir/c", "3"),
    ]
    extract_tree(archive(*members), dest, "top", "new")
    top = dest / "new"
    assert (top / "sub" / "up").read_text() == "1"
    assert os.readlink(top / "sub" / "up") == "../a"
    assert (top / "sub" / "here").read_text() == "2"
    assert (top / "sub" / "a-again").stat().st_ino == (top / "a").stat().st_ino
    assert (top / "implicit" / "dir" / "c").read_text() == "3"
    assert not list(dest.rglob(".ketch-part-*"))
    outside_untouched(tmp_path)


def test_modes_lose_setuid_setgid_and_sticky(dest: Path) -> None:
    extract_tree(
        archive(("dir", "./top", ""), ("file", "./top/suid", "x"), mode=0o7755),
        dest,
        "top",
        "top",
    )
    mode = stat.S_IMODE((dest / "top" / "suid").stat().st_mode)
    assert mode & 0o7000 == 0
    assert mode & 0o700 == 0o700


@pytest.mark.parametrize(
    ("parts", "target", "ok"),
    [
        (["t", "l"], "x", True),
        (["t", "l"], "../x", False),
        (["t", "d", "l"], "../x", True),
        (["t", "d", "l"], "../../x", False),
        (["t", "d", "l"], "./.././x", True),
        (["t", "l"], "a/../x", False),
        (["t", "l"], "/x", False),
        (["t", "l"], "", False),
    ],
)
def test_link_problem(parts: list[str], target: str, ok: bool) -> None:
    assert (link_problem(parts, target) is None) == ok


def test_the_member_count_is_bounded(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safetar, "MAX_MEMBERS", 3)
    members: list[Member] = [("dir", "./top", ""), *[("file", f"./top/{i}", "") for i in range(5)]]
    with pytest.raises(Refused, match="more than 3 members"):
        extract_tree(archive(*members), dest, "top", "top")
    assert list(dest.iterdir()) == []


def test_a_sparse_member_is_refused(dest: Path) -> None:
    info = tarfile.TarInfo("./top/sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    head = archive(("dir", "./top", "")).getvalue()[: tarfile.BLOCKSIZE]
    stream = io.BytesIO(head + info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096)
    with pytest.raises(Refused, match="sparse"):
        extract_tree(stream, dest, "top", "top")


def test_a_top_that_is_a_symlink_is_not_written_through(tmp_path: Path, dest: Path) -> None:
    (dest / "top").symlink_to(tmp_path)
    members: list[Member] = [("dir", "./top", ""), ("file", "./top/outside.txt", "pwned")]
    with pytest.raises(Refused, match="top is a symbolic link"):
        extract_tree(archive(*members), dest, "top", "top")
    assert (dest / "top").is_symlink()
    outside_untouched(tmp_path)
