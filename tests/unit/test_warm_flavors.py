"""Warm launch per image (pure): one agent, each image's hooks as data; which images
have templates; a template's static network config; why a launch must be cold."""

from __future__ import annotations

import json
import subprocess

from ketch.model import BootSpec, ImageInfo
from ketch.runtime import warm_guest
from ketch.runtime.warm_flavors import CLOUD_INIT, TINY, guest_of, static_network_config
from ketch.service import templates
from ketch.service.warm import cold_reason_of_user_data


def image(image_id: str, boot: BootSpec) -> ImageInfo:
    return ImageInfo(id=image_id, release=image_id, disk="/d.qcow2", disk_format="qcow2", boot=boot)


DEBIAN = image("ketch:debian-12@dbda1ff27e13cef3", BootSpec(firmware="bios"))
TINY_IMAGE = image("ketch:tiny@20261126", BootSpec(kernel="/vault/vmlinuz"))
UBUNTU = image("sha256:0123", BootSpec(kernel="/vault/vmlinuz"))


def test_each_image_with_templates_has_its_flavor_others_none() -> None:
    assert guest_of(TINY_IMAGE.id) is TINY
    assert guest_of(DEBIAN.id) is CLOUD_INIT
    assert guest_of(UBUNTU.id) is None  # its own kernel does not make it tiny
    assert guest_of("ketch:other@1") is None


def test_one_agent_the_same_protocol_for_every_flavor() -> None:
    for flavor in (TINY, CLOUD_INIT):
        text = warm_guest.agent(flavor)
        assert subprocess.run(["sh", "-n", "-c", text], check=False).returncode == 0
        assert "say template-ready" in text and "say done" in text
        for word in ("entropy)", "time)", "mac)", "grow)", "go)"):
            assert word in text
        # the reseed comes first of all, the hook after the MACs and the machine-id
        assert text.index("/run/ketch/warm/reseed") < text.index(flavor.identity.strip()[:30])
        assert text.index("/etc/machine-id\n") < text.index(flavor.identity.strip()[:30])
    assert warm_guest.digest(TINY) != warm_guest.digest(CLOUD_INIT)


def test_the_cloud_init_flavor_reruns_the_real_cloud_init_in_a_cold_boots_order() -> None:
    text = CLOUD_INIT.identity
    steps = [
        "blockdev --flushbufs",
        "cloud-init init --local",
        "systemctl restart systemd-networkd",
        "systemd-networkd-wait-online",
        "cloud-init init ||",
        "systemctl start ssh.service",
        "cloud-init modules --mode=config",
        "cloud-init modules --mode=final",
    ]
    at = [text.index(s) for s in steps]
    assert at == sorted(at)
    gen = CLOUD_INIT.generalize
    for gone in ("/etc/ssh/ssh_host_*", "/var/lib/cloud/*", ": >/etc/machine-id"):
        assert gone in gen
    assert CLOUD_INIT.link_up and not TINY.link_up


def test_a_templates_static_network_config_has_no_dhcp() -> None:
    cfg = json.loads(static_network_config("52:54:00:AB:cd:01"))
    (eth,) = cfg["ethernets"].values()
    assert eth["match"] == {"macaddress": "52:54:00:AB:cd:01"}
    assert eth["addresses"] == ["10.0.2.15/24"] and "dhcp4" not in eth


def test_which_launches_can_never_be_warm() -> None:
    assert templates.cold_reason(DEBIAN, DEBIAN.boot) is None
    assert templates.cold_reason(TINY_IMAGE, TINY_IMAGE.boot) is None
    assert templates.cold_reason(DEBIAN, BootSpec(firmware="uefi")) is None  # its own template
    assert templates.firmware_of(BootSpec(firmware="uefi")) == "uefi"
    assert "no warm-launch templates" in (templates.cold_reason(UBUNTU, UBUNTU.boot) or "")
    assert templates.firmware_of(DEBIAN.boot) == "bios"
    assert templates.firmware_of(TINY_IMAGE.boot) == "kernel"


def test_user_data_a_template_cannot_honour_means_cold() -> None:
    assert "preserve_hostname" in (cold_reason_of_user_data({"preserve_hostname": True}) or "")
    assert cold_reason_of_user_data({"preserve_hostname": False}) is None
    why = cold_reason_of_user_data({"system_info": {"default_user": {"name": "me"}}})
    assert why is not None and "system_info" in why
