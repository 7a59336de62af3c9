"""The SFTP v3 request loop: one client on one file descriptor, until it hangs up.

It runs already confined (``confine``): its ``/`` is the mount's SOURCE, so the
kernel resolves every path and every symlink inside SOURCE.  On top of that
each client path is normalised here (``..`` cannot climb above ``/``), files
that are not regular cannot be opened, and everything is bounded: a packet
longer than :data:`~protocol.MAX_PACKET` ends the session, reads are served up
to :data:`~protocol.MAX_READ`, at most :data:`~protocol.MAX_HANDLES` handles
are open.  Ids in attributes are mapped host → guest on the way out and guest
→ host on the way in (:class:`IdMapper`).  Everything this module needs is
imported at its top, before the confinement takes the host's filesystem away.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from ketch.host.sftp import protocol as p
from ketch.host.sftp.protocol import BadMessage, Reader

_EXTENSIONS = (
    (b"posix-rename@openssh.com", b"1"),
    (b"statvfs@openssh.com", b"2"),
    (b"fstatvfs@openssh.com", b"2"),
    (b"hardlink@openssh.com", b"1"),
    (b"fsync@openssh.com", b"1"),
)
_READDIR_BATCH = 100


@dataclass(frozen=True)
class IdMapper:
    """Host ↔ guest id maps; an id without a mapping passes through unchanged."""

    uids: dict[int, int] = field(default_factory=dict)  # host → guest
    gids: dict[int, int] = field(default_factory=dict)

    def guest_uid(self, host: int) -> int:
        return self.uids.get(host, host)

    def guest_gid(self, host: int) -> int:
        return self.gids.get(host, host)

    def host_uid(self, guest: int) -> int:
        return next((h for h, g in self.uids.items() if g == guest), guest)

    def host_gid(self, guest: int) -> int:
        return next((h for h, g in self.gids.items() if g == guest), guest)


def normalise(path: bytes) -> bytes:
    """A client path made absolute with ``.`` and ``..`` resolved lexically, never above ``/``."""
    parts: list[bytes] = []
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return b"/" + b"/".join(parts)


@dataclass
class _Handle:
    fd: int
    directory: bool
    entries: list[bytes] | None = None


class _Closed(Exception):
    """The client hung up (or sent a packet that ends the session)."""


class Server:
    """Serves one SFTP client on ``fd`` (a socket or a pipe pair's read and write ends)."""

    def __init__(self, rfd: int, wfd: int, ids: IdMapper) -> None:
        self._rfd, self._wfd, self._ids = rfd, wfd, ids
        self._buf = bytearray()
        self._handles: dict[bytes, _Handle] = {}
        self._next_handle = 0
        self._handlers: dict[int, Callable[[int, Reader], bytes]] = {
            p.OPEN: self._open,
            p.CLOSE: self._close,
            p.READ: self._read,
            p.WRITE: self._write,
            p.LSTAT: lambda rid, r: self._attrs(rid, os.lstat(self._path(r))),
            p.STAT: lambda rid, r: self._attrs(rid, os.stat(self._path(r))),
            p.FSTAT: lambda rid, r: self._attrs(rid, os.fstat(self._handle(r).fd)),
            p.SETSTAT: self._setstat,
            p.FSETSTAT: self._fsetstat,
            p.OPENDIR: self._opendir,
            p.READDIR: self._readdir,
            p.REMOVE: lambda rid, r: self._call(rid, os.unlink, self._path(r)),
            p.MKDIR: self._mkdir,
            p.RMDIR: lambda rid, r: self._call(rid, os.rmdir, self._path(r)),
            p.REALPATH: self._realpath,
            p.RENAME: self._rename,
            p.READLINK: self._readlink,
            p.SYMLINK: self._symlink,
            p.EXTENDED: self._extended,
        }

    # -- the loop -----------------------------------------------------------

    def serve(self) -> None:
        """Answer requests until the client hangs up; then close every handle."""
        try:
            kind, payload = self._recv()
            if kind != p.INIT:
                return
            reply = p.u32(p.VERSION) + b"".join(p.string(n) + p.string(d) for n, d in _EXTENSIONS)
            self._send(p.packet(p.VERSION_REPLY, reply))
            while True:
                kind, payload = self._recv()
                self._send(self.handle(kind, payload))
        except _Closed:
            pass
        finally:
            for handle in self._handles.values():
                os.close(handle.fd)
            self._handles.clear()

    def handle(self, kind: int, payload: bytes) -> bytes:
        """The reply to one request."""
        reader = Reader(payload)
        try:
            rid = reader.u32()
        except BadMessage:
            return p.status(0, p.BAD_MESSAGE, "no request id")
        handler = self._handlers.get(kind)
        if handler is None:
            return p.status(rid, p.OP_UNSUPPORTED, "unsupported request")
        try:
            return handler(rid, reader)
        except BadMessage as exc:
            return p.status(rid, p.BAD_MESSAGE, str(exc))
        except OSError as exc:
            return p.status(rid, p.errno_status(exc), os.strerror(exc.errno or errno.EIO))
        except (ValueError, OverflowError) as exc:
            return p.status(rid, p.BAD_MESSAGE, str(exc))

    def _recv(self) -> tuple[int, bytes]:
        header = self._take(4)
        length = int.from_bytes(header, "big")
        if length < 5 or length > p.MAX_PACKET:
            # Its length cannot be trusted to skip it: answer what can be read, then hang up.
            rest = self._take_available(5)
            rid = int.from_bytes(rest[1:5], "big") if len(rest) == 5 else 0
            self._send(p.status(rid, p.BAD_MESSAGE, "packet length out of bounds"))
            raise _Closed
        body = self._take(length)
        return body[0], bytes(body[1:])

    def _fill(self) -> bool:
        chunk = os.read(self._rfd, 65536)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def _take(self, size: int) -> bytes:
        while len(self._buf) < size:
            if not self._fill():
                raise _Closed
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def _take_available(self, size: int) -> bytes:
        while len(self._buf) < size and self._fill():
            pass
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self._wfd, view)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise _Closed from exc
            view = view[sent:]

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _path(reader: Reader) -> bytes:
        return normalise(reader.path())

    def _handle(self, reader: Reader, directory: bool = False) -> _Handle:
        handle = self._handles.get(reader.string())
        if handle is None or handle.directory != directory:
            raise OSError(errno.EBADF, "invalid handle")
        return handle

    def _new_handle(self, handle: _Handle) -> bytes:
        self._next_handle += 1
        key = b"%d" % self._next_handle
        self._handles[key] = handle
        return key

    def _check_room(self) -> None:
        if len(self._handles) >= p.MAX_HANDLES:
            raise OSError(errno.EMFILE, "too many open handles")

    @staticmethod
    def _done(rid: int) -> bytes:
        return p.status(rid, p.OK, "Success")

    @staticmethod
    def _call(rid: int, call: Callable[[bytes], None], path: bytes) -> bytes:
        call(path)
        return p.status(rid, p.OK, "Success")

    def _encode_attrs(self, st: os.stat_result) -> bytes:
        return p.encode_attrs(st, self._ids.guest_uid(st.st_uid), self._ids.guest_gid(st.st_gid))

    def _attrs(self, rid: int, st: os.stat_result) -> bytes:
        return p.packet(p.ATTRS, p.u32(rid) + self._encode_attrs(st))

    def _name(self, rid: int, name: bytes) -> bytes:
        return p.packet(p.NAME, p.u32(rid) + p.u32(1) + p.string(name) * 2 + p.u32(0))

    # -- requests -----------------------------------------------------------

    def _open(self, rid: int, r: Reader) -> bytes:
        path, pflags, attrs = self._path(r), r.u32(), r.attrs()
        self._check_room()
        rw = pflags & (p.FXF_READ | p.FXF_WRITE)
        flags = {p.FXF_WRITE: os.O_WRONLY, p.FXF_READ | p.FXF_WRITE: os.O_RDWR}.get(rw, os.O_RDONLY)
        for bit, flag in (
            (p.FXF_APPEND, os.O_APPEND),
            (p.FXF_CREAT, os.O_CREAT),
            (p.FXF_TRUNC, os.O_TRUNC),
            (p.FXF_EXCL, os.O_EXCL),
        ):
            if pflags & bit:
                flags |= flag
        mode = attrs.permissions & 0o7777 if attrs.permissions is not None else 0o666
        # O_NONBLOCK: opening a FIFO must not hang the server; only regular files are served.
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, mode)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EACCES, "not a regular file")
        os.set_blocking(fd, True)
        return p.packet(p.HANDLE, p.u32(rid) + p.string(self._new_handle(_Handle(fd, False))))

    def _close(self, rid: int, r: Reader) -> bytes:
        key = r.string()
        handle = self._handles.pop(key, None)
        if handle is None:
            raise OSError(errno.EBADF, "invalid handle")
        os.close(handle.fd)
        return self._done(rid)

    def _read(self, rid: int, r: Reader) -> bytes:
        handle, offset, length = self._handle(r), r.u64(), r.u32()
        data = os.pread(handle.fd, min(length, p.MAX_READ), offset)
        if not data:
            return p.status(rid, p.EOF, "End of file")
        return p.packet(p.DATA, p.u32(rid) + p.string(data))

    def _write(self, rid: int, r: Reader) -> bytes:
        handle, offset, data = self._handle(r), r.u64(), r.string()
        view = memoryview(data)
        while view:
            written = os.pwrite(handle.fd, view, offset)
            view, offset = view[written:], offset + written
        return self._done(rid)

    def _apply(self, target: int | bytes, attrs: p.Attrs) -> None:
        follow = not isinstance(target, int)
        if attrs.size is not None:
            os.truncate(target, attrs.size)
        if attrs.uid is not None and attrs.gid is not None:
            uid, gid = self._ids.host_uid(attrs.uid), self._ids.host_gid(attrs.gid)
            if isinstance(target, int):
                os.fchown(target, uid, gid)
            else:
                os.chown(target, uid, gid, follow_symlinks=follow)
        if attrs.permissions is not None:
            os.chmod(target, attrs.permissions & 0o7777)
        if attrs.atime is not None and attrs.mtime is not None:
            os.utime(target, (attrs.atime, attrs.mtime))

    def _setstat(self, rid: int, r: Reader) -> bytes:
        path = self._path(r)
        self._apply(path, r.attrs())
        return self._done(rid)

    def _fsetstat(self, rid: int, r: Reader) -> bytes:
        key = r.string()
        handle = self._handles.get(key)
        if handle is None:
            raise OSError(errno.EBADF, "invalid handle")
        self._apply(handle.fd, r.attrs())
        return self._done(rid)

    def _opendir(self, rid: int, r: Reader) -> bytes:
        path = self._path(r)
        self._check_room()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            entries: list[bytes] = [b".", b"..", *(os.fsencode(n) for n in os.listdir(fd))]
        except OSError:
            os.close(fd)
            raise
        entries.reverse()  # popped from the end, so served in listing order
        handle = _Handle(fd, True, entries)
        return p.packet(p.HANDLE, p.u32(rid) + p.string(self._new_handle(handle)))

    def _readdir(self, rid: int, r: Reader) -> bytes:
        handle = self._handle(r, directory=True)
        entries = handle.entries if handle.entries is not None else []
        out: list[bytes] = []
        while entries and len(out) < _READDIR_BATCH:
            name = entries.pop()
            try:
                st = os.lstat(name, dir_fd=handle.fd)
            except OSError:
                continue  # gone since the listing
            uid, gid = self._ids.guest_uid(st.st_uid), self._ids.guest_gid(st.st_gid)
            out.append(p.string(name) + p.string(p.longname(name, st, uid, gid)))
            out.append(p.encode_attrs(st, uid, gid))
        if not out:
            return p.status(rid, p.EOF, "End of directory")
        return p.packet(p.NAME, p.u32(rid) + p.u32(len(out) // 2) + b"".join(out))

    def _mkdir(self, rid: int, r: Reader) -> bytes:
        path, attrs = self._path(r), r.attrs()
        mode = attrs.permissions & 0o7777 if attrs.permissions is not None else 0o777
        os.mkdir(path, mode)
        return self._done(rid)

    def _realpath(self, rid: int, r: Reader) -> bytes:
        return self._name(rid, normalise(posixpath.realpath(self._path(r))))

    def _rename(self, rid: int, r: Reader) -> bytes:
        old, new = self._path(r), self._path(r)
        # SFTP v3's rename does not replace (OpenSSH: link then unlink; rename for the rest).
        if os.path.lexists(new):
            raise OSError(errno.EEXIST, "target exists")
        os.rename(old, new)
        return self._done(rid)

    def _readlink(self, rid: int, r: Reader) -> bytes:
        return self._name(rid, os.readlink(self._path(r)))

    def _symlink(self, rid: int, r: Reader) -> bytes:
        # OpenSSH's (and so sshfs's) order: the link's target first, then the link's path.
        # The target is stored as given: it resolves inside SOURCE here, whatever it says.
        target, link = r.path(), self._path(r)
        os.symlink(target, link)
        return self._done(rid)

    def _extended(self, rid: int, r: Reader) -> bytes:
        name = r.string()
        if name == b"posix-rename@openssh.com":
            os.rename(self._path(r), self._path(r))
            return self._done(rid)
        if name == b"hardlink@openssh.com":
            os.link(self._path(r), self._path(r), follow_symlinks=False)
            return self._done(rid)
        if name == b"fsync@openssh.com":
            os.fsync(self._handle(r).fd)
            return self._done(rid)
        if name == b"statvfs@openssh.com":
            return self._statvfs(rid, os.statvfs(self._path(r)))
        if name == b"fstatvfs@openssh.com":
            key = r.string()
            handle = self._handles.get(key)
            if handle is None:
                raise OSError(errno.EBADF, "invalid handle")
            return self._statvfs(rid, os.fstatvfs(handle.fd))
        return p.status(rid, p.OP_UNSUPPORTED, "unsupported extension")

    @staticmethod
    def _statvfs(rid: int, st: os.statvfs_result) -> bytes:
        return p.packet(p.EXTENDED_REPLY, p.u32(rid) + p.encode_statvfs(st))


def serve(rfd: int, wfd: int, ids: IdMapper) -> int:
    """Serve one client; the process's exit status (0 when the client hung up)."""
    try:
        Server(rfd, wfd, ids).serve()
    except OSError as exc:
        sys.stderr.write(f"ketch sftp: {exc}\n")
        return 2
    return 0
