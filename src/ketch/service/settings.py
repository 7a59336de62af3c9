"""Use cases: ``ketch get`` / ``ketch set`` with Multipass's keys plus ketch's own."""

from __future__ import annotations

from ketch.errors import InvalidArgument, NotFound
from ketch.service import accel, names
from ketch.service.context import Context

DEFAULTS = {
    "local.driver": "qemu",
    "local.accel": "auto",
    "client.primary-name": "primary",
}
REMOTE_PREFIX = "local.remote."


def _check(key: str, value: str) -> str:
    if key == "local.driver":
        if value != "qemu":
            raise InvalidArgument(
                f"invalid driver '{value}'", hint="only 'qemu' is available for now"
            )
    elif key == "local.accel":
        accel.validate(value)
    elif key == "client.primary-name":
        if value:
            names.validate(value)
    elif key.startswith(REMOTE_PREFIX) and not value.startswith(("http://", "https://", "file://")):
        raise InvalidArgument(
            f"invalid remote URL '{value}'", hint="give an http(s):// or file:// URL"
        )
    return value


def known(key: str) -> bool:
    return key in DEFAULTS or key.startswith(REMOTE_PREFIX)


async def get(ctx: Context, key: str) -> str:
    if not known(key):
        raise NotFound(f"unknown setting '{key}'", hint="see 'ketch help get' for the keys")
    value = ctx.store.get_setting(key)
    if key == "local.accel" and value in (None, "auto"):
        choice = await accel.choose(ctx)
        return f"{choice.accel} ({choice.reason})"
    if value is None:
        if key in DEFAULTS:
            return DEFAULTS[key]
        raise NotFound(f"setting '{key}' is not set")
    return value


async def set_(ctx: Context, key: str, value: str) -> None:
    if not known(key):
        raise NotFound(f"unknown setting '{key}'", hint="see 'ketch help set' for the keys")
    ctx.store.set_setting(key, _check(key, value) if value else None)  # empty: unset
