"""Run an external program with a deadline and translate its failure once.

:func:`run` is the one way ketch runs a program to completion.  :func:`tool`
runs one of the host tools the image builds need (in the C locale): when the
program is missing, its error names the Debian package to install
(:data:`TOOL_PACKAGES`, the one table of them); when it fails, it carries the
caller's hint.  :func:`exited` waits for a program's end, not for its pipes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import HostCommandError, Timeout


@dataclass(frozen=True)
class Completed:
    """A finished program: its argv, exit code and captured output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


EXIT_POLL = 0.2  # seconds between two looks at an ended program whose pipes stay open


async def exited(proc: asyncio.subprocess.Process, *, poll: float = EXIT_POLL) -> int:
    """``proc``'s exit code once it has ended, even while another process holds its pipes.

    Python 3.11's ``Process.wait`` returns only once the pipes are closed as
    well; an ``ssh`` that rode on a master handed its pipes to the master,
    which may keep them after the ``ssh`` is gone.
    """
    waiting = asyncio.ensure_future(proc.wait())
    try:
        while proc.returncode is None and not waiting.done():
            await asyncio.wait({waiting}, timeout=poll)
    finally:
        waiting.cancel()
    assert proc.returncode is not None
    return proc.returncode


async def run(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    check: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Completed:
    """Run ``argv`` to completion; raise HostCommandError on failure when ``check``.

    On timeout the program is killed and :class:`Timeout` is raised.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
        )
    except OSError as exc:
        raise HostCommandError(list(argv), None, str(exc)) from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError as exc:
        proc.kill()
        await exited(proc)
        raise Timeout(f"{argv[0]} did not finish within {timeout:g} s") from exc
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()  # a cancelled caller leaves no program behind
        raise
    done = Completed(tuple(argv), proc.returncode or 0, out, err)
    if check and done.returncode != 0:
        raise HostCommandError(list(argv), done.returncode, err.decode("utf-8", "replace"))
    return done


#: The Debian package of each host tool ketch's image builds run, for the hint
#: when one is missing.
TOOL_PACKAGES: Mapping[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "debootstrap": "debootstrap",
    "setpriv": "util-linux",
    "unshare": "util-linux",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "mkfs.fat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "qemu-img": "qemu-utils",
}


def missing_tool_hint(program: str) -> str | None:
    """What to install when ``program`` (a name or path) is not there, if known."""
    package = TOOL_PACKAGES.get(Path(program).name)
    if package is None:
        return None
    return f"install the Debian package {package} (apt-get install {package})"


async def tool(
    argv: Sequence[str],
    *,
    timeout: float = 300,
    cwd: Path | None = None,
    hint: str | None = None,
) -> Completed:
    """Run a host tool in the C locale, checked.

    A missing program's :class:`HostCommandError` gets a hint naming its
    package (:func:`missing_tool_hint`); a failing one gets ``hint`` unless
    it has one already.
    """
    try:
        return await run(
            list(argv),
            timeout=timeout,
            cwd=None if cwd is None else str(cwd),
            env={"LC_ALL": "C"},
        )
    except HostCommandError as exc:
        missing = missing_tool_hint(argv[0]) if exc.returncode is None else None
        if missing is not None:
            exc.hint = missing
        elif exc.hint is None:
            exc.hint = hint
        raise
