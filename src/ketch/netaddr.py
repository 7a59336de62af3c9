"""``HOST:PORT`` as ``local.address``, ``ketchd --address`` and ``KETCH_SERVER_ADDRESS`` take it.

Pure; shared by the daemon's TLS listener, the settings and the remote client.
"""

from __future__ import annotations

from ketch.errors import InvalidArgument


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a pair; InvalidArgument naming what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(
            f"invalid address '{text}'",
            hint="give it as HOST:PORT, e.g. 127.0.0.1:7341 (a port from 1 to 65535)",
        )
    return host, int(port)
