"""``ketch doctor`` on the managed network: a missing bridge, a dead dnsmasq, stale TAPs.

Nothing is reported when the network was never made.  The checks and the
repairs are :mod:`ketch.service.network`'s.
"""

from __future__ import annotations

from ketch.codes import CODES
from ketch.errors import KetchError
from ketch.model import FindingCode
from ketch.runtime.network import read_nic
from ketch.service import network as network_uc
from ketch.service.context import Context
from ketch.service.doctor.finding import Finding, Repair
from ketch.service.inspect import all_views


async def examine_network(ctx: Context) -> list[Finding]:
    network = ctx.network
    if network is None:
        return []
    running = set()
    for v in await all_views(ctx):
        nic = read_nic(ctx.root.instance(v.name))
        if nic is not None and v.derived.running:
            running.add(nic.tap)
    storage = ""
    try:
        problems = await network_uc.problems(network, running)
    except KetchError as exc:
        message = f"cannot look at the managed network: {exc.message}"
        return [Finding(storage, "network-bridge-missing", message, "none: see the message")]

    def fixer(p: network_uc.Problem) -> Repair:
        async def repair() -> str:
            return await network_uc.repair(network, p)

        return repair

    out = []
    for p in problems:
        fix = CODES[p.code].fix
        if p.code is FindingCode.NETWORK_STALE_TAP:
            out.append(Finding(storage, "network-stale-tap", p.message, fix, fixer(p)))
        elif p.code is FindingCode.NETWORK_DNSMASQ_DEAD:
            out.append(Finding(storage, "network-dnsmasq-dead", p.message, fix, fixer(p)))
        else:
            out.append(Finding(storage, "network-bridge-missing", p.message, fix, fixer(p)))
    return out
