"""The per-image half of the warm agent: what differs between guests, as data (pure).

The agent (:data:`ketch.runtime.warm_guest.AGENT_TEMPLATE`) is one script with the
same protocol for every image; a :class:`Guest` fills in its three hooks:

* ``settle``: wait until the template's first boot is over (cloud-init's
  ``boot-finished``, and for systemd the boot job queue empty);
* ``generalize``: make the template generic before it is saved: no SSH server,
  no host key, no machine-id, no instance of its own (cloud-init's state), no
  DHCP lease;
* ``identity``: in a clone, after the entropy, the clock, the MACs and a new
  machine-id: apply the clone's seed as a cold boot would, start the SSH server
  and run the final stage (``runcmd``, ``boot-finished``).

``tiny`` has its own NoCloud scripts (``images/guest``); ``debian-12`` runs the
real cloud-init, re-run on the clone's seed: ``cloud-init init --local`` (the
datasource, the network config), systemd-networkd restarted (DHCP with the new
MAC), ``cloud-init init`` (host keys, users, hostname, write_files),
``ssh.service``, then the ``config`` and ``final`` stages.  Its template boots
with its NIC up and a static address (:func:`static_network_config`): no DHCP
lease in the saved user-mode network, so a clone's DHCP gets the address a cold
boot gets, and systemd's wait for the network does not stall the template's boot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# QEMU's user-mode network: the first address its DHCP server gives, its gateway, DNS
USER_NET_GUEST = "10.0.2.15/24"
USER_NET_GATEWAY = "10.0.2.2"
USER_NET_DNS = "10.0.2.3"


@dataclass(frozen=True)
class Guest:
    """How one image's guest is made a template and a clone (shell snippets of the agent)."""

    name: str
    settle: str
    generalize: str
    identity: str
    link_up: bool  # the template's first NIC has its link up while it boots (a static address)
    handover_seconds: float  # from "go" to "done" at most: the clone's identity applied
    # cloud-config the template's seed adds (the template makes no host key of its own)
    template_cfg: Mapping[str, Any] = field(default_factory=dict)


# Debian's initramfs mounts /run noexec: the reseed helper runs from a tmpfs of its own
# (in RAM, so in the template's memory: nothing of it on the disk), unmounted once used.
_EXEC_DIR = "/run/ketch/warm/exec"
_EXEC_RESEED = f"""mkdir -p {_EXEC_DIR} && mount -t tmpfs -o mode=0700,size=1m tmpfs {_EXEC_DIR} &&
	cp /run/ketch/warm/reseed {_EXEC_DIR}/reseed && reseed={_EXEC_DIR}/reseed
"""
_BOOT_FINISHED = "while [ ! -e /var/lib/cloud/instance/boot-finished ]; do sleep 0.2; done"

TINY = Guest(
    name="tiny",
    settle=_BOOT_FINISHED,
    generalize=r"""
# No DHCP client either (its NIC's link is down: the clone's user-mode network has no lease).
[ -s /run/dropbear.pid ] && kill "$(cat /run/dropbear.pid)" 2>/dev/null
for p in /run/udhcpc.*.pid; do [ -s "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
sleep 0.2
rm -f /etc/dropbear/*host_key* /run/dropbear.pid /run/ketch/host-key-types /etc/machine-id
rm -rf /run/ketch/seed /var/lib/cloud/instances/* /var/lib/cloud/instance /var/lib/cloud/data/*
""",
    identity=r"""
if [ -n "$grow" ]; then # the clone's disk is larger than the template's
	rootdev= # the last mount on / that is not the initramfs's rootfs
	while read -r mdev mpoint rest; do
		[ "$mpoint" = / ] && [ "$mdev" != rootfs ] && rootdev=$mdev
	done </proc/mounts
	[ -b "$rootdev" ] && resize2fs "$rootdev" >/run/ketch/resize2fs.log 2>&1
fi
/usr/lib/ketch/nocloud-local || say "warn nocloud-local"
/usr/lib/ketch/network >/dev/null 2>&1
/usr/lib/ketch/sshd </dev/null >/dev/null 2>&1 || say "warn sshd"
/usr/lib/ketch/cloud-final
""",
    link_up=False,
    handover_seconds=60.0,
)

CLOUD_INIT = Guest(
    name="cloud-init",
    settle=_EXEC_RESEED
    + _BOOT_FINISHED
    + "\necho 'ketch-warm: boot finished'"
    + "\ntimeout 300 systemctl is-system-running --wait >/dev/null 2>&1"
    + "\necho 'ketch-warm: settled'",
    generalize=r"""
systemctl stop ssh.service >/dev/null 2>&1
rm -f /etc/ssh/ssh_host_*
# The template's network config (its static address, its MAC): a clone's cloud-init writes its own.
rm -f /etc/systemd/network/10-cloud-init-*.network
while read -r mdev mpoint rest; do
	[ "$mpoint" = /etc/machine-id ] && umount /etc/machine-id
done </proc/mounts
: >/etc/machine-id
# cloud-init's instance, as "cloud-init clean --logs" leaves it, and this boot's
# semaphores (apply_network_config.once: the clone's network config is applied)
rm -rf /var/lib/cloud/* /run/cloud-init/instance-data*.json /run/cloud-init/result.json \
	/run/cloud-init/status.json /run/cloud-init/sem/* /var/log/cloud-init.log \
	/var/log/cloud-init-output.log
journalctl --rotate >/dev/null 2>&1
journalctl --vacuum-time=1s >/dev/null 2>&1
""",
    identity=r"""
# The seed disk is another file now: nothing of the template's may be cached.
for d in /dev/vd? /dev/sr?; do [ -b "$d" ] && blockdev --flushbufs "$d" 2>/dev/null; done
[ -f /var/lib/systemd/random-seed ] &&
	dd if=/dev/urandom of=/var/lib/systemd/random-seed bs=512 count=1 2>/dev/null
systemctl restart systemd-journald >/dev/null 2>&1 # the new machine-id
echo "ketch-warm: cloud-init"
cloud-init init --local || say "warn cloud-init-local"
systemctl restart systemd-networkd || say "warn networkd"
/lib/systemd/systemd-networkd-wait-online --timeout=60 >/dev/null 2>&1 || say "warn network"
cloud-init init || say "warn cloud-init"
systemctl reset-failed ssh.service >/dev/null 2>&1
systemctl start ssh.service || say "warn sshd"
cloud-init modules --mode=config || say "warn cloud-config"
cloud-init modules --mode=final || say "warn cloud-final"
umount /run/ketch/warm/exec 2>/dev/null
""",
    link_up=True,
    handover_seconds=600.0,  # cloud-init's four stages under TCG on a loaded host
    template_cfg={"ssh_genkeytypes": []},  # ssh.service fails in the template: no key at all
)

# Images that have templates, by the name in their id ("ketch:NAME@KEY")
BY_IMAGE = {"tiny": TINY, "debian-12": CLOUD_INIT}


def image_name(image_id: str) -> str:
    """``ketch:tiny@2026…`` -> ``tiny`` (pure)."""
    return image_id.split("@")[0].rsplit(":", 1)[-1]


def guest_of(image_id: str) -> Guest | None:
    """The warm agent's flavor of an image, or None: it has no templates."""
    if not image_id.startswith("ketch:"):
        return None
    return BY_IMAGE.get(image_name(image_id))


def static_network_config(mac: str) -> str:
    """A template's cloud-init network config (v2, JSON): the first NIC, matched by
    MAC, at the user-mode network's first DHCP address, without DHCP (pure)."""
    name = "enx" + mac.replace(":", "").lower()
    eth = {
        "match": {"macaddress": mac},
        "addresses": [USER_NET_GUEST],
        "gateway4": USER_NET_GATEWAY,  # cloud-init 22.4 (bookworm) has no "to: default"
        "nameservers": {"addresses": [USER_NET_DNS]},
    }
    return json.dumps({"version": 2, "ethernets": {name: eth}}, indent=2) + "\n"
