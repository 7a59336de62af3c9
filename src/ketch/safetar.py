"""Unpack a tar stream from an untrusted sender (a guest) into a host directory.

``ketch transfer -r GUEST:DIR HOSTDIR`` receives the guest's ``tar -c`` of
``./DIR``.  The guest is not trusted, and neither is :mod:`tarfile`'s own
extraction: its ``data`` filter is bypassable on the Python ketch runs on
(CVE-2025-4517, a chain of long-named symbolic links).  :mod:`tarfile` is
used here only to parse headers; every member is checked and written by
this module:

* a member's name must lie under the one top-level name asked for, without
  ``..`` components and not absolute; it is renamed to the new top name;
* only regular files, directories, symbolic links and hard links are
  accepted: devices, FIFOs, sparse files and anything else are refused;
* a symbolic link's target must be relative, may start with ``..``
  components but has none after a name (a link in the path could make
  ``a/..`` mean anything), and, resolved against the link's own directory,
  must stay inside the copied tree; a link that does not is never made:
  it is refused, or skipped with a warning when the caller passes
  ``skipped`` (the CLI does: a tree with a ``bin/python -> /usr/bin/python3``
  still copies, as it did before this module);
* a hard link may only name a regular file written earlier from the same
  stream;
* nothing is ever followed while writing: every path component is opened
  relative to the destination directory's descriptor with ``O_NOFOLLOW`` and
  ``O_DIRECTORY``, files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under
  a temporary name and renamed over the final name (a rename replaces a link,
  it never writes through it);
* modes keep only the permission bits (no setuid, setgid or sticky), with
  the user's umask applied and the owner always able to read and write;
  files are never chowned to the guest's ids;
* extended headers (long names, pax) are bounded by :data:`MAX_HEADER`,
  names by :data:`MAX_NAME`, the number of members by :data:`MAX_MEMBERS`,
  and a file that would leave less than :data:`RESERVE` (or 5 % of the
  filesystem) free is refused before a byte of it is written.

A refused member raises :class:`~ketch.errors.GuestError` naming it (exit
code 2).  When the top directory did not exist before, what was unpacked of
it is removed again, so a refused stream leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Callable
from typing import IO, Any

from ketch.errors import GuestError

MAX_MEMBERS = 1 << 20
MAX_HEADER = 1 << 20  # bytes of one long-name or pax header
MAX_NAME = 16 << 10  # bytes of one member name or link target
RESERVE = 1 << 30  # free bytes left on the destination (or 5 % of it, when smaller)
_CHUNK = 1 << 16

_EXTENDED = {
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(GuestError):
    """A member of the guest's archive that ketch will not write."""

    code = "archive-refused"


def _refuse(name: str, why: str) -> Refused:
    return Refused(
        f"refused {name!r} from the guest's archive: {why}",
        hint="the guest sent something unsafe; nothing outside the destination was written",
    )


class _BoundedInfo(tarfile.TarInfo):
    """A header parser that refuses oversized extended headers before reading them."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _BoundedInfo:
        # As TarInfo.fromtarfile, with checks before the member's own processing
        # (which reads a long name or pax header whole into memory).
        fileobj: Any = tarfile_.fileobj
        buf = fileobj.read(tarfile.BLOCKSIZE)
        obj = cls.frombuf(buf, tarfile_.encoding or "utf-8", tarfile_.errors)
        obj.offset = fileobj.tell() - tarfile.BLOCKSIZE
        if obj.type in _EXTENDED and obj.size > MAX_HEADER:
            raise _refuse(
                obj.name, f"an extended header of {obj.size} bytes (the limit is {MAX_HEADER})"
            )
        if obj.type == tarfile.GNUTYPE_SPARSE:
            raise _refuse(obj.name, "sparse files are not accepted")
        result: _BoundedInfo = obj._proc_member(tarfile_)  # type: ignore[attr-defined]
        return result

    def _proc_gnusparse_10(self, next: Any, pax_headers: Any, tarfile_: Any) -> None:
        # GNU sparse 1.0 keeps its map in the data, of any length: refuse it unread.
        raise _refuse(self.name, "sparse files are not accepted")


def member_parts(name: str, top: str, new_top: str) -> list[str]:
    """``./top/x/y`` → ``[new_top, "x", "y"]``; anything not under ``top`` is refused."""
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        raise _refuse(name[:80] + "...", f"a name longer than {MAX_NAME} bytes")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/"):
        raise _refuse(name, "an absolute name")
    if ".." in parts:
        raise _refuse(name, "a name with a '..' component")
    if not parts or parts[0] != top:
        raise _refuse(name, f"it is not inside {top!r}")
    return [new_top, *parts[1:]]


def link_problem(parts: list[str], target: str) -> str | None:
    """Why a symbolic link at ``parts`` (``[top, ...]``) to ``target`` is unsafe, or None."""
    if not target:
        return "a symbolic link with an empty target"
    if len(target.encode("utf-8", "surrogateescape")) > MAX_NAME:
        return f"a symbolic link target longer than {MAX_NAME} bytes"
    if target.startswith("/"):
        return f"a symbolic link to the absolute path {target!r}"
    ups = 0
    named = False
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp != "..":
            named = True
        elif named:
            return f"a symbolic link to {target!r}, which has '..' after a name"
        else:
            ups += 1
    if ups > len(parts) - 2:  # the link's directory is len(parts) - 2 levels below the top
        return f"a symbolic link to {target!r}, which leads outside the copied tree"
    return None


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


class _Writer:
    """Writes checked members under ``root_fd``, never following a link."""

    def __init__(
        self, root_fd: int, shown_root: str, skipped: Callable[[str, str], None] | None = None
    ) -> None:
        self.root_fd = root_fd
        self.shown_root = shown_root
        self.skipped = skipped  # called (name, why) for a link not made; None: refuse it
        self.umask = _umask()
        self.files: set[str] = set()  # regular files written from this stream
        self.made_dirs: set[str] = set()

    def _dir(self, parts: list[str], name: str) -> int:
        """A descriptor of the directory ``parts``, created as needed, links refused."""
        fd = os.dup(self.root_fd)
        try:
            for depth, part in enumerate(parts):
                key = "/".join(parts[: depth + 1])
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self.made_dirs.add(key)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _refuse(name, f"{key} is a symbolic link or not a directory") from exc
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _existing(self, parent: int, leaf: str) -> os.stat_result | None:
        try:
            return os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _place(self, parent: int, tmp: str, leaf: str, parts: list[str], name: str) -> None:
        """Rename ``tmp`` over ``leaf`` (both in ``parent``); a directory there is refused."""
        old = self._existing(parent, leaf)
        if old is not None and stat.S_ISDIR(old.st_mode):
            os.unlink(tmp, dir_fd=parent)
            raise _refuse(name, f"{'/'.join(parts)} exists as a directory")
        os.rename(tmp, leaf, src_dir_fd=parent, dst_dir_fd=parent)
        self.files.discard("/".join(parts))

    def directory(self, parts: list[str], mode: int, name: str) -> None:
        key = "/".join(parts)
        fd = self._dir(parts, name)
        try:
            if key in self.made_dirs:
                os.fchmod(fd, (mode & 0o777 & ~self.umask) | 0o700)
        finally:
            os.close(fd)

    def file(self, parts: list[str], member: tarfile.TarInfo, data: IO[bytes], name: str) -> None:
        parent = self._dir(parts[:-1], name)
        try:
            vfs = os.fstatvfs(parent)
            free = vfs.f_bavail * vfs.f_frsize
            reserve = min(RESERVE, vfs.f_blocks * vfs.f_frsize // 20)
            if member.size > free - reserve:
                raise _refuse(
                    name,
                    f"a file of {member.size} bytes; {self.shown_root} has {free} bytes free "
                    f"and ketch leaves {reserve} of them",
                )
            tmp = f".ketch-part-{secrets.token_hex(8)}"
            fd = os.open(tmp, _FILE_FLAGS, 0o600, dir_fd=parent)
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    while chunk := data.read(_CHUNK):
                        out.write(chunk)
                os.fchmod(fd, (member.mode & 0o777 & ~self.umask) | 0o600)
                with contextlib.suppress(OSError, OverflowError, ValueError):
                    os.utime(fd, (member.mtime, member.mtime))
            except BaseException:
                os.close(fd)
                os.unlink(tmp, dir_fd=parent)
                raise
            os.close(fd)
            self._place(parent, tmp, parts[-1], parts, name)
            self.files.add("/".join(parts))
        finally:
            os.close(parent)

    def symlink(self, parts: list[str], target: str, name: str) -> None:
        why = link_problem(parts, target)
        if why is not None:
            if self.skipped is None:
                raise _refuse(name, why)
            self.skipped(name, why)
            return
        parent = self._dir(parts[:-1], name)
        try:
            tmp = f".ketch-part-{secrets.token_hex(8)}"
            os.symlink(target, tmp, dir_fd=parent)
            self._place(parent, tmp, parts[-1], parts, name)
        finally:
            os.close(parent)

    def hardlink(self, parts: list[str], source: list[str], name: str) -> None:
        key = "/".join(source)
        if key not in self.files:
            raise _refuse(name, f"a hard link to {key!r}, which is not a file of this archive")
        src_parent = self._dir(source[:-1], name)
        try:
            st = self._existing(src_parent, source[-1])
            if st is None or not stat.S_ISREG(st.st_mode):
                raise _refuse(name, f"a hard link to {key!r}, which is not a regular file")
            parent = self._dir(parts[:-1], name)
            try:
                tmp = f".ketch-part-{secrets.token_hex(8)}"
                os.link(
                    source[-1],
                    tmp,
                    src_dir_fd=src_parent,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                )
                self._place(parent, tmp, parts[-1], parts, name)
                self.files.add("/".join(parts))
            finally:
                os.close(parent)
        finally:
            os.close(src_parent)


def extract_tree(
    stream: IO[bytes],
    root: str | os.PathLike[str],
    top: str,
    new_top: str,
    *,
    skipped: Callable[[str, str], None] | None = None,
) -> None:
    """Unpack a tar stream of ``./top`` from an untrusted sender as ``root/new_top``.

    Raises :class:`Refused` for an unsafe member and :class:`GuestError` for
    an unreadable archive; see the module documentation for the rules.  With
    ``skipped``, a symbolic link leading outside the tree is not made and
    ``skipped(name, why)`` is called instead of refusing the stream.
    """
    shown = os.fspath(root)
    try:
        root_fd = os.open(shown, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise GuestError(f"cannot open {shown}: {exc.strerror or exc}") from exc
    try:
        existed = _lexists(root_fd, new_top)
        try:
            _unpack(stream, _Writer(root_fd, shown, skipped), top, new_top)
        except BaseException:
            if not existed and _lexists(root_fd, new_top):
                with contextlib.suppress(OSError):
                    shutil.rmtree(new_top, dir_fd=root_fd)
            raise
    finally:
        os.close(root_fd)


def _lexists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _unpack(stream: IO[bytes], writer: _Writer, top: str, new_top: str) -> None:
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedInfo) as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # type: ignore[attr-defined]  # read once: keep no list
                count += 1
                if count > MAX_MEMBERS:
                    raise _refuse(member.name, f"more than {MAX_MEMBERS} members")
                _one(tar, member, writer, top, new_top)
    except GuestError:
        raise
    except tarfile.TarError as exc:
        raise GuestError(f"the guest's archive could not be read: {exc}") from exc
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise GuestError(f"cannot write what the guest sent{where}: {exc.strerror or exc}") from exc


def _one(
    tar: tarfile.TarFile, member: tarfile.TarInfo, writer: _Writer, top: str, new_top: str
) -> None:
    name = member.name
    parts = member_parts(name, top, new_top)
    if member.sparse is not None:
        raise _refuse(name, "sparse files are not accepted")
    if member.isdir():
        writer.directory(parts, member.mode, name)
        return
    if len(parts) == 1:
        raise _refuse(name, f"{top!r} itself must be a directory")
    if member.isreg():
        data = tar.extractfile(member)
        assert data is not None  # a regular member always has a data stream
        writer.file(parts, member, data, name)
    elif member.issym():
        writer.symlink(parts, member.linkname, name)
    elif member.islnk():
        writer.hardlink(parts, member_parts(member.linkname, top, new_top), name)
    else:
        kind = {
            tarfile.CHRTYPE: "a character device",
            tarfile.BLKTYPE: "a block device",
            tarfile.FIFOTYPE: "a FIFO",
        }.get(member.type, f"a member of type {member.type!r}")
        raise _refuse(name, f"{kind} is not accepted")


__all__ = [
    "MAX_HEADER",
    "MAX_MEMBERS",
    "MAX_NAME",
    "RESERVE",
    "Refused",
    "extract_tree",
    "link_problem",
]
