"""Port-forward rules as the user writes them: ``[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]``.

Pure and light (the CLI parses ``launch --forward`` and ``ketch forward`` with
it before anything is sent; the daemon parses again, since it trusts no
client).  The host address is an IPv4 address; it defaults to ``127.0.0.1``,
and any other (``0.0.0.0`` included) exists only in this explicit form:
automatic forwards always bind the host's loopback.
"""

from __future__ import annotations

from ketch.errors import InvalidArgument
from ketch.model import ForwardSpec, Protocol

LOOPBACK = "127.0.0.1"
RULE_HINT = "write [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp], e.g. 8080:80 or 127.0.0.1:5353:53/udp"
MAX_RULE = 64  # characters: "255.255.255.255:65535:65535/udp" is 31


def _port(text: str, what: str, rule: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise InvalidArgument(
            f"invalid port forward '{rule}': the {what} port '{text}' is not a number "
            "from 1 to 65535",
            hint=RULE_HINT,
        )
    return int(text)


def _ipv4(text: str, rule: str) -> str:
    parts = text.split(".")
    ok = len(parts) == 4 and all(
        p.isascii() and p.isdigit() and len(p) <= 3 and int(p) < 256 and str(int(p)) == p
        for p in parts
    )
    if not ok:
        raise InvalidArgument(
            f"invalid port forward '{rule}': the host address '{text}' is not an IPv4 address",
            hint=RULE_HINT + " (QEMU's user networking forwards from IPv4 host addresses)",
        )
    return text


def parse_rule(text: str) -> ForwardSpec:
    """``[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]`` as a :class:`ForwardSpec`; InvalidArgument
    naming what is wrong otherwise."""
    rule = text.strip()
    if not rule or len(rule) > MAX_RULE or any(not c.isprintable() for c in rule):
        shown = rule[:MAX_RULE] + ("…" if len(rule) > MAX_RULE else "")
        raise InvalidArgument(f"invalid port forward {shown!r}", hint=RULE_HINT)
    body, slash, proto = rule.partition("/")
    protocol = Protocol.TCP
    if slash:
        try:
            protocol = Protocol(proto.lower())
        except ValueError:
            raise InvalidArgument(
                f"invalid port forward '{rule}': unknown protocol '{proto}'",
                hint="the protocol is tcp (the default) or udp",
            ) from None
    parts = body.split(":")
    if len(parts) == 2:
        host_ip, (host, guest) = LOOPBACK, parts
    elif len(parts) == 3:
        host_ip, host, guest = _ipv4(parts[0], rule), parts[1], parts[2]
    else:
        raise InvalidArgument(
            f"invalid port forward '{rule}': expected HOSTPORT:GUESTPORT", hint=RULE_HINT
        )
    return ForwardSpec(
        host_ip=host_ip,
        host_port=_port(host, "host", rule),
        guest_port=_port(guest, "guest", rule),
        protocol=protocol,
    )


def format_rule(f: ForwardSpec) -> str:
    """The rule as the user would write it (``parse_rule`` reads it back)."""
    return f"{f.host_ip}:{f.host_port}:{f.guest_port}/{f.protocol.value}"
