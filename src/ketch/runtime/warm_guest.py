"""The guest side of a warm launch: the agent a template runs, and its protocol (pure).

A template is booted with these two files in its cloud-config (``write_files``
into ``/run/ketch/warm``, a tmpfs: they never reach the golden disk) and a
``runcmd`` that starts the agent.  Nothing of this is in the image itself, so
the image's own files are not changed by warm launch.

The agent talks to ketch over one virtio-serial port (:data:`ketch.host.qemu.AGENT_PORT`),
whose host end is a Unix socket in the template's (then the clone's) directory:

* in the template, once its first boot is over: it makes the guest generic (ends
  the SSH server, removes every host key, the machine-id and the template's own
  instance data), syncs, says ``template-ready`` and waits on the port (blocked in
  ``read``: the state is saved in that instant);
* in a clone, ketch sends, one line each: ``entropy B64`` (64 bytes of host
  randomness: ``RNDADDENTROPY`` then ``RNDRESEEDCRNG``, through :func:`reseed_elf`,
  before anything else), ``time SECONDS``, ``mac OLD NEW`` per NIC (the template's MAC
  and the clone's), ``grow`` when the clone's disk is larger than the template's,
  ``go``.  The agent then sets the MACs, makes a new machine-id and applies the
  clone's seed (same disk slot, same size: :data:`SEED_SIZE`) as a cold boot would:
  renews DHCP, starts the SSH server and the final stage (``runcmd``,
  ``boot-finished``), says ``done`` and exits.

What differs between images (how to wait for the first boot, make the guest
generic, apply an identity) is data: a :class:`~ketch.runtime.warm_flavors.Guest`
fills the agent's three hooks (:func:`agent`); the protocol is the same.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from ketch.runtime.warm_flavors import Guest

WARM_DIR = "/run/ketch/warm"
AGENT_PATH = f"{WARM_DIR}/agent"
RESEED_PATH = f"{WARM_DIR}/reseed"
ENTROPY_BYTES = 64
READY = "template-ready"
DONE = "done"
# Every seed ISO of a template and its clones is padded (sparse) to this size: the
# clone's guest kept the template's idea of the seed disk's size.
SEED_SIZE = 64 * 1024 * 1024

AGENT_TEMPLATE = r"""#!/bin/sh
# ketch warm agent, {guest} guest (see ketch/runtime/warm_guest.py, warm_flavors.py).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022
reseed=/run/ketch/warm/reseed
port=
find_port() {{
	for d in /sys/class/virtio-ports/*; do
		[ "$(cat "$d/name" 2>/dev/null)" = org.ketch.warm.0 ] && port=/dev/${{d##*/}}
	done
}}
find_port
[ -n "$port" ] || {{ modprobe virtio_console 2>/dev/null && sleep 1 && find_port; }}
[ -n "$port" ] || exit 0
exec 3<>"$port" </dev/null >/dev/console 2>&1
say() {{ printf '%s\n' "$*" >&3; }}
{settle}
# Make the template generic: no SSH server, no host key, no instance of its own.
{generalize}
sync
say template-ready
macs=
grow=
while :; do
	if ! read -r kind a b <&3; then
		sleep 0.05 # no host on the port (yet): the clone's ketch connects at once
		continue
	fi
	case "$kind" in
	entropy)
		printf '%s' "$a" | base64 -d | "$reseed" ||
			{{ printf '%s' "$a" | base64 -d >/dev/urandom; say "warn reseed-failed"; }}
		;;
	time) date -u -s "@$a" >/dev/null 2>&1 || say "warn clock" ;;
	mac) macs="$macs $a=$b" ;;
	grow) grow=1 ;;
	go) break ;;
	esac
done
for pair in $macs; do
	for dev in /sys/class/net/*; do
		[ "$(cat "$dev/address" 2>/dev/null)" = "${{pair%%=*}}" ] || continue
		ip link set "${{dev##*/}}" address "${{pair#*=}}" || say "warn mac"
	done
done
# A new machine-id from the kernel's (reseeded) generator, without a process.
IFS=- read -r m1 m2 m3 m4 m5 </proc/sys/kernel/random/uuid
printf '%s%s%s%s%s\n' "$m1" "$m2" "$m3" "$m4" "$m5" >/etc/machine-id
{identity}
echo "ketch-warm: identity applied"
say done
exit 0
"""


def agent(guest: Guest) -> str:
    """The agent script for ``guest`` (pure)."""
    return AGENT_TEMPLATE.format(
        guest=guest.name,
        settle=guest.settle.strip("\n"),
        generalize=guest.generalize.strip("\n"),
        identity=guest.identity.strip("\n"),
    )


# The reseed helper, x86-64 Linux, no libc (assembled once with GNU as; listing):
#   sub rsp,96; read(0, rsp+8, 64) -> n; n < 32: exit 1
#   [rsp] = n*8 (entropy bits), [rsp+4] = n (struct rand_pool_info)
#   fd = open("/dev/urandom", O_WRONLY); ioctl(fd, RNDADDENTROPY=0x40085203, rsp)
#   ioctl(fd, RNDRESEEDCRNG=0x5207, 0); exit 0; any failure: exit 1
_RESEED_CODE = bytes.fromhex(
    "4883ec6031ff488d742408ba4000000031c00f054883f8207c5b89442404c1e003890424"
    "488d3d56000000be01000000b8020000000f054885c078394989c44c89e7be0352084048"
    "89e2b8100000000f054885c0781f4c89e7be0752000031d2b8100000000f054885c07809"
    "31ffb83c0000000f05bf01000000b83c0000000f052f6465762f7572616e646f6d00"
)
_BASE = 0x400000
_HEADERS = 64 + 56


def reseed_elf() -> bytes:
    """A static ELF executable of :data:`_RESEED_CODE` (one PT_LOAD, read+execute)."""
    size = _HEADERS + len(_RESEED_CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, _BASE + _HEADERS, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    return ehdr + phdr + _RESEED_CODE


def digest(guest: Guest) -> str:
    """What decides a template's guest side: part of every template's key."""
    h = hashlib.sha256(agent(guest).encode())
    h.update(json.dumps([guest.link_up, guest.template_cfg], sort_keys=True).encode())
    h.update(reseed_elf())
    h.update(str(SEED_SIZE).encode())
    return h.hexdigest()[:16]


def template_config(guest: Guest) -> dict[str, Any]:
    """The cloud-config a template adds to ketch's vendor data: the agent, started."""
    return {
        "write_files": [
            {
                "path": AGENT_PATH,
                "permissions": "0700",
                "encoding": "b64",
                "content": base64.b64encode(agent(guest).encode()).decode(),
            },
            {
                "path": RESEED_PATH,
                "permissions": "0700",
                "encoding": "b64",
                "content": base64.b64encode(reseed_elf()).decode(),
            },
        ],
        # through sh: /run may be noexec (Debian's initramfs mounts it so)
        "runcmd": [f"setsid sh {AGENT_PATH} </dev/null >/dev/null 2>&1 &"],
        **guest.template_cfg,
    }


def handover(entropy: bytes, now: float, macs: list[tuple[str, str]], *, grow: bool) -> bytes:
    """The lines ketch sends a clone's agent, entropy first (pure).

    ``macs``: (the template's MAC, the clone's) of each NIC; ``grow``: the clone's
    disk is larger than the template's, so its root filesystem must grow.
    """
    lines = [
        f"entropy {base64.b64encode(entropy).decode()}",
        f"time {round(now)}",
        *(f"mac {old} {new}" for old, new in macs),
        *(["grow"] if grow else []),
        "go",
    ]
    return ("\n".join(lines) + "\n").encode()


def parse_reply(line: bytes) -> tuple[str, str]:
    """(word, rest) of one line the agent said: ``template-ready``, ``done``, ``warn X``."""
    text = line.decode("ascii", "replace").strip()
    word, _, rest = text.partition(" ")
    return word, rest
