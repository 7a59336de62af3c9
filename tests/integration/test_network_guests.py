"""What guests do with their NICs, inside a network namespace this module makes.

The tiny image and debian-12's real cloud-init: the managed NIC and each
``--network`` NIC with ``mode=auto`` get DHCP, ``mode=manual`` ones are left
unconfigured; ``local.NAME.bridged=true`` adds a NIC to a stopped instance
from its next start; the SSH endpoint is the managed address while it answers,
the loopback port when it does not.  The namespace, its bridge and its DHCP
server are ``test_network``'s fixtures (the network rule: nothing of it in the
machine's own namespace).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_network import NsKetch, ext_bridge, made_bridge, managed_ip, nsk  # noqa: F401 (fixtures)

from ketch.model import ImageInfo

pytestmark = pytest.mark.vm

EXT_PREFIX = "192.168.250."  # the test bridge's DHCP range (test_network.ext_bridge)


@pytest.fixture
def bridge2(nsk: NsKetch, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """A second test-made bridge in the namespace, with a DHCP server of the test's own."""
    yield from made_bridge(nsk, tmp_path, "kbr-two", "192.168.251")


def nics(k: NsKetch, name: str) -> dict[str, set[str]]:
    """Each guest NIC's MAC and its IPv4 addresses (empty: unconfigured)."""
    script = (
        "for d in /sys/class/net/*; do n=${d##*/}; [ $n = lo ] && continue; "
        "echo $(cat $d/address) $n $(ip -4 -o addr show dev $n | awk '{print $4}'); done"
    )
    out: dict[str, set[str]] = {}
    for line in k.exec(name, "sh", "-c", script).splitlines():
        mac, _dev, *addrs = line.split()
        out[mac] = {a.split("/")[0] for a in addrs}
    return out


def listed_ipv4(k: NsKetch, name: str, prefix: str, *, within: float = 60) -> list[str]:
    """``list``'s IPv4 addresses of ``name`` once one starts with ``prefix`` (or at the deadline).

    They are what the forward watcher's last snapshot of the guest showed; its
    session starts a moment after ``start`` returns, and until then ``list``
    shows the managed lease and the user-net address only.
    """
    deadline = time.monotonic() + within
    while True:
        listed: list[str] = next(e for e in k.json("list")["list"] if e["name"] == name)["ipv4"]
        if any(x.startswith(prefix) for x in listed) or time.monotonic() >= deadline:
            return listed
        time.sleep(0.5)


def server_address(k: NsKetch, name: str) -> str:
    """The guest address ``ketch exec``'s SSH connection came in on."""
    return k.exec(name, "sh", "-c", "echo $SSH_CONNECTION").split()[2]


def test_tiny_manual_nic_bridged_later_and_the_ssh_endpoint(
    nsk: NsKetch,  # noqa: F811
    ext_bridge: str,  # noqa: F811
    bridge2: str,
) -> None:
    manual = "52:54:00:77:77:02"
    with nsk.launched(
        "nm", "--memory", "512M", "--network", f"name={ext_bridge},mode=manual,mac={manual}"
    ) as a:
        ip_a = managed_ip(nsk, a)
        before = nics(nsk, a)
        assert before[manual] == set()  # manual: left unconfigured
        assert ip_a in set().union(*before.values())
        # the SSH endpoint is the managed address (it answers)
        assert server_address(nsk, a) == ip_a

        # bridged: refused while it runs (Multipass's words), added once stopped
        nsk.run("set", f"local.bridged-network={bridge2}")
        done = nsk.run("set", f"local.{a}.bridged=true", check=False)
        assert done.returncode == 2
        assert "Instance must be stopped for modification" in done.stderr
        assert nsk.run("get", f"local.{a}.bridged").stdout.strip() == "false"
        nsk.run("stop", a)
        nsk.run("set", f"local.{a}.bridged=true")
        assert nsk.run("get", f"local.{a}.bridged").stdout.strip() == "true"
        nsk.run("start", a)
        after = nics(nsk, a)
        (added,) = set(after) - set(before)
        assert any(x.startswith("192.168.251.") for x in after[added]), after
        assert after[manual] == set() and managed_ip(nsk, a) == ip_a
        # list shows the bridged NIC's address too: every address the guest has
        listed = listed_ipv4(nsk, a, "192.168.251.")
        assert any(x.startswith("192.168.251.") for x in listed), listed

        # the managed NIC's TAP gone under the guest: exec falls back to the loopback port
        tap = nsk.ns_run("ip", "-br", "link", "show", "master", "ketch0").stdout.split()[0]
        nsk.ns_run("ip", "link", "del", tap)
        assert server_address(nsk, a) == "10.0.2.15"


def test_debian_configures_its_managed_and_auto_nics_not_manual(
    nsk: NsKetch,  # noqa: F811
    ext_bridge: str,  # noqa: F811
) -> None:
    if not shutil.which("debootstrap"):
        pytest.skip("building the debian-12 image needs debootstrap")
    import asyncio
    import os

    from test_debian_image import READY_TIMEOUT, _link_tree

    from ketch.images import debian

    cache = Path(os.environ.get("KETCH_TEST_CACHE") or "~/.cache/ketch-test/images").expanduser()
    image: ImageInfo = asyncio.run(debian.build_debian(cache))
    src = Path(image.disk).parent
    _link_tree(src, nsk.root / "vault" / "built" / debian.NAME / src.name)
    manual = "52:54:00:77:77:03"
    with nsk.launched(
        "dn", "--network", ext_bridge, "--network", f"name={ext_bridge},mode=manual,mac={manual}",
        "--timeout", READY_TIMEOUT, image=debian.NAME, timeout=float(READY_TIMEOUT) + 600,
    ) as d:  # fmt: skip
        ip_d = managed_ip(nsk, d)
        found = nics(nsk, d)
        assert len(found) == 4, found  # user-mode, managed, two on the test's bridge
        assert found[manual] == set()  # manual: cloud-init left it alone
        everything = set().union(*found.values())
        assert ip_d in everything and "10.0.2.15" in everything
        assert any(x.startswith(EXT_PREFIX) for x in everything)  # auto: DHCP on the bridge
        assert nsk.banner(ip_d).startswith("SSH-2.0-")
        assert server_address(nsk, d) == ip_d
