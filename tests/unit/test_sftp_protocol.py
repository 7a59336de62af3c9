"""The SFTP server does what sshfs asks of it: files, directories, attributes, extensions.

The real server process on a socketpair (see ``sftpclient``), plus the pure
parts (path normalisation, the id maps, packet readers) on their own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sftpclient import Client, start_server, stop_server

from ketch.host.sftp import protocol as p
from ketch.host.sftp.server import IdMapper, normalise

OWNER = 1234
GUEST = 1000


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "a.txt").write_bytes(b"alpha")
    os.chown(root, OWNER, OWNER)
    os.chown(root / "a.txt", OWNER, OWNER)
    return root


@pytest.fixture
def client(share: Path) -> Iterator[Client]:
    if os.geteuid() != 0:
        pytest.skip("the confinement needs root")
    maps = ["--uid-map", f"{OWNER}:{GUEST}", "--gid-map", f"{OWNER}:{GUEST}"]
    proc, sftp = start_server(share, OWNER, OWNER, *maps)
    assert sftp.init() == 3
    yield sftp
    err = stop_server(proc, sftp)
    assert proc.returncode == 0, err


def test_normalise() -> None:
    assert normalise(b"") == b"/"
    assert normalise(b"a/./b//c/") == b"/a/b/c"
    assert normalise(b"../../x") == b"/x"
    assert normalise(b"/a/b/../../../c") == b"/c"


def test_id_mapper() -> None:
    ids = IdMapper({OWNER: GUEST}, {OWNER: GUEST})
    assert ids.guest_uid(OWNER) == GUEST and ids.host_uid(GUEST) == OWNER
    assert ids.guest_uid(5) == 5 and ids.host_gid(5) == 5


def test_reader_refuses_short_fields() -> None:
    with pytest.raises(p.BadMessage):
        p.Reader(b"\0\0").u32()
    with pytest.raises(p.BadMessage):
        p.Reader(p.u32(10) + b"abc").string()


def test_the_extensions_sshfs_uses_are_offered(client: Client) -> None:
    for name in (b"posix-rename@openssh.com", b"statvfs@openssh.com", b"hardlink@openssh.com"):
        assert name in client.extensions
    assert b"fsync@openssh.com" in client.extensions


def test_files_round_trip_with_mapped_ids(client: Client, share: Path) -> None:
    assert client.read_file(b"/a.txt") == b"alpha"
    assert client.stat(b"/a.txt") == (5, GUEST, GUEST, 0o100644 & ~0o022 | 0o644)
    client.write_file(b"/b.bin", b"\0" * 200_000, mode=0o600)
    st = (share / "b.bin").stat()
    assert (st.st_size, st.st_uid, st.st_gid, st.st_mode & 0o777) == (200_000, OWNER, OWNER, 0o600)
    handle = client.open(b"/b.bin", p.FXF_READ | p.FXF_WRITE)
    assert client.status(p.WRITE, p.string(handle) + p.u64(10) + p.string(b"xyz")) == p.OK
    assert client.read(handle, 9, 5) == b"\0xyz\0"
    assert client.read(handle, 300_000) == p.EOF
    fsync = p.string(b"fsync@openssh.com") + p.string(handle)
    assert client.status(p.EXTENDED, fsync) == p.OK
    reply, reader = client.request(p.FSTAT, p.string(handle))
    assert reply == p.ATTRS and reader.u32() and reader.u64() == 200_000
    assert client.status(p.CLOSE, p.string(handle)) == p.OK
    assert client.status(p.CLOSE, p.string(handle)) == p.NO_SUCH_FILE


def test_setstat_maps_guest_ids_back_and_sets_mode_size_times(client: Client, share: Path) -> None:
    flags = p.ATTR_SIZE | p.ATTR_UIDGID | p.ATTR_PERMISSIONS | p.ATTR_ACMODTIME
    attrs = p.u32(flags) + p.u64(2) + p.u32(GUEST) + p.u32(GUEST) + p.u32(0o640)
    attrs += p.u32(1_000_000) + p.u32(2_000_000)
    assert client.status(p.SETSTAT, p.string(b"/a.txt") + attrs) == p.OK
    st = (share / "a.txt").stat()
    assert (st.st_size, st.st_uid, st.st_mode & 0o777, int(st.st_mtime)) == (
        2,
        OWNER,
        0o640,
        2_000_000,
    )


def test_directories_links_and_renames(client: Client, share: Path) -> None:
    assert client.status(p.MKDIR, p.string(b"/d") + p.u32(p.ATTR_PERMISSIONS) + p.u32(0o750)) == 0
    assert (share / "d").stat().st_mode & 0o777 == 0o750
    for i in range(250):
        (share / "d" / f"f{i}").touch()
    listing = client.listdir(b"/d")
    assert isinstance(listing, list) and len(listing) == 252
    assert client.status(p.RMDIR, p.string(b"/d")) != p.OK  # not empty
    assert client.status(p.SYMLINK, p.string(b"a.txt") + p.string(b"/l")) == p.OK
    assert client.name(p.READLINK, b"/l") == b"a.txt"
    assert client.stat(b"/l", p.LSTAT) != client.stat(b"/l")
    assert client.read_file(b"/l") == b"alpha"
    # Plain v3 rename does not replace; posix-rename does.
    client.write_file(b"/c.txt", b"c")
    assert client.status(p.RENAME, p.string(b"/c.txt") + p.string(b"/a.txt")) == p.FAILURE
    rename = p.string(b"posix-rename@openssh.com") + p.string(b"/c.txt") + p.string(b"/a.txt")
    assert client.status(p.EXTENDED, rename) == p.OK
    assert (share / "a.txt").read_bytes() == b"c"
    hardlink = p.string(b"hardlink@openssh.com") + p.string(b"/a.txt") + p.string(b"/h")
    assert client.status(p.EXTENDED, hardlink) == p.OK
    assert (share / "h").stat().st_ino == (share / "a.txt").stat().st_ino
    assert client.status(p.REMOVE, p.string(b"/h")) == p.OK
    assert client.status(p.EXTENDED, p.string(b"nope@example.com")) == p.OP_UNSUPPORTED
    reply, reader = client.request(p.EXTENDED, p.string(b"statvfs@openssh.com") + p.string(b"/"))
    assert reply == p.EXTENDED_REPLY and reader.u64() == os.statvfs(share).f_bsize


def test_the_supervisor_serves_a_unix_socket_it_connects_to(share: Path, tmp_path: Path) -> None:
    """``--connect``: the host end of a mount's virtio-serial port (QEMU's chardev, a unix
    socket server; here the test's), served by the same confined server."""
    if os.geteuid() != 0:
        pytest.skip("the confinement needs root")
    path = tmp_path / "port.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    argv = [sys.executable, "-m", "ketch.host.sftp", str(share), "--uid", str(OWNER)]
    argv += ["--gid", str(OWNER), "--connect", str(path)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    listener.settimeout(60)
    conn, _ = listener.accept()
    conn.settimeout(60)
    sftp = Client(conn)
    assert sftp.init() == 3
    assert sftp.read(sftp.open(b"/a.txt"), 0, 100) == b"alpha"
    err = stop_server(proc, sftp)
    assert proc.returncode == 0 and b"over " + str(path).encode() in err, err
    listener.close()
