"""A raw SFTP v3 client for the tests, and the real confined server to talk to.

:func:`start_server` runs ``python -m ketch.host.sftp SOURCE --fd N`` (the
same fork and confinement as a real mount's supervisor) on one end of a
socketpair; :class:`Client` speaks raw packets on the other end.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

from ketch.host.sftp import protocol as p


class Client:
    """Raw packets over a socket: every method returns the reply's (type, payload)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._next = 0
        self.extensions: dict[bytes, bytes] = {}

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> tuple[int, bytes]:
        header = self._exactly(4)
        (length,) = struct.unpack(">I", header)
        body = self._exactly(length)
        return body[0], body[1:]

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError("server hung up")
            data += chunk
        return data

    def init(self) -> int:
        self.send_raw(p.packet(p.INIT, p.u32(3)))
        kind, payload = self.recv()
        assert kind == p.VERSION_REPLY
        reader = p.Reader(payload)
        version = reader.u32()
        while True:
            try:
                name = reader.string()
            except p.BadMessage:
                break
            self.extensions[name] = reader.string()
        return version

    def request(self, kind: int, body: bytes) -> tuple[int, p.Reader]:
        """Send one request; the reply's type and a reader past its request id."""
        self._next += 1
        rid = self._next
        self.send_raw(p.packet(kind, p.u32(rid) + body))
        reply, payload = self.recv()
        reader = p.Reader(payload)
        assert reader.u32() == rid
        return reply, reader

    def path_request(self, kind: int, *paths: bytes) -> tuple[int, p.Reader]:
        return self.request(kind, b"".join(p.string(x) for x in paths))

    def status(self, kind: int, body: bytes) -> int:
        """Send a request that must answer a STATUS; its code."""
        reply, reader = self.request(kind, body)
        assert reply == p.STATUS, reply
        return reader.u32()

    def open(self, path: bytes, flags: int = p.FXF_READ, mode: int | None = None) -> bytes:
        attrs = p.u32(p.ATTR_PERMISSIONS) + p.u32(mode) if mode is not None else p.u32(0)
        reply, reader = self.request(p.OPEN, p.string(path) + p.u32(flags) + attrs)
        if reply == p.STATUS:
            raise FileNotFoundError(reader.u32(), path)
        assert reply == p.HANDLE
        return reader.string()

    def read(self, handle: bytes, offset: int = 0, length: int = 65536) -> bytes | int:
        """The data, or the STATUS code."""
        reply, reader = self.request(p.READ, p.string(handle) + p.u64(offset) + p.u32(length))
        return reader.string() if reply == p.DATA else reader.u32()

    def read_file(self, path: bytes) -> bytes:
        handle = self.open(path)
        data = b""
        while True:
            chunk = self.read(handle, len(data))
            if isinstance(chunk, int):
                assert chunk == p.EOF
                break
            data += chunk
        assert self.status(p.CLOSE, p.string(handle)) == p.OK
        return data

    def write_file(self, path: bytes, data: bytes, mode: int = 0o644) -> None:
        handle = self.open(path, p.FXF_WRITE | p.FXF_CREAT | p.FXF_TRUNC, mode)
        body = p.string(handle) + p.u64(0) + p.string(data)
        assert self.status(p.WRITE, body) == p.OK
        assert self.status(p.CLOSE, p.string(handle)) == p.OK

    def stat(self, path: bytes, kind: int = p.STAT) -> tuple[int, int, int, int] | int:
        """(size, uid, gid, mode) or the STATUS code."""
        reply, reader = self.path_request(kind, path)
        if reply == p.STATUS:
            return reader.u32()
        assert reply == p.ATTRS
        flags = reader.u32()
        assert flags & p.ATTR_SIZE and flags & p.ATTR_UIDGID and flags & p.ATTR_PERMISSIONS
        return reader.u64(), reader.u32(), reader.u32(), reader.u32()

    def listdir(self, path: bytes) -> list[bytes] | int:
        reply, reader = self.path_request(p.OPENDIR, path)
        if reply == p.STATUS:
            return reader.u32()
        handle = reader.string()
        names: list[bytes] = []
        while True:
            reply, reader = self.path_request(p.READDIR, handle)
            if reply == p.STATUS:
                assert reader.u32() == p.EOF
                break
            for _ in range(reader.u32()):
                names.append(reader.string())
                reader.string()
                reader.attrs()
        assert self.status(p.CLOSE, p.string(handle)) == p.OK
        return names

    def name(self, kind: int, path: bytes) -> bytes | int:
        """A one-name reply (REALPATH, READLINK), or the STATUS code."""
        reply, reader = self.path_request(kind, path)
        if reply == p.STATUS:
            return reader.u32()
        assert reply == p.NAME and reader.u32() == 1
        return reader.string()


def start_server(
    source: Path, uid: int, gid: int, *maps: str
) -> tuple[subprocess.Popen[bytes], Client]:
    """The real confined server on a socketpair; ``maps`` are extra argv (``--uid-map H:G``)."""
    ours, theirs = socket.socketpair()
    argv = [sys.executable, "-m", "ketch.host.sftp", str(source), "--uid", str(uid)]
    argv += ["--gid", str(gid), *maps, "--fd", str(theirs.fileno())]
    proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
    theirs.close()
    ours.settimeout(60)
    return proc, Client(ours)


def stop_server(proc: subprocess.Popen[bytes], client: Client) -> bytes:
    """Hang up; the server's stderr once it has exited."""
    client.sock.close()
    _, err = proc.communicate(timeout=60)
    return err


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
