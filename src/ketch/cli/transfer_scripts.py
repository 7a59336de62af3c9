"""The guest-side shell scripts of ``ketch transfer``, and what their exit codes mean.

Each runs as ``sh -c SCRIPT ketch ARGS...`` over ssh (:func:`script_argv`);
:func:`check` turns a failed run's exit code and stderr into a ketch error.
"""

from __future__ import annotations

from ketch.errors import GuestError, HostKeyMismatch, InvalidArgument
from ketch.host.ssh import (
    connection_failure,
    is_host_key_failure,
    remote_command,
    ssh_argv,
    ssh_failure_error,
)
from ketch.sshtarget import SshTarget

# Exit codes of the guest-side scripts below.
IS_DIR = 90
NO_DIR = 91
MISSING = 92

# host -> guest, one file on stdin.  $1 destination, $2 name to use inside a
# directory destination ('' for stdin), $3 make parents, $4 destination must
# be a directory.
PUT_FILE = """\
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
PUT_TREE = """\
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
GET = """\
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


def script_argv(target: SshTarget, script: str, *args: str) -> list[str]:
    remote = remote_command(["sh", "-c", script, "ketch", *args])
    return ssh_argv(target, remote, tty=False, batch=True)


def check(target: SshTarget, returncode: int, stderr: bytes, what: str) -> None:
    """Turn a failed transfer's exit code and stderr into a ketch error."""
    if returncode == 0:
        return
    if is_host_key_failure(returncode, stderr):
        raise HostKeyMismatch(target.name)
    failure = connection_failure(returncode, stderr)
    if failure is not None:
        raise ssh_failure_error(target, failure)
    detail = stderr.decode("utf-8", "replace").strip()
    if returncode == IS_DIR:
        raise InvalidArgument(f"{what}: is a directory", hint="use -r to copy directories")
    if returncode == NO_DIR:
        raise InvalidArgument(
            f"{what}: {detail}", hint="use -p to create missing parent directories"
        )
    if returncode == MISSING:
        raise InvalidArgument(f"{what}: no such file or directory")
    raise GuestError(f"{what}: " + (detail or f"failed in the guest (exit {returncode})"))


def flag_args(*values: bool) -> list[str]:
    return ["1" if v else "0" for v in values]


__all__ = [
    "GET",
    "IS_DIR",
    "MISSING",
    "NO_DIR",
    "PUT_FILE",
    "PUT_TREE",
    "check",
    "flag_args",
    "script_argv",
]
