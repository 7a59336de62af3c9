"""Which accelerator instances get: the setting, else the cached KVM probe."""

from __future__ import annotations

from pathlib import Path

from ketch.errors import InvalidArgument
from ketch.host import accel as host_accel
from ketch.service.context import Context

SETTING = "local.accel"
CHOICES = ("auto", "kvm", "tcg")


async def choose(ctx: Context, kernel: Path | None = None) -> host_accel.AccelChoice:
    """The accelerator to use now; probes KVM at most once per QEMU/host kernel."""
    wanted = ctx.store.get_setting(SETTING) or "auto"
    version = await host_accel.qemu_version()
    if wanted in ("kvm", "tcg"):
        return host_accel.AccelChoice(wanted, f"set by {SETTING}", version, "", 0.0)
    cached = host_accel.load_cached(ctx.root.accel_cache, qemu=version)
    if cached is not None:
        return cached
    choice = await host_accel.probe(kernel or ctx.images.probe_kernel())
    host_accel.save_cached(ctx.root.accel_cache, choice)
    return choice


def validate(value: str) -> str:
    if value not in CHOICES:
        raise InvalidArgument(
            f"invalid value '{value}' for {SETTING}",
            hint="use one of: " + ", ".join(CHOICES),
        )
    return value
