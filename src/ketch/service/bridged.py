"""Use case: ``local.NAME.bridged``, as Multipass's (a bridged NIC added to an instance).

``get`` says whether the instance has a NIC on the bridge ``local.bridged-network``
names now (so it changes with that setting, as Multipass's does).  ``set ...=true``
adds one (``mode=auto``, a new MAC) to a Stopped instance, from its next start:
the NIC goes into the spec, and the seed is written again with it in its
network config and a new instance-id (:func:`ketch.runtime.netplan.seed_instance_id`),
so that cloud-init configures it.  ``=false`` on a bridged instance is refused:
removing a bridged NIC is not supported, as in Multipass.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from ketch import cloudinit
from ketch.api.models import SetReply
from ketch.errors import InvalidArgument, KetchError
from ketch.model import InstanceSpec, OperationKind, State
from ketch.progress import Reporter
from ketch.service import inspect
from ketch.service.context import Context
from ketch.service.journal import journal
from ketch.service.network import BRIDGED_KEY, extra_networks

PROP = "bridged"
TRUE = ("true", "on", "yes", "1")
FALSE = ("false", "off", "no", "0")


def parse_bool(key: str, value: str) -> bool:
    """A boolean setting's value, as Multipass's ``BoolSettingSpec`` accepts them (pure)."""
    text = value.strip().lower()
    if text not in (*TRUE, *FALSE):
        raise InvalidArgument(
            f'Invalid setting \'{key}={value}\': Invalid flag, need "true" or "false"',
            hint="give 'true' or 'false'",
        )
    return text in TRUE


def is_bridged(ctx: Context, name: str) -> bool:
    """Has the instance a NIC on ``local.bridged-network``'s bridge?"""
    wanted = ctx.store.get_setting(BRIDGED_KEY)
    spec = ctx.store.get(name).spec
    return bool(wanted) and any(n.name == wanted for n in spec.networks)


def value(ctx: Context, name: str) -> str:
    return "true" if is_bridged(ctx, name) else "false"


def refusal(name: str, reason: str) -> KetchError:
    """Multipass's words for an instance setting it will not change."""
    return KetchError(f"Cannot update instance settings; instance: {name}; reason: {reason}")


async def set_bridged(ctx: Context, name: str, text: str, reporter: Reporter) -> SetReply:
    """``local.NAME.bridged=true|false`` (under the instance's lock)."""
    key = f"local.{name}.{PROP}"
    want = parse_bool(key, text)
    v = await inspect.get(ctx, name)
    if v.record.deleted:
        raise refusal(name, "Instance is deleted")
    if v.state is not State.STOPPED:
        raise KetchError(
            refusal(name, "Instance must be stopped for modification").message,
            hint=f"stop it first: 'ketch stop {name}'; the NIC is added at the next start",
        )
    if not want:
        if is_bridged(ctx, name):
            raise InvalidArgument(
                f"Invalid setting '{key}=false': "
                "Removing the bridged network is currently not supported"
            )
        return SetReply(key=key, value="false", changed=False)
    if not ctx.store.get_setting(BRIDGED_KEY):
        raise InvalidArgument(
            f'You have to `ketch set {BRIDGED_KEY}=<name>` to use the "bridged" shortcut.',
            hint="see 'ketch networks' for the bridges",
        )
    if is_bridged(ctx, name):
        reporter.step(f"{name} is already bridged")
        return SetReply(key=key, value="true", changed=False)
    from ketch.service.launch import _random_mac

    spec = v.record.spec
    taken = {spec.mac, *(n.mac for n in spec.networks)}
    added = await extra_networks(ctx, [], bridged=True, mac=_random_mac)
    nic = added[0]
    if nic.mac in taken:  # 24 random bits: as good as never, but never two equal MACs
        nic = replace(nic, mac=_random_mac())
    new = replace(spec, networks=(*spec.networks, nic), nics_added=spec.nics_added + 1)
    async with journal(ctx, name, OperationKind.SET, step=f"{PROP} {nic.mac}", reporter=reporter):
        reporter.step(f"Adding a NIC on {nic.name} to {name}")
        await write_seed(ctx, new)
        ctx.store.set_spec(new)
    return SetReply(key=key, value="true", changed=True)


async def write_seed(ctx: Context, spec: InstanceSpec) -> None:
    """The seed written again for ``spec`` (its user data as given at launch)."""
    from ketch.service.launch import write_seed as write

    text = spec.cloud_init
    user_cfg = await asyncio.to_thread(cloudinit.parse_user_data, text) if text else None
    await asyncio.to_thread(write, ctx, spec, user_cfg)
