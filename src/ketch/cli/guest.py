"""Client-side guest access: ``ketch exec``, ``ketch shell``, ``ketch transfer``.

The CLI asks the daemon for an instance's :class:`~ketch.model.SshTarget` and
calls these functions, which run the system ``ssh`` (see
:mod:`ketch.host.ssh`).  This module is on the CLI hot path: at import time
it loads only the standard library's light modules and ketch's model, errors
and ssh argv builders (``tarfile`` is imported when a tree is transferred).

Transfer rules
--------------

* An argument ``NAME:PATH`` (NAME an instance name: letters, digits, ``-``)
  is a path in that instance; anything else is a host path (write
  ``./a:b`` for a host file whose name has a colon).  ``-`` is standard
  input (as the only source) or standard output (as the destination).
* Exactly one side is in an instance: host → instance, or instance(s) →
  host.  Instance to instance is refused (copy through the host).
* A guest PATH is used as given, relative to the login user's home; ``NAME:``
  and ``NAME:~`` mean the home directory and a leading ``~/`` is stripped.
  A guest PATH may not contain ``..`` components (refused, not resolved:
  the guest's symlinks could make ``a/..`` mean something else); ``.``
  components and repeated slashes are normalised away.
* Destination like ``cp``: an existing directory (or a destination ending in
  ``/``, or several sources) receives each source under its own name;
  otherwise the destination is the new name.  Missing parent directories
  are an error unless ``-p`` (``--parents``) is given, which creates them.
* Directories need ``-r``.  Trees travel as tar streams: host → guest is
  written by Python's :mod:`tarfile` (GNU format, owner root, which a
  non-root guest user cannot apply anyway) and unpacked by the guest's
  ``tar -x``; guest → host is packed by the guest's ``tar -c`` and unpacked
  by :mod:`ketch.safetar`, which trusts neither the guest nor tarfile's
  filters: an entry outside the one top-level name asked for, with a ``..``
  component, a device, a symbolic link leading outside the copied tree or a
  hard link to anything not in the stream refuses the transfer (exit 2), and
  nothing is written through a link.
* A host file received from the guest is written to a temporary file beside
  its destination and renamed into place once complete.
"""

from __future__ import annotations

import os
import posixpath
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ketch.errors import GuestError, HostKeyMismatch, InvalidArgument, KetchError
from ketch.host.ssh import (
    StderrWatch,
    connection_failure,
    is_host_key_failure,
    remote_command,
    ssh_argv,
    ssh_failure_error,
)
from ketch.model import SshTarget

if TYPE_CHECKING:
    import tarfile

_GUEST_ARG = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*):(.*)\Z", re.DOTALL)
_CHUNK = 1 << 16

# Exit codes of the guest-side scripts below.
_IS_DIR = 90
_NO_DIR = 91
_MISSING = 92

# host -> guest, one file on stdin.  $1 destination, $2 name to use inside a
# directory destination ('' for stdin), $3 make parents, $4 destination must
# be a directory.
_PUT_FILE = """\
t=$1
if [ "$4" = 1 ]; then
  if [ "$3" = 1 ]; then mkdir -p "$t" || exit 1; fi
  [ -d "$t" ] || { echo "$t: no such directory" >&2; exit 91; }
fi
if [ -d "$t" ]; then
  [ -n "$2" ] || { echo "$t: is a directory" >&2; exit 1; }
  t=$t/$2
else
  d=$(dirname "$t")
  if [ "$3" = 1 ]; then mkdir -p "$d" || exit 1; fi
  [ -d "$d" ] || { echo "$d: no such directory" >&2; exit 91; }
fi
exec cat > "$t"
"""

# host -> guest, a tar stream of a directory's contents on stdin; same args.
_PUT_TREE = """\
t=$1
if [ "$4" = 1 ]; then
  if [ "$3" = 1 ]; then mkdir -p "$t" || exit 1; fi
  [ -d "$t" ] || { echo "$t: no such directory" >&2; exit 91; }
fi
if [ -d "$t" ]; then
  t=$t/$2
  [ -d "$t" ] || mkdir "$t" || exit 1
else
  d=$(dirname "$t")
  if [ "$3" = 1 ]; then mkdir -p "$d" || exit 1; fi
  [ -d "$d" ] || { echo "$d: no such directory" >&2; exit 91; }
  mkdir "$t" || exit 1
fi
cd "$t" || exit 1
exec tar -x -f -
"""

# guest -> host.  $1 directory, $2 name in it, $3 recursive allowed, $4 send
# a one-byte header (F: file follows, D: tar stream of ./NAME follows).
_GET = """\
cd "$1" 2>/dev/null || { echo "no such directory" >&2; exit 92; }
if [ -d "$2" ]; then
  [ "$3" = 1 ] || { echo "is a directory" >&2; exit 90; }
  printf D
  exec tar -c -f - "./$2"
fi
[ -e "./$2" ] || { echo "no such file or directory" >&2; exit 92; }
[ "$4" = 1 ] && printf F
exec cat "./$2"
"""


# --- exec and shell ------------------------------------------------------------


def exec_command(target: SshTarget, argv: list[str], *, workdir: str | None) -> int:
    """Run ``argv`` in the guest; return its exit code.

    Standard input and output are handed to ssh as they are (binary safe,
    pipes work); a tty is requested only when both are terminals.  stderr is
    forwarded while ssh's own failure messages are watched for.
    """
    tty = _isatty(0) and _isatty(1)
    remote = remote_command(argv, workdir=workdir)
    return _run_attached(target, ssh_argv(target, remote, tty=tty, batch=True))


def shell(target: SshTarget) -> int:
    """An interactive login shell in the guest (``ssh -t``); its exit code.

    ssh passes window-size changes on by itself.
    """
    return _run_attached(target, ssh_argv(target, None, tty=True, batch=False))


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _run_attached(target: SshTarget, argv: list[str]) -> int:
    proc = _spawn(argv, stdin=None, stdout=None)
    assert proc.stderr is not None
    watch = StderrWatch()
    said = False
    with _interrupts_to_child():
        fd = proc.stderr.fileno()
        while chunk := _read(fd):
            out = watch.feed(chunk)
            said = said or bool(out)
            _write_stderr(out)
        returncode = proc.wait()
    proc.stderr.close()
    out, failure, host_key = watch.finish(returncode)
    _write_stderr(out)
    if host_key:
        raise HostKeyMismatch(target.name)
    if failure is not None:
        raise ssh_failure_error(target, failure)
    if returncode == 255 and not (said or out):
        # ssh logs "server not responding" only at INFO level; say it ourselves.
        _write_stderr(
            f'ketch: the connection to "{target.name}" ended with status 255 and no '
            f"message: the guest may have stopped answering (see 'ketch info "
            f"{target.name}')\n".encode()
        )
    return returncode if returncode >= 0 else 128 - returncode


def _read(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, _CHUNK)
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue


def _write_stderr(data: bytes) -> None:
    if not data:
        return
    try:
        sys.stderr.flush()
        view = memoryview(data)
        while view:
            n = os.write(2, view)
            view = view[n:]
    except OSError:
        pass  # stderr closed: nothing sensible to do


@contextmanager
def _interrupts_to_child() -> Iterator[None]:
    """Ctrl-C reaches ssh (same process group); ketch waits for it to end."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _spawn(
    argv: list[str], *, stdin: int | IO[bytes] | None, stdout: int | IO[bytes] | None
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    except OSError as exc:
        raise GuestError(
            f"cannot run ssh: {exc.strerror or exc}", hint="install the OpenSSH client"
        ) from exc


# --- transfer ------------------------------------------------------------------


@dataclass(frozen=True)
class GuestPath:
    """``NAME:PATH`` from the command line, PATH normalised (see module doc)."""

    name: str
    path: str  # "." for the home directory; never contains ".."
    is_dir_hint: bool  # written with a trailing "/"
    raw: str

    @property
    def dirname(self) -> str:
        return _shell_safe(posixpath.dirname(self.path) or ".")

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


def _shell_safe(path: str) -> str:
    """A path the guest's utilities cannot mistake for an option."""
    return "./" + path if path.startswith("-") else path


def transfer(
    sources: list[str],
    destination: str,
    *,
    resolve: Callable[[str], SshTarget],
    recursive: bool,
    parents: bool,
) -> None:
    """Copy files (and with ``recursive`` directories) between host and guest."""
    if not sources:
        raise InvalidArgument("nothing to transfer", hint="give a source and a destination")
    srcs = [parse_location(s) for s in sources]
    dst = parse_location(destination)
    targets: dict[str, SshTarget] = {}

    def target_of(name: str) -> SshTarget:
        if name not in targets:
            targets[name] = resolve(name)
        return targets[name]

    if isinstance(dst, GuestPath):
        if any(isinstance(s, GuestPath) for s in srcs):
            raise InvalidArgument(
                "cannot transfer from an instance to an instance",
                hint="copy to the host first, then from the host to the other instance",
            )
        if "-" in srcs:
            if len(srcs) != 1:
                raise InvalidArgument("standard input ('-') must be the only source")
            _put_stream(target_of(dst.name), dst, parents)
            return
        local_srcs = [s for s in srcs if isinstance(s, str)]
        for src in local_srcs:  # all checked before the first byte moves
            if not os.path.lexists(src):
                raise InvalidArgument(f"{src}: no such file or directory")
            if os.path.isdir(src) and not recursive:
                raise InvalidArgument(f"{src}: is a directory", hint="use -r to copy directories")
            _local_name(src)
        many = len(local_srcs) > 1
        for src in local_srcs:
            _put(target_of(dst.name), src, dst, recursive=recursive, parents=parents, into_dir=many)
        return

    local = [s for s in srcs if not isinstance(s, GuestPath)]
    if local:
        raise InvalidArgument(
            f"no instance named in {local[0]!r} or the destination {destination!r}",
            hint="write guest paths as NAME:PATH, e.g. 'ketch transfer file.txt myvm:'",
        )
    guest_srcs = [s for s in srcs if isinstance(s, GuestPath)]
    if dst == "-":
        if len(guest_srcs) != 1:
            raise InvalidArgument("only one source can be written to standard output ('-')")
        _get_stream(target_of(guest_srcs[0].name), guest_srcs[0])
        return
    for gsrc in guest_srcs:
        _check_has_name(gsrc)
    many = len(guest_srcs) > 1
    for gsrc in guest_srcs:
        _get(
            target_of(gsrc.name),
            gsrc,
            destination,
            recursive=recursive,
            parents=parents,
            into_dir=many,
        )


class _Drain(threading.Thread):
    """Collects a pipe (ssh's stderr) while the main thread streams data."""

    LIMIT = 1 << 20

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.data = bytearray()

    def run(self) -> None:
        fd = self.pipe.fileno()
        while chunk := _read(fd):
            if len(self.data) < self.LIMIT:
                self.data += chunk
        self.pipe.close()


def _script_argv(target: SshTarget, script: str, *args: str) -> list[str]:
    remote = remote_command(["sh", "-c", script, "ketch", *args])
    return ssh_argv(target, remote, tty=False, batch=True)


def _check(target: SshTarget, returncode: int, stderr: bytes, what: str) -> None:
    """Turn a failed transfer's exit code and stderr into a ketch error."""
    if returncode == 0:
        return
    if is_host_key_failure(returncode, stderr):
        raise HostKeyMismatch(target.name)
    failure = connection_failure(returncode, stderr)
    if failure is not None:
        raise ssh_failure_error(target, failure)
    detail = stderr.decode("utf-8", "replace").strip()
    if returncode == _IS_DIR:
        raise InvalidArgument(f"{what}: is a directory", hint="use -r to copy directories")
    if returncode == _NO_DIR:
        raise InvalidArgument(
            f"{what}: {detail}", hint="use -p to create missing parent directories"
        )
    if returncode == _MISSING:
        raise InvalidArgument(f"{what}: no such file or directory")
    raise GuestError(f"{what}: " + (detail or f"failed in the guest (exit {returncode})"))


def _flags(*values: bool) -> list[str]:
    return ["1" if v else "0" for v in values]


def _put_stream(target: SshTarget, dst: GuestPath, parents: bool) -> None:
    argv = _script_argv(
        target, _PUT_FILE, _shell_safe(dst.path), "", *_flags(parents, dst.is_dir_hint)
    )
    proc = _spawn(argv, stdin=None, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    drain = _Drain(proc.stderr)
    drain.start()
    returncode = proc.wait()
    drain.join()
    _check(target, returncode, bytes(drain.data), f"standard input to {dst.raw}")


def _local_name(src: str) -> str:
    name = os.path.basename(os.path.abspath(src))
    if not name:
        raise InvalidArgument(f"cannot copy {src!r} as a whole", hint="name what is inside it")
    return name


def _put(
    target: SshTarget, src: str, dst: GuestPath, *, recursive: bool, parents: bool, into_dir: bool
) -> None:
    what = f"{src} to {dst.raw}"
    name = _local_name(src)
    flags = _flags(parents, into_dir or dst.is_dir_hint)
    if not os.path.isdir(src):
        try:
            source = open(src, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise InvalidArgument(f"{src}: {exc.strerror or exc}") from exc
        with source:
            argv = _script_argv(target, _PUT_FILE, _shell_safe(dst.path), name, *flags)
            proc = _spawn(argv, stdin=source, stdout=subprocess.DEVNULL)
        assert proc.stderr is not None
        drain = _Drain(proc.stderr)
        drain.start()
        returncode = proc.wait()
        drain.join()
        _check(target, returncode, bytes(drain.data), what)
        return
    if not recursive:
        raise InvalidArgument(f"{src}: is a directory", hint="use -r to copy directories")
    import tarfile

    argv = _script_argv(target, _PUT_TREE, _shell_safe(dst.path), name, *flags)
    proc = _spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stderr is not None
    drain = _Drain(proc.stderr)
    drain.start()
    local_error: OSError | None = None
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for entry in sorted(os.listdir(src)):
                tar.add(os.path.join(src, entry), arcname=entry, filter=_as_root)
    except BrokenPipeError:
        pass  # the guest side stopped reading; its stderr says why
    except OSError as exc:
        local_error = exc
        proc.kill()
    finally:
        with suppress(BrokenPipeError):
            proc.stdin.close()
    returncode = proc.wait()
    drain.join()
    if local_error is not None:
        raise KetchError(
            f"cannot read {local_error.filename or src}: {local_error.strerror or local_error}"
        )
    _check(target, returncode, bytes(drain.data), what)


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _get_stream(target: SshTarget, src: GuestPath) -> None:
    _check_has_name(src)
    argv = _script_argv(target, _GET, src.dirname, src.basename, "0", "0")
    proc = _spawn(argv, stdin=subprocess.DEVNULL, stdout=None)
    assert proc.stderr is not None
    drain = _Drain(proc.stderr)
    drain.start()
    with _interrupts_to_child():
        returncode = proc.wait()
    drain.join()
    if returncode == _IS_DIR:
        raise InvalidArgument(
            f"{src.raw}: is a directory", hint="a directory cannot be written to standard output"
        )
    _check(target, returncode, bytes(drain.data), src.raw)


def _check_has_name(src: GuestPath) -> None:
    if src.basename in ("", "."):
        raise InvalidArgument(
            f"cannot copy {src.raw!r} as a whole",
            hint=f"name a file or directory inside it, e.g. {src.name}:DIR",
        )


def _get(
    target: SshTarget,
    src: GuestPath,
    destination: str,
    *,
    recursive: bool,
    parents: bool,
    into_dir: bool,
) -> None:
    _check_has_name(src)
    dst = Path(destination)
    as_dir = into_dir or destination.endswith("/") or dst.is_dir()
    parent = dst if as_dir else dst.parent
    final = dst / src.basename if as_dir else dst
    if not parent.is_dir():
        if not parents:
            raise InvalidArgument(
                f"{parent}: no such directory", hint="use -p to create missing parent directories"
            )
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KetchError(f"cannot create {parent}: {exc.strerror or exc}") from exc

    what = f"{src.raw} to {destination}"
    argv = _script_argv(target, _GET, src.dirname, src.basename, *_flags(recursive), "1")
    proc = _spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    drain = _Drain(proc.stderr)
    drain.start()
    error: BaseException | None = None
    partial: Path | None = None
    kind = b""
    try:
        kind = proc.stdout.read(1)
        if kind == b"F":
            if final.is_dir():
                raise InvalidArgument(f"{final}: is a directory")
            partial = _receive_file(proc.stdout, final)
        elif kind == b"D":
            if final.exists() and not final.is_dir():
                raise InvalidArgument(f"{final}: exists and is not a directory")
            _receive_tree(proc.stdout, parent, src.basename, final.name)
        elif kind:
            raise GuestError(f"{what}: the guest answered something unexpected")
    except BaseException as exc:
        error = exc
        proc.kill()
    finally:
        while proc.stdout.read(_CHUNK):
            pass
        proc.stdout.close()
        returncode = proc.wait()
        drain.join()
    try:
        if error is not None:
            raise error
        _check(target, returncode, bytes(drain.data), what)
        if not kind:
            raise GuestError(f"{what}: the guest sent nothing")
        if partial is not None:
            os.replace(partial, final)
            partial = None
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)


def _receive_file(stream: IO[bytes], final: Path) -> Path:
    """Write ``stream`` to a temporary file beside ``final``; return its path."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".ketch-part", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _receive_tree(stream: IO[bytes], root: Path, top: str, new_top: str) -> None:
    """Unpack a guest tar stream of ``./top`` as ``root/new_top`` (see :mod:`ketch.safetar`).

    A symbolic link that leads outside the copied tree is not made: it is
    skipped with a warning, as before; everything else unsafe is refused.
    """
    from ketch.safetar import extract_tree

    def skipped(name: str, why: str) -> None:
        _write_stderr(f"ketch: skipped {name}: {why}\n".encode())

    extract_tree(stream, root, top, new_top, skipped=skipped)


__all__ = [
    "GuestPath",
    "exec_command",
    "parse_location",
    "shell",
    "transfer",
]
