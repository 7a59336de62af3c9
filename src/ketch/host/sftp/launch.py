"""The argv of a classic mount's two sides (pure): the host supervisor and the guest's sshfs.

The supervisor (``python -m ketch.host.sftp``, see ``__main__``) runs
detached, with a pid file and a log in the instance directory; a new ketchd
finds it again by that pid file and :func:`is_supervisor` on its cmdline.
The guest side runs as root through ``sudo``: it loads ``fuse``, lazily
unmounts a dead sshfs left at the target, creates the target and runs
``sshfs -o slave`` on the SFTP stream ssh carries (:data:`SSHFS_OPTIONS`).
Over a virtio-serial port instead (``host/mountport.py``), the supervisor
connects to the port's host socket and the guest's script
(:func:`guest_port_argv`) starts sshfs in the background on the port's
``/dev/vportNpM``, found by its name (:data:`PORT_LOOKUP`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

MODULE = "ketch.host.sftp"

#: sshfs's options.  ``slave``: SFTP over stdin/stdout.  ``allow_other``: the
#: guest's users, not only root (sshfs runs under sudo), see the files; access
#: is decided by the host side, which runs as the mapped host user.
#: ``dir_cache=yes`` and ``auto_cache`` (the kernel keeps file pages while the
#: host's size and mtime say the file is unchanged: an edit on the host is
#: seen on the next open, which ``kernel_cache`` would not promise).  Reads
#: and writes of 256 KiB (sshfs's default is 32 KiB), the host side's cap.
SSHFS_OPTIONS = (
    "slave",
    "allow_other",
    "dir_cache=yes",
    "auto_cache",
    "max_read=262144",
    "max_write=262144",
)

#: The environment variable that carries the target to the guest's scripts as
#: /proc/mounts and mountinfo spell it (octal escapes: :func:`escape_mount_path`); awk
#: takes ``ENVIRON`` as it is, where ``-v`` would undo the escapes.  $1 is the target
#: as it is, for the commands that take a path.
MOUNT_AT = "KETCH_MOUNT_AT"


def clear_script(mounts: str = "/proc/mounts") -> str:
    """Ends what an earlier host side left at the target ($1; $2 is its mount key): the
    sshfs it ran (its pid kept in /run/ketch-mount-KEY.pid; it may still be on its way
    out, and would unmount a new one: libfuse unmounts by path), then its dead mount,
    lazily, while ``mounts`` (the guest's /proc/mounts, or a test's) shows an sshfs
    there.  Bounded, and every step is said on stderr (the mount's log)."""
    return (
        'f="/run/ketch-mount-$2.pid"; '
        'if [ -f "$f" ]; then p=$(cat "$f"); '
        'if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = sshfs ]; then '
        'echo "ketch-mount: $(date +%T) ending sshfs $p" >&2; kill -9 "$p"; fi; rm -f "$f"; fi; '
        "i=0; while [ $i -lt 8 ] && "
        f"awk '$2 == ENVIRON[\"{MOUNT_AT}\"] && $3 ~ /sshfs/ {{ f = 1 }} END {{ exit !f }}' "
        f"{mounts}; "
        'do echo "ketch-mount: $(date +%T) unmounting $1" >&2; umount -l "$1"; i=$((i + 1)); '
        "done; "
    )


#: The guest's :func:`clear_script`.
CLEAR_SCRIPT = clear_script()

#: The guest's script: $1 is the target, $2 its key.  Never fails on a missing module
#: (the kernel may have FUSE built in, as Ubuntu's does).  ``exec`` keeps the pid.
GUEST_SCRIPT = (
    "modprobe fuse 2>/dev/null; "
    + CLEAR_SCRIPT
    + 'mkdir -p -- "$1" && echo $$ > "/run/ketch-mount-$2.pid" && '
    + 'echo "ketch-mount: $(date +%T) mounting $1 ($$)" >&2 && exec sshfs -o '
    + ",".join(SSHFS_OPTIONS)
    + ' :/ "$1"'
)


#: Sets ``d`` to the device (``vportNpM``) of the virtio-serial port named $3, waiting a
#: little for a port just plugged in (no udev needed: sysfs and devtmpfs).  ``{sysfs}`` is
#: /sys/class/virtio-ports and ``{tries}`` 20 (half a second apart) in the guest.
PORT_LOOKUP = (
    'd=""; i=0; while [ -z "$d" ] && [ $i -lt {tries} ]; do '
    'for n in {sysfs}/*/name; do [ -f "$n" ] && [ "$(cat "$n")" = "$3" ] && '
    'd=$(basename "$(dirname "$n")"); done; '
    '[ -n "$d" ] || sleep 0.5; i=$((i + 1)); done; '
)

#: The guest's script over a virtio-serial port: $1 the target, $2 its key, $3 the port's
#: name.  sshfs runs in the background (its own session; stderr in /run/ketch-mount-KEY.log)
#: with stdin and stdout on the port, opened once (a port takes one opener: EBUSY); its pid
#: in /run/ketch-mount-KEY.pid, as over ssh.
GUEST_PORT_SCRIPT = (
    "modprobe fuse 2>/dev/null; "
    + CLEAR_SCRIPT
    + PORT_LOOKUP.format(sysfs="/sys/class/virtio-ports", tries=20)
    + 'if [ -z "$d" ] || [ ! -c "/dev/$d" ]; then echo "ketch-mount: no port $3" >&2; exit 4; fi; '
    + 'mkdir -p -- "$1" || exit 5; '
    + 'echo "ketch-mount: $(date +%T) mounting $1 over /dev/$d" >&2; '
    + 'l="/run/ketch-mount-$2.log"; s=""; command -v setsid >/dev/null && s=setsid; '
    + "$s sshfs -o "
    + ",".join(SSHFS_OPTIONS)
    + ' :/ "$1" 0<>"/dev/$d" 1>&0 2>>"$l" & echo $! > "/run/ketch-mount-$2.pid"'
)


#: The read-ahead of a mount's FUSE device in the guest, in KiB (the kernel's default
#: is 128).  Under TCG the guest's CPU bounds a classic mount's reads: every request
#: costs the guest a round of virtio and FUSE work, and 128 KiB requests kept it busy
#: with that rather than with data (a 64 MiB read: 7.9 s at 128 KiB, 4.3 s at 4 MiB,
#: the guest's CPU at 100% both times; docs/benchmarks.md).  The kernel starts a
#: window small and grows it on sequential reads only, so random reads are not hurt.
READ_AHEAD_KB = 4096


def tune_script(mountinfo: str = "/proc/self/mountinfo", bdi: str = "/sys/class/bdi") -> str:
    """The script that sets the read-ahead of the sshfs mounted at $1 to $2 KiB, reading
    ``mountinfo`` and writing under ``bdi`` (the guest's files, or a test's); the target
    is found by :data:`MOUNT_AT`.  Says on stderr when there is no such mount.
    """
    return (
        f'd=$(awk \'$5 == ENVIRON["{MOUNT_AT}"] && / - fuse\\.sshfs / {{ d = $3 }} '
        f"END {{ print d }}' {mountinfo}); "
        f'if [ -n "$d" ] && [ -w "{bdi}/$d/read_ahead_kb" ]; then '
        f'echo "$2" > "{bdi}/$d/read_ahead_kb"; '
        'else echo "ketch-mount: no sshfs at $1 to tune" >&2; fi'
    )


#: The guest's tune script (:func:`guest_tune_argv`).
TUNE_SCRIPT = tune_script()


def escape_mount_path(path: str) -> str:
    """A path as /proc/mounts and mountinfo spell it (space, tab, newline, backslash as
    octal escapes; :func:`_unescape` undoes it)."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def guest_sh(script: str, name: str, target: str, *rest: str) -> list[str]:
    """A guest script run as root: ``sh -c SCRIPT NAME TARGET REST…``, with the target
    also in :data:`MOUNT_AT`, escaped."""
    at = f"{MOUNT_AT}={escape_mount_path(target)}"
    return ["sudo", "-n", "env", at, "sh", "-c", script, name, target, *rest]


def guest_tune_argv(target: str) -> list[str]:
    """Raise the read-ahead of the sshfs mounted at ``target`` to :data:`READ_AHEAD_KB`."""
    return guest_sh(TUNE_SCRIPT, "ketch-mount-tune", target, str(READ_AHEAD_KB))


def guest_port_argv(target: str, key: str, port: str) -> list[str]:
    """The guest's command for one mount over the virtio-serial port named ``port``."""
    return guest_sh(GUEST_PORT_SCRIPT, "ketch-mount", target, key, port)


def guest_argv(target: str, key: str) -> list[str]:
    """The guest's command for one mount at ``target`` (an absolute guest path; ``key``
    names its pid file in the guest: ``layout.mount_key``)."""
    return guest_sh(GUEST_SCRIPT, "ketch-mount", target, key)


def guest_unmount_argv(target: str, key: str) -> list[str]:
    """End the sshfs at ``target`` and unmount it lazily, if one is there (never fails)."""
    return guest_sh(CLEAR_SCRIPT + "true", "ketch-umount", target, key)


def supervisor_argv(
    source: str,
    *,
    uid: int,
    gid: int,
    uid_maps: Sequence[tuple[int, int]],
    gid_maps: Sequence[tuple[int, int]],
    pidfile: str,
    log: str,
    ssh: Sequence[str] = (),
    connect: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The detached supervisor's argv: it writes ``pidfile`` and logs to ``log``; it runs
    ``ssh``, or with ``connect`` serves that socket (a virtio-serial port's host end)."""
    argv = [python, "-m", MODULE, source, "--uid", str(uid), "--gid", str(gid)]
    for host, guest in uid_maps:
        argv += ["--uid-map", f"{host}:{guest}"]
    for host, guest in gid_maps:
        argv += ["--gid-map", f"{host}:{guest}"]
    argv += ["--pidfile", pidfile, "--log", log]
    return [*argv, "--connect", connect] if connect is not None else [*argv, "--", *ssh]


def transport(cmdline: Sequence[str]) -> str:
    """Which stream a supervisor's argv serves: ``virtio-serial`` or ``ssh``."""
    head = list(cmdline[: cmdline.index("--")]) if "--" in cmdline else list(cmdline)
    return "virtio-serial" if "--connect" in head else "ssh"


def is_supervisor(cmdline: Sequence[str], pidfile: str) -> bool:
    """Is this process's argv the supervisor that owns ``pidfile``?"""
    if len(cmdline) < 4 or list(cmdline[1:3]) != ["-m", MODULE]:
        return False
    head = list(cmdline[: cmdline.index("--")]) if "--" in cmdline else list(cmdline)
    return any(head[i] == "--pidfile" and head[i + 1] == pidfile for i in range(len(head) - 1))


def _unescape(field: str) -> str:
    """A /proc/mounts field with its octal escapes (``\\040`` for a space…) undone."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_targets(proc_mounts: str) -> set[str]:
    """The mount points of every sshfs in a /proc/mounts text."""
    targets = set()
    for line in proc_mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2].startswith("fuse.sshfs"):
            targets.add(_unescape(fields[1]))
    return targets
