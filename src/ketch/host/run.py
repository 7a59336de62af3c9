"""Run an external program with a deadline and translate its failure once."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
        await proc.wait()
        raise Timeout(f"{argv[0]} did not finish within {timeout:g} s") from exc
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()  # a cancelled caller leaves no program behind
        raise
    done = Completed(tuple(argv), proc.returncode or 0, out, err)
    if check and done.returncode != 0:
        raise HostCommandError(list(argv), done.returncode, err.decode("utf-8", "replace"))
    return done


def run_sync(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    check: bool = True,
    input: bytes | None = None,
    cwd: str | None = None,
) -> Completed:
    """The blocking twin of :func:`run`, for code that runs in a worker thread."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise Timeout(f"{argv[0]} did not finish within {timeout:g} s") from exc
    except OSError as exc:
        raise HostCommandError(list(argv), None, str(exc)) from exc
    done = Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and done.returncode != 0:
        raise HostCommandError(list(argv), done.returncode, proc.stderr.decode("utf-8", "replace"))
    return done
