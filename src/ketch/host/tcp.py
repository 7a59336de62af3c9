"""One TCP question, bounded: does a connection to ADDRESS:PORT succeed now?

Asked of a guest's managed address before it is handed out (``service/guestlink.py``)
and of a jump's listener while it starts (``host/ssh/jump.py``).
"""

from __future__ import annotations

import asyncio
import contextlib


async def reachable(address: str, port: int, timeout: float) -> bool:
    """Does a TCP connection to ``address:port`` succeed within ``timeout``?"""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
