"""What ketchd checks before it trusts a storage root it finds (issue 12, item 6).

The storage root holds users' cloud-init (often with secrets), the private key
ketch logs into guests with, every guest disk and the daemon's socket.  Other
local users must not be able to read any of it, nor plant anything in it.

* ketchd runs with umask 077 (:data:`ketch.layout.UMASK`): everything it, QEMU
  and qemu-img create is 0600 (files) or 0700 (directories).
* At start-up :func:`check_root` refuses, with exit code 2 and the exact
  ``chmod``/``chown`` that fixes it, a root that is owned by another user or
  open to group or others (a root ketchd has just created is 0700 and passes),
  and a socket left in it that another user owns or may write to.
* Entries directly in the root and in each instance directory that another
  user owns are refused the same way; ours that are open to group/others
  (left by an older ketch) are tightened to owner-only, since the 0700 root
  already hides them and tightening loses nothing.  Nothing is followed
  through a symbolic link, and the vault's contents are not touched.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from ketch.errors import KetchError
from ketch.layout import INSTANCES_DIR, Root


class UntrustedRoot(KetchError):
    """The storage root, or something in it, may be read or changed by another user."""

    code = "untrusted-root"


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _owner_hint(path: Path, me: int) -> str:
    return (
        f"it is not yours: 'chown -R {shlex.quote(_user(me))}: {shlex.quote(str(path))}' if it "
        f"should be, or use a storage root of your own (--storage or $KETCH_STORAGE)"
    )


def check_root(root: Root, *, uid: int | None = None) -> list[Path]:
    """Refuse an untrusted root (raise :class:`UntrustedRoot`); return what was tightened."""
    me = os.geteuid() if uid is None else uid
    path = root.path
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedRoot(f"the storage root {path} is not a directory")
    if st.st_uid != me:
        raise UntrustedRoot(
            f"the storage root {path} is owned by {_user(st.st_uid)}, not by {_user(me)}",
            hint=_owner_hint(path, me),
        )
    if st.st_mode & 0o077:
        raise UntrustedRoot(
            f"the storage root {path} is open to other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): they could read cloud-init data, "
            "disks and keys in it",
            hint=f"make it yours alone: chmod 700 {shlex.quote(str(path))}",
        )
    _check_socket(root.socket, me)
    tightened = _tighten_entries(path, me)
    instances = path / INSTANCES_DIR
    if os.path.isdir(instances) and not os.path.islink(instances):
        tightened += _tighten_entries(instances, me)
        for entry in os.scandir(instances):
            if entry.is_dir(follow_symlinks=False):
                tightened += _tighten_entries(Path(entry.path), me)
    return tightened


def _check_socket(sock: Path, me: int) -> None:
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return
    if st.st_uid != me:
        raise UntrustedRoot(
            f"the socket {sock} is owned by {_user(st.st_uid)}, not by {_user(me)}: another "
            "user's ketchd may be serving this storage root",
            hint=f"stop that daemon and remove the socket (rm {shlex.quote(str(sock))}), "
            "or use a storage root of your own (--storage or $KETCH_STORAGE)",
        )
    if st.st_mode & 0o022:
        raise UntrustedRoot(
            f"the socket {sock} may be written by other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"remove it (rm {shlex.quote(str(sock))}); ketchd makes a new one, mode 0600",
        )


def _tighten_entries(directory: Path, me: int) -> list[Path]:
    """Refuse entries of ``directory`` owned by others; drop group/other bits of ours."""
    done: list[Path] = []
    for entry in os.scandir(directory):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            continue  # the socket is checked above; links are never followed
        here = Path(entry.path)
        if st.st_uid != me:
            raise UntrustedRoot(
                f"{here} in the storage root is owned by {_user(st.st_uid)}, not by {_user(me)}",
                hint=_owner_hint(here, me),
            )
        if st.st_mode & 0o077:
            os.chmod(here, stat.S_IMODE(st.st_mode) & 0o700)
            done.append(here)
    return done
