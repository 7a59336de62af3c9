"""SFTP version 3 on the wire (draft-ietf-secsh-filexfer-02), as sshfs speaks it: pure.

Packets are ``uint32 length, byte type, payload``; every request but INIT
starts its payload with a ``uint32`` request id.  :class:`Reader` takes a
payload apart and raises :class:`BadMessage` on anything short or malformed;
the ``encode_*`` helpers build replies.  Paths stay bytes from end to end.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass

VERSION = 3

# Request and reply types.
INIT, VERSION_REPLY = 1, 2
OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME = 11, 12, 13, 14, 15, 16, 17, 18
READLINK, SYMLINK = 19, 20
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
EXTENDED, EXTENDED_REPLY = 200, 201

# Status codes.
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, BAD_MESSAGE = 0, 1, 2, 3, 4, 5
OP_UNSUPPORTED = 8

# Attribute flags.
ATTR_SIZE, ATTR_UIDGID, ATTR_PERMISSIONS, ATTR_ACMODTIME = 0x1, 0x2, 0x4, 0x8
ATTR_EXTENDED = 0x80000000

# Open flags.
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 0x10, 0x20

# Limits: a packet longer than MAX_PACKET is refused and ends the session
# (its length cannot be trusted to skip it); reads are served up to MAX_READ.
MAX_PACKET = 256 * 1024 + 1024
MAX_READ = 256 * 1024
MAX_HANDLES = 512
MAX_PATH = 4096

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class BadMessage(Exception):
    """A request that is short, oversized or malformed."""


@dataclass(frozen=True)
class Attrs:
    """The attributes a client sent (None: not sent)."""

    size: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: int | None = None
    atime: int | None = None
    mtime: int | None = None


class Reader:
    """Reads the fields of one packet's payload, in order."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def u8(self) -> int:
        if self._pos + 1 > len(self._data):
            raise BadMessage("short packet")
        self._pos += 1
        return self._data[self._pos - 1]

    def u32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise BadMessage("short packet")
        (value,) = _U32.unpack_from(self._data, self._pos)
        self._pos += 4
        return int(value)

    def u64(self) -> int:
        if self._pos + 8 > len(self._data):
            raise BadMessage("short packet")
        (value,) = _U64.unpack_from(self._data, self._pos)
        self._pos += 8
        return int(value)

    def string(self) -> bytes:
        size = self.u32()
        if self._pos + size > len(self._data):
            raise BadMessage("string runs past the packet")
        value = self._data[self._pos : self._pos + size]
        self._pos += size
        return value

    def path(self) -> bytes:
        value = self.string()
        if len(value) > MAX_PATH or b"\0" in value:
            raise BadMessage("bad path")
        return value

    def attrs(self) -> Attrs:
        flags = self.u32()
        size = self.u64() if flags & ATTR_SIZE else None
        uid = gid = None
        if flags & ATTR_UIDGID:
            uid, gid = self.u32(), self.u32()
        permissions = self.u32() if flags & ATTR_PERMISSIONS else None
        atime = mtime = None
        if flags & ATTR_ACMODTIME:
            atime, mtime = self.u32(), self.u32()
        if flags & ATTR_EXTENDED:
            for _ in range(self.u32()):
                self.string()
                self.string()
        return Attrs(size, uid, gid, permissions, atime, mtime)


def u32(value: int) -> bytes:
    return _U32.pack(value & 0xFFFFFFFF)


def u64(value: int) -> bytes:
    return _U64.pack(value & 0xFFFFFFFFFFFFFFFF)


def string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def packet(kind: int, payload: bytes) -> bytes:
    """One whole packet: its length, its type, its payload."""
    return _U32.pack(len(payload) + 1) + bytes((kind,)) + payload


def status(request_id: int, code: int, message: str) -> bytes:
    return packet(STATUS, u32(request_id) + u32(code) + string(message.encode()) + string(b""))


def encode_attrs(st: os.stat_result, uid: int, gid: int) -> bytes:
    """The attributes of a stat result, with its ids already mapped for the guest."""
    flags = ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME
    return (
        u32(flags)
        + u64(st.st_size)
        + u32(uid)
        + u32(gid)
        + u32(st.st_mode)
        + u32(int(st.st_atime))
        + u32(int(st.st_mtime))
    )


def encode_statvfs(st: os.statvfs_result) -> bytes:
    """statvfs@openssh.com's reply fields: eleven uint64, in statvfs(3)'s order."""
    fields = (
        st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail, st.f_files,
        st.f_ffree, st.f_favail, st.f_fsid, st.f_flag, st.f_namemax,
    )  # fmt: skip
    return b"".join(u64(v) for v in fields)


def longname(name: bytes, st: os.stat_result, uid: int, gid: int) -> bytes:
    """An ``ls -l`` style line for a READDIR entry (clients show it, sshfs ignores it)."""
    mode = stat.filemode(st.st_mode).encode()
    return b"%s %3d %-8d %-8d %8d %s" % (mode, st.st_nlink, uid, gid, st.st_size, name)


def errno_status(err: OSError) -> int:
    """The SFTP status code for a failed system call, as OpenSSH's sftp-server maps them."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
        return NO_SUCH_FILE
    if err.errno in (errno.EPERM, errno.EACCES, errno.EFAULT):
        return PERMISSION_DENIED
    if err.errno in (errno.ENAMETOOLONG, errno.EINVAL):
        return BAD_MESSAGE
    if err.errno == errno.ENOSYS:
        return OP_UNSUPPORTED
    return FAILURE
