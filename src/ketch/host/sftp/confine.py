"""Kernel-enforced confinement of the SFTP server process to one directory.

:func:`confine` is called in the forked server process, before it reads a
single request.  In order:

1. ``unshare(CLONE_NEWNS)``: a mount namespace of its own, every mount in it
   made private (nothing it does propagates back to the host, nor in);
2. SOURCE bind-mounted onto itself, then remounted ``nosuid,nodev`` (a device
   node or a set-uid file in the share is inert through the server);
3. ``pivot_root(SOURCE, SOURCE)`` then the old root lazily unmounted: the
   namespace has no filesystem left but SOURCE, so no path, symlink or ``..``
   can name anything outside it (stronger than a bare ``chroot``: even a root
   server could not ``chroot`` its way out, there is nothing to climb to);
   ``chroot(".")`` on top;
4. ``setgroups``/``setgid``/``setuid`` to the mapped host user: it never
   stays root unless root is what the mount maps; if it does, every capability
   but the file-ownership ones is dropped from all its sets;
5. ``PR_SET_NO_NEW_PRIVS``; every file descriptor but the client's and stderr
   was closed first, and at most 1024 can be open.

The caller has imported everything the server needs before calling this: the
host's Python installation is out of reach afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_CAP_VERSION_3 = 0x20080522
_CAP_LAST = 63
# What a server mapped to root keeps: ownership and permission overrides on files, nothing else.
_CAP_KEEP = (0, 1, 2, 3, 4)  # CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID

_libc = ctypes.CDLL(None, use_errno=True)


class ConfinementError(Exception):
    """A step of the confinement failed: the server must not serve."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise ConfinementError(f"{what}: {os.strerror(err)}")


def _mount(source: bytes | None, target: bytes, flags: int) -> None:
    _check(_libc.mount(source, target, None, ctypes.c_ulong(flags), None), f"mount {target!r}")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _drop_capabilities() -> None:
    """Keep only :data:`_CAP_KEEP` in every set, and nothing in the bounding set."""
    for cap in range(_CAP_LAST + 1):
        if cap not in _CAP_KEEP and _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the kernel's last capability
                break
            _check(-1, "drop a capability from the bounding set")
    keep = sum(1 << cap for cap in _CAP_KEEP)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(keep, keep, 0), _CapData(0, 0, 0))
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def die_with_parent(parent: int, signum: int) -> None:
    """Have the kernel send ``signum`` when the parent (the supervisor) dies; if it has
    died already, exit now.  (Set after any change of credentials, which clears it.)"""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "parent death signal")
    if os.getppid() != parent:
        os._exit(2)


def close_fds(keep: tuple[int, ...]) -> None:
    """Close every file descriptor but stdin/stdout/stderr and ``keep``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed already
                os.close(fd)


def confine(
    source: str, uid: int, gid: int, groups: tuple[int, ...], keep: tuple[int, ...]
) -> None:
    """Confine this process to ``source`` as ``uid:gid`` (see the module's docstring)."""
    close_fds(keep)
    root = os.fsencode(source)
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise ConfinementError(f"pivot_root: unknown architecture {platform.machine()}")
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, b"/", MS_REC | MS_PRIVATE)
    _mount(root, root, MS_BIND | MS_REC)
    _mount(None, root, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
    os.chdir(root)
    _check(_libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chroot(".")
    os.chdir("/")
    # Room for the handles (sshfs holds one per open file) and no more.
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    os.setgroups(list(groups) or [gid])
    os.setgid(gid)
    os.setuid(uid)
    if uid == 0:
        _drop_capabilities()
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    # The guest's kernel already applied the guest's umask to the modes it sends.
    os.umask(0)
