"""A short chaos walk on the managed network, in a network namespace (``chaos_network.py``).

The walk's faults are ``chaos.py``'s plus the network's own (kill dnsmasq,
delete an instance's TAP; the reboot takes the network down too); its
invariants are the same, and a failure names the seed and step.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from chaos import KNOWN_BUGS, Config
from chaos_network import NET_FAULTS, run_net_walk

from ketch.model import ImageInfo

pytestmark = [
    pytest.mark.vm,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and a tmpfs: needs root"),
    pytest.mark.skipif(
        shutil.which("dnsmasq") is None or shutil.which("nft") is None,
        reason="dnsmasq and nft are needed (scripts/install)",
    ),
]

SEED = 31
STEPS = 14


def test_chaos_walk_on_the_managed_network(tiny_image: ImageInfo) -> None:
    config = Config(seed=SEED, steps=STEPS, vms=2, doctor_every=7, fault_rate=0.6)
    summary = run_net_walk(config, Path(tiny_image.disk).parent)
    print(json.dumps({k: v for k, v in summary.items() if k != "violations"}, indent=1))
    for v in summary["violations"]:
        if v["known"]:
            print(f"known bug {v['known']} ({KNOWN_BUGS[v['known']]}): {v['detail']}")
    unknown = [v for v in summary["violations"] if not v["known"]]
    assert summary["steps_run"] == STEPS, summary["error"]
    assert not unknown, f"{len(unknown)} invariant violation(s); seed {SEED}\n" + "\n".join(
        f"step {v['step']} {v['invariant']} ({v['command']}): {v['detail']}" for v in unknown
    )
    assert set(NET_FAULTS) <= set(summary["faults"]), summary["faults"]  # both were injected
