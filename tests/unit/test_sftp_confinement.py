"""Attacks on the classic mount's SFTP server: nothing outside SOURCE, ever.

Each test runs the real server process (``python -m ketch.host.sftp``, forked
and confined exactly as a mount's supervisor does it) and sends it raw SFTP
packets over a socketpair, as a hostile guest's sshfs could.  The share holds
traps: an absolute symlink to ``/etc``, a ``..`` symlink, relative and absolute
symlinks to a secret beside the share, a device node and a FIFO.  Needs root
(the confinement does: a mount namespace, pivot_root), as ketchd runs.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sftpclient import Client, start_server, stop_server

from ketch.host.sftp import protocol as p

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the confinement needs root")

OWNER = 1234  # the share's host owner: the server runs as it
SECRET = b"the secret outside the share\n"


@pytest.fixture
def share(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "share"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "sub").mkdir()
    (root / "link_etc").symlink_to("/etc")
    (root / "link_up").symlink_to("../..")
    (root / "link_secret").symlink_to("../outside/secret.txt")
    (root / "link_abs_secret").symlink_to(outside / "secret.txt")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(root / "fifo")
    for path in [root, *root.rglob("*")]:
        os.chown(path, OWNER, OWNER, follow_symlinks=False)
    return root


@pytest.fixture
def client(share: Path) -> Iterator[Client]:
    proc, sftp = start_server(share, OWNER, OWNER)
    assert sftp.init() == 3
    yield sftp
    if proc.poll() is None:
        err = stop_server(proc, sftp)
        assert proc.returncode == 0, err


def test_etc_shadow_is_not_there(client: Client) -> None:
    for path in (b"/etc/shadow", b"/etc/passwd", b"etc/shadow", b"/proc/self/root/etc/passwd"):
        assert client.stat(path) == p.NO_SUCH_FILE
        with pytest.raises(FileNotFoundError) as caught:
            client.open(path)
        assert caught.value.args[0] == p.NO_SUCH_FILE
    assert client.listdir(b"/etc") == p.NO_SUCH_FILE
    assert client.listdir(b"/proc") == p.NO_SUCH_FILE


def test_dot_dot_stays_at_the_root(client: Client, share: Path) -> None:
    expected = sorted([b".", b"..", *(os.fsencode(n) for n in os.listdir(share))])
    for path in (b"..", b"../..", b"/../../../..", b"sub/../../..", b"./../."):
        listing = client.listdir(path)
        assert isinstance(listing, list) and sorted(listing) == expected
        assert client.name(p.REALPATH, path) == b"/"
    for path in (b"../../etc/passwd", b"../outside/secret.txt", b"/../outside/secret.txt"):
        assert client.stat(path) == p.NO_SUCH_FILE


def test_absolute_symlink_to_etc_points_into_the_share(client: Client) -> None:
    assert client.stat(b"/link_etc/passwd") == p.NO_SUCH_FILE
    assert client.listdir(b"/link_etc") == p.NO_SUCH_FILE
    assert client.stat(b"/link_abs_secret") == p.NO_SUCH_FILE
    assert client.stat(b"/link_secret") == p.NO_SUCH_FILE
    with pytest.raises(FileNotFoundError):
        client.open(b"/link_secret")
    # The link's own text is shown (as on any filesystem), never what it names on the host.
    assert client.name(p.READLINK, b"/link_etc") == b"/etc"
    assert client.name(p.REALPATH, b"/link_abs_secret") != b"/"


def test_dot_dot_symlink_is_the_share_itself(client: Client, share: Path) -> None:
    listing = client.listdir(b"/link_up")
    assert isinstance(listing, list) and b"hello.txt" in listing and b"outside" not in listing
    assert client.read_file(b"/link_up/link_up/hello.txt") == b"hello\n"
    assert client.name(p.REALPATH, b"/link_up") == b"/"


def test_a_symlink_the_guest_makes_cannot_point_outside(client: Client, share: Path) -> None:
    for target in (b"/etc/passwd", b"../../../../etc/shadow", os.fsencode(share.parent)):
        link = b"/evil"
        assert client.status(p.SYMLINK, p.string(target) + p.string(link)) == p.OK
        assert client.stat(link) == p.NO_SUCH_FILE
        with pytest.raises(FileNotFoundError):
            client.open(link)
        assert client.listdir(link + b"/outside") == p.NO_SUCH_FILE
        assert client.status(p.REMOVE, p.string(link)) == p.OK
    # Made under a name that climbs: it lands inside the share.
    assert client.status(p.SYMLINK, p.string(b"/etc") + p.string(b"../../escape")) == p.OK
    assert (share / "escape").is_symlink() and not (share.parent.parent / "escape").exists()


def test_writes_renames_and_links_stay_inside(client: Client, share: Path) -> None:
    client.write_file(b"../../planted", b"x")
    assert (share / "planted").read_bytes() == b"x"
    assert not (share.parent / "planted").exists()
    rename = p.string(b"posix-rename@openssh.com") + p.string(b"/planted")
    assert client.status(p.EXTENDED, rename + p.string(b"../outside/planted")) == p.NO_SUCH_FILE
    assert not (share.parent / "outside" / "planted").exists()
    hardlink = p.string(b"hardlink@openssh.com") + p.string(b"/etc/passwd") + p.string(b"/pw")
    assert client.status(p.EXTENDED, hardlink) == p.NO_SUCH_FILE
    assert client.status(p.MKDIR, p.string(b"/../../made") + p.u32(0)) == p.OK
    assert (share / "made").is_dir() and not (share.parent / "made").exists()


def test_writes_land_as_the_mapped_host_user(client: Client, share: Path) -> None:
    client.write_file(b"/sub/written", b"data")
    st = (share / "sub" / "written").stat()
    assert (st.st_uid, st.st_gid) == (OWNER, OWNER)
    # Not root: a chown to root is refused, a root-only file on the share cannot be read.
    chown = p.string(b"/sub/written") + p.u32(p.ATTR_UIDGID) + p.u32(0) + p.u32(0)
    assert client.status(p.SETSTAT, chown) == p.PERMISSION_DENIED
    (share / "rootonly").write_bytes(b"root")
    os.chmod(share / "rootonly", 0o600)
    with pytest.raises(FileNotFoundError) as caught:
        client.open(b"/rootonly")
    assert caught.value.args[0] == p.PERMISSION_DENIED


def test_device_nodes_and_fifos_are_not_served(client: Client) -> None:
    for path in (b"/null", b"/fifo"):
        with pytest.raises(FileNotFoundError) as caught:
            client.open(path, p.FXF_READ | p.FXF_WRITE)
        assert caught.value.args[0] == p.PERMISSION_DENIED
    assert client.read_file(b"/hello.txt") == b"hello\n"  # and the server still answers


def test_an_oversized_packet_gets_a_status_and_ends_the_session(client: Client) -> None:
    client.send_raw(p.u32(64 * 1024 * 1024) + bytes((p.READ,)) + p.u32(77) + b"x" * 100)
    kind, payload = client.recv()
    reader = p.Reader(payload)
    assert kind == p.STATUS and reader.u32() == 77 and reader.u32() == p.BAD_MESSAGE
    with pytest.raises(EOFError):
        client.recv()


def test_malformed_requests_get_bad_message(client: Client) -> None:
    reply, reader = client.request(p.OPEN, p.u32(1000))  # a string longer than the packet
    assert reply == p.STATUS and reader.u32() == p.BAD_MESSAGE
    assert client.status(p.STAT, p.string(b"/hello\0.txt")) == p.BAD_MESSAGE
    assert client.status(p.STAT, p.string(b"/" + b"a" * 5000)) == p.BAD_MESSAGE
    assert client.status(p.READ, p.string(b"no-such-handle") + p.u64(0) + p.u32(1)) != p.OK
    assert client.status(99, b"") == p.OP_UNSUPPORTED
    assert client.read_file(b"/hello.txt") == b"hello\n"


def test_too_many_handles_are_refused(client: Client) -> None:
    handles = [client.open(b"/hello.txt") for _ in range(p.MAX_HANDLES)]
    with pytest.raises(FileNotFoundError) as caught:
        client.open(b"/hello.txt")
    assert caught.value.args[0] == p.FAILURE
    assert client.listdir(b"/") == p.FAILURE
    assert client.status(p.CLOSE, p.string(handles.pop())) == p.OK
    handles.append(client.open(b"/hello.txt"))


def test_reads_are_capped(client: Client, share: Path) -> None:
    (share / "big").write_bytes(os.urandom(2 * p.MAX_READ))
    handle = client.open(b"/big")
    data = client.read(handle, 0, 64 * 1024 * 1024)
    assert isinstance(data, bytes) and len(data) == p.MAX_READ


def _server_child(supervisor: int) -> int:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert len(children) == 1
    return int(children[0])


def test_a_server_mapped_to_root_is_still_confined(share: Path) -> None:
    proc, sftp = start_server(share, 0, 0)
    assert sftp.init() == 3
    status = Path(f"/proc/{_server_child(proc.pid)}/status").read_text()
    effective = int(re.search(r"CapEff:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
    bounding = int(re.search(r"CapBnd:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
    assert effective == bounding == 0b11111  # chown, dac_override, dac_read_search, fowner, fsetid
    assert re.search(r"NoNewPrivs:\s*1", status)
    assert sftp.stat(b"/etc/shadow") == p.NO_SUCH_FILE
    assert sftp.stat(b"/link_etc/shadow") == p.NO_SUCH_FILE
    assert sftp.stat(b"/link_secret") == p.NO_SUCH_FILE
    with pytest.raises(FileNotFoundError) as caught:
        sftp.open(b"/null", p.FXF_READ)
    assert caught.value.args[0] == p.PERMISSION_DENIED
    sftp.write_file(b"/as-root", b"r")
    assert (share / "as-root").stat().st_uid == 0
    stop_server(proc, sftp)
    assert proc.returncode == 0


def test_the_server_holds_no_host_descriptor(share: Path) -> None:
    leaked = os.open("/etc/passwd", os.O_RDONLY)  # inheritable, to see it closed in the server
    os.set_inheritable(leaked, True)
    try:
        proc, sftp = start_server(share, OWNER, OWNER)
        assert sftp.init() == 3
        child = _server_child(proc.pid)
        fds = sorted(int(n) for n in os.listdir(f"/proc/{child}/fd"))
        root = os.readlink(f"/proc/{child}/root")
        stop_server(proc, sftp)
    finally:
        os.close(leaked)
    assert leaked not in fds and len(fds) == 4  # stdin, stdout, stderr, the client's socket
    assert root == "/"  # its root is its own namespace's, which is the share


def test_the_supervisor_ends_the_server_on_sigterm(share: Path) -> None:
    proc, sftp = start_server(share, OWNER, OWNER)
    assert sftp.init() == 3
    child = _server_child(proc.pid)
    proc.terminate()
    proc.wait(timeout=60)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text()
    sftp.sock.shutdown(socket.SHUT_RDWR)
