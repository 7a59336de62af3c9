"""Use case, part of making a template: its NoCloud seed, and the seed size every clone keeps.

The seed carries ketch's vendor data, a generic identity (:data:`TEMPLATE_HOSTNAME`,
an ``i-template-`` instance id), no host key, and the warm agent
(``runtime/warm_guest.py``); for a guest whose NIC is up while it boots, a static
address (``runtime/warm_flavors.py``).  Every seed of a template and its clones is
padded to :data:`ketch.runtime.warm_guest.SEED_SIZE` (:func:`pad_seed`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ketch import cloudinit
from ketch.host import seed
from ketch.layout import TemplateDir
from ketch.runtime import warm_guest
from ketch.runtime.warm_flavors import Guest, static_network_config
from ketch.service import guestlink
from ketch.service.context import Context

TEMPLATE_HOSTNAME = "ketch-template"
TEMPLATE_IID_PREFIX = "i-template-"


def _seed_config(ctx: Context, key: str, flavor: Guest) -> tuple[dict[str, Any], str]:
    cfg = cloudinit.merge_vendor(
        warm_guest.template_config(flavor),
        default_user="ubuntu",
        client_public_key=guestlink.client_public_key(ctx.root),
        host_key_private="-----BEGIN OPENSSH PRIVATE KEY-----\n-----END OPENSSH PRIVATE KEY-----",
        host_key_public="ssh-ed25519 none",
        hostname=TEMPLATE_HOSTNAME,
    )
    cfg.pop("ssh_keys")  # no host key at all: the template never serves SSH
    return cfg, f"{TEMPLATE_IID_PREFIX}{key[-16:]}"


def write_template_seed(ctx: Context, tdir: TemplateDir, key: str, flavor: Guest, mac: str) -> Path:
    """The template's NoCloud seed: ketch's vendor data, a generic identity, the agent;
    for a guest whose NIC is up while it boots, a static address on ``mac`` (no DHCP)."""
    cfg, iid = _seed_config(ctx, key, flavor)
    meta = {"instance-id": iid, "local-hostname": TEMPLATE_HOSTNAME}
    path = tdir.boot.seed_iso
    seed.build_seed_iso(
        path,
        meta_data=cloudinit.meta_data(iid, TEMPLATE_HOSTNAME),
        user_data=cloudinit.render_user_data(cfg),
        network_config=static_network_config(mac) if flavor.link_up else None,
        extra_files={seed.GUEST_CONFIG_FILE: seed.render_guest_config(cfg, meta).encode()},
    )
    pad_seed(path)
    return path


def pad_seed(path: Path) -> bool:
    """Pad a seed ISO (sparse) to the size every template's clone expects; False when
    it is larger (that instance cannot start warm)."""
    size = path.stat().st_size
    if size > warm_guest.SEED_SIZE:
        return False
    os.truncate(path, warm_guest.SEED_SIZE)
    return True
