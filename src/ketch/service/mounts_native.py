"""Native (virtiofs) mounts, the guest's side: mount, unmount, look.

The host's side is the driver's: each native mount in the spec gets a
virtiofsd and a ``vhost-user-fs-pci`` device when the instance starts
(``runtime/virtiofs.py``), so a native mount added to a running instance is
in place from its next start, as in Multipass.  Here ketch's SSH mounts the
device's tag at the mount's target (``mount -t virtiofs TAG TARGET``) and
unmounts it; both are idempotent.  ``service/mounts.py`` calls these.
"""

from __future__ import annotations

from ketch.errors import GuestError, InvalidState, KetchError
from ketch.host import ssh
from ketch.host.run import Completed
from ketch.model import InstanceSpec, MountSpec, PidStatus
from ketch.progress import Reporter
from ketch.runtime import virtiofs
from ketch.service import guestlink
from ketch.service.context import Context

GUEST_TIMEOUT = 60.0

# sh -c SCRIPT sh TAG TARGET: is TAG mounted (virtiofs) at TARGET?
_IS_MOUNTED = (
    'awk -v t="$1" -v d="$2" '
    "'$1 == t && $2 == d && $3 == \"virtiofs\" { f = 1 } END { exit !f }' /proc/mounts"
)
ACTIVATE = (
    f"{_IS_MOUNTED} && exit 0; "
    "modprobe virtiofs 2>/dev/null; "
    'mkdir -p -- "$2" && mount -t virtiofs -- "$1" "$2"'
)
DEACTIVATE = f'{_IS_MOUNTED} || exit 0; umount -- "$2"'
IS_MOUNTED = f"{_IS_MOUNTED}"


async def _guest(ctx: Context, spec: InstanceSpec, script: str, mount: MountSpec) -> Completed:
    argv = ["sudo", "-n", "sh", "-c", script, "sh", virtiofs.mount_tag(mount), mount.target]
    return await ssh.run_in_guest(
        guestlink.target(ctx.root, spec), argv, timeout=GUEST_TIMEOUT, check=False
    )


async def _running(ctx: Context, spec: InstanceSpec) -> bool:
    idir = ctx.root.instance(spec.name)
    obs = await ctx.driver.observe(spec, idir, probe_qmp=False)
    return obs.pid_status is PidStatus.OURS


def _said(done: Completed) -> str:
    return (done.stderr or done.stdout).decode("utf-8", "replace").strip()


async def activate(ctx: Context, spec: InstanceSpec, mount: MountSpec, reporter: Reporter) -> None:
    """Mount a native mount's device at its target in the running guest (idempotent)."""
    name = spec.name
    if not await _running(ctx, spec):
        raise InvalidState(
            name,
            "not running",
            ["Running"],
            message=f'cannot mount {mount.target} in "{name}": it is not running',
            hint=f"'ketch start {name}' (its native mounts are put in place as it starts)",
        )
    if not virtiofs.running(ctx.root.instance(name), mount):
        raise KetchError(
            f'the native mount of {mount.source} is not attached to "{name}" now: a native '
            "mount is attached when the instance starts"
            + ("" if (problem := virtiofs.source_problem(mount)) is None else f"; {problem}"),
            hint=f"'ketch restart {name}' attaches it",
        )
    reporter.step(f"Mounting {mount.source} at {name}:{mount.target} (native)")
    done = await _guest(ctx, spec, ACTIVATE, mount)
    if done.returncode != 0:
        raise GuestError(
            f"could not mount {mount.target} (virtiofs) in {name}: {_said(done) or 'no reason'}",
            hint=f"the guest's kernel needs virtiofs; see 'ketch info {name}'",
        )


async def deactivate(
    ctx: Context, spec: InstanceSpec, mount: MountSpec, reporter: Reporter
) -> None:
    """Unmount a native mount in the guest (nothing to do when it is not mounted or
    the instance is not running).  The device and its virtiofsd stay until QEMU ends."""
    if not await _running(ctx, spec):
        return
    reporter.step(f"Unmounting {spec.name}:{mount.target}")
    done = await _guest(ctx, spec, DEACTIVATE, mount)
    if done.returncode != 0:
        raise GuestError(
            f"could not unmount {mount.target} in {spec.name}: {_said(done) or 'no reason'}",
            hint="a process in the guest may be using it (see 'fuser -m' in the guest)",
        )


async def active(ctx: Context, spec: InstanceSpec, mount: MountSpec) -> bool | None:
    """Is the mount in place now (its virtiofsd alive and its target mounted)?

    None when the instance is not running; False also when the guest cannot be
    asked.
    """
    if not await _running(ctx, spec):
        return None
    if not virtiofs.running(ctx.root.instance(spec.name), mount):
        return False
    try:
        done = await _guest(ctx, spec, IS_MOUNTED, mount)
    except KetchError:
        return False
    return done.returncode == 0
