"""The end of a guest session's output: when its program ends, whoever holds the pipe.

Real processes: ``sh`` prints and exits while a background ``sleep`` it started
keeps the pipe's write end open, as an ssh master keeps the pipes a killed
``ssh`` handed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess

from ketch.host.ssh.session import until_exit

HANG_BOUND = 60.0  # seconds: a bound against a hang, not a timing criterion


async def _read_all(script: str) -> tuple[bytes, asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", script, stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    got = bytearray()

    async def collect() -> None:
        assert proc.stdout is not None
        async for chunk in until_exit(proc, proc.stdout, drain=0.2):
            got.extend(chunk)

    try:
        await asyncio.wait_for(collect(), HANG_BOUND)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the background holder too
        await asyncio.wait_for(proc.wait(), HANG_BOUND)  # its pipe is closed now
        await asyncio.sleep(0.1)  # the loop closes the transport in callbacks still queued
    return bytes(got), proc


def test_output_ends_when_the_program_does_though_another_holds_the_pipe() -> None:
    out, proc = asyncio.run(_read_all("echo first; (sleep 300 &); echo last"))
    assert out == b"first\nlast\n"
    assert proc.returncode == 0


def test_output_printed_just_before_the_end_is_kept() -> None:
    out, _ = asyncio.run(_read_all("head -c 200000 /dev/zero | tr '\\0' x; exit 3"))
    assert out == b"x" * 200000


def test_a_program_that_keeps_printing_is_read_until_it_ends() -> None:
    out, proc = asyncio.run(_read_all("for i in 1 2 3; do echo $i; sleep 0.1; done"))
    assert out == b"1\n2\n3\n"
    assert proc.returncode == 0
