"""Client-side ``ketch transfer``: files and trees between the host and instances, over ssh.

Transfer rules
--------------

* A path is on the host or, written ``NAME:PATH``, in an instance (see
  :mod:`ketch.cli.locations` for how guest paths are read).  ``-`` is
  standard input (as the only source) or standard output (as the
  destination).
* Exactly one side is in an instance: host → instance, or instance(s) →
  host.  Instance to instance is refused (copy through the host).
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

The guest side runs the scripts in :mod:`ketch.cli.transfer_scripts`.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ketch.cli.guest import CHUNK, interrupts_to_child, read_chunk, spawn, write_stderr
from ketch.cli.locations import GuestPath, parse_location, shell_safe
from ketch.cli.transfer_scripts import (
    GET,
    IS_DIR,
    PUT_FILE,
    PUT_TREE,
    check,
    flag_args,
    script_argv,
)
from ketch.errors import GuestError, InvalidArgument, KetchError
from ketch.sshtarget import SshTarget

if TYPE_CHECKING:
    import tarfile


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
        while chunk := read_chunk(fd):
            if len(self.data) < self.LIMIT:
                self.data += chunk
        self.pipe.close()


def _put_stream(target: SshTarget, dst: GuestPath, parents: bool) -> None:
    argv = script_argv(
        target, PUT_FILE, shell_safe(dst.path), "", *flag_args(parents, dst.is_dir_hint)
    )
    proc = spawn(argv, stdin=None, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    drain = _Drain(proc.stderr)
    drain.start()
    returncode = proc.wait()
    drain.join()
    check(target, returncode, bytes(drain.data), f"standard input to {dst.raw}")


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
    flags = flag_args(parents, into_dir or dst.is_dir_hint)
    if not os.path.isdir(src):
        try:
            source = open(src, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise InvalidArgument(f"{src}: {exc.strerror or exc}") from exc
        with source:
            argv = script_argv(target, PUT_FILE, shell_safe(dst.path), name, *flags)
            proc = spawn(argv, stdin=source, stdout=subprocess.DEVNULL)
        assert proc.stderr is not None
        drain = _Drain(proc.stderr)
        drain.start()
        returncode = proc.wait()
        drain.join()
        check(target, returncode, bytes(drain.data), what)
        return
    if not recursive:
        raise InvalidArgument(f"{src}: is a directory", hint="use -r to copy directories")
    import tarfile

    argv = script_argv(target, PUT_TREE, shell_safe(dst.path), name, *flags)
    proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
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
    check(target, returncode, bytes(drain.data), what)


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _get_stream(target: SshTarget, src: GuestPath) -> None:
    _check_has_name(src)
    argv = script_argv(target, GET, src.dirname, src.basename, "0", "0")
    proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=None)
    assert proc.stderr is not None
    drain = _Drain(proc.stderr)
    drain.start()
    with interrupts_to_child():
        returncode = proc.wait()
    drain.join()
    if returncode == IS_DIR:
        raise InvalidArgument(
            f"{src.raw}: is a directory", hint="a directory cannot be written to standard output"
        )
    check(target, returncode, bytes(drain.data), src.raw)


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
    argv = script_argv(target, GET, src.dirname, src.basename, *flag_args(recursive), "1")
    proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
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
        while proc.stdout.read(CHUNK):
            pass
        proc.stdout.close()
        returncode = proc.wait()
        drain.join()
    try:
        if error is not None:
            raise error
        check(target, returncode, bytes(drain.data), what)
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
            while chunk := stream.read(CHUNK):
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
        write_stderr(f"ketch: skipped {name}: {why}\n".encode())

    extract_tree(stream, root, top, new_top, skipped=skipped)


__all__ = ["transfer"]
