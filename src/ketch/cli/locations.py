"""``NAME:PATH`` arguments of ``ketch transfer``: which side a path is on, and normalised.

* An argument ``NAME:PATH`` (NAME an instance name: letters, digits, ``-``)
  is a path in that instance; anything else is a host path (write
  ``./a:b`` for a host file whose name has a colon).
* A guest PATH is used as given, relative to the login user's home; ``NAME:``
  and ``NAME:~`` mean the home directory and a leading ``~/`` is stripped.
  A guest PATH may not contain ``..`` components (refused, not resolved:
  the guest's symlinks could make ``a/..`` mean something else); ``.``
  components and repeated slashes are normalised away.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from ketch.errors import InvalidArgument

_GUEST_ARG = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*):(.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class GuestPath:
    """``NAME:PATH`` from the command line, PATH normalised (see module doc)."""

    name: str
    path: str  # "." for the home directory; never contains ".."
    is_dir_hint: bool  # written with a trailing "/"
    raw: str

    @property
    def dirname(self) -> str:
        return shell_safe(posixpath.dirname(self.path) or ".")

    @property
    def basename(self) -> str:
        return posixpath.basename(self.path)


def parse_location(arg: str) -> GuestPath | str:
    """A ``NAME:PATH`` argument as a :class:`GuestPath`; anything else unchanged."""
    match = _GUEST_ARG.match(arg)
    if match is None:
        if not arg:
            raise InvalidArgument("an empty path was given")
        return arg
    name, path = match.group(1), match.group(2)
    if "\0" in path:
        raise InvalidArgument(f"guest path {arg!r} contains a NUL byte")
    if path in ("", "~"):
        path = "."
    elif path.startswith("~/"):
        path = path[2:] or "."
    if ".." in path.split("/"):
        raise InvalidArgument(
            f"guest path {arg!r} contains '..'",
            hint="name the guest path without '..' (relative paths start in the home directory)",
        )
    is_dir = path.endswith("/")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return GuestPath(name, norm, is_dir, arg)


def shell_safe(path: str) -> str:
    """A path the guest's utilities cannot mistake for an option."""
    return "./" + path if path.startswith("-") else path


__all__ = ["GuestPath", "parse_location", "shell_safe"]
