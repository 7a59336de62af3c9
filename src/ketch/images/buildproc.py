"""Build a built-in image (tiny, debian-12) in a child process with umask 022.

ketchd runs with umask 077 so that what it creates in the storage root is its
user's alone.  An image build must not inherit that: the guest's filesystem
is made from the files the build stages, so a 0700 staged ``/`` or ``/lib``
would leave the guest's default user unable to run anything (seen: every
``ketch exec`` exited 1 in a tiny image built by ketchd).  The build's result
must not depend on its builder's umask at all, so ketchd never builds in its
own process: it runs ``python -m ketch.images.buildproc NAME DIR [--force]``,
whose first act is ``umask 022`` (what debootstrap sets for itself too), and
relays the child's progress.  Changing the daemon's own umask for the length
of a build would race with every other operation running meanwhile.

The child writes one JSON object a line on stdout: ``step``, ``progress`` and
``warning`` events, then ``result`` (the :class:`ImageInfo`) or ``error`` (a
ketch error's code, message, hint and exit code).  Anything else it prints,
and a child that dies without a last word, is an :class:`ImageError` naming
what it said on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ketch.errors import ImageError, KetchError, RemoteError
from ketch.model import BootSpec, ImageInfo
from ketch.progress import Reporter

BUILD_UMASK = 0o022
NAMES = ("tiny", "debian-12")


class _LineReporter:
    """The child's reporter: one JSON event a line on stdout."""

    def emit(self, event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def step(self, message: str) -> None:
        self.emit({"type": "step", "message": message})

    def progress(self, label: str, done: int, total: int | None) -> None:
        self.emit({"type": "progress", "label": label, "done": done, "total": total})

    def warn(self, message: str) -> None:
        self.emit({"type": "warning", "message": message})


def _builder(name: str) -> Callable[..., Coroutine[Any, Any, ImageInfo]]:
    if name == "tiny":
        from ketch.images.tiny import build_tiny

        return build_tiny
    from ketch.images.debian import build_debian

    return build_debian


def info_from_json(doc: dict[str, Any]) -> ImageInfo:
    """The :class:`ImageInfo` a child sent (``dataclasses.asdict`` form)."""
    boot = BootSpec(**doc["boot"])
    return ImageInfo(**{**doc, "boot": boot, "aliases": tuple(doc.get("aliases", ()))})


def main(argv: list[str] | None = None) -> int:
    """The child: ``python -m ketch.images.buildproc NAME DIR [--force]``."""
    os.umask(BUILD_UMASK)
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or args[0] not in NAMES or args[2:] not in ([], ["--force"]):
        sys.stderr.write("usage: python -m ketch.images.buildproc tiny|debian-12 DIR [--force]\n")
        return 2
    reporter = _LineReporter()
    build = _builder(args[0])
    try:
        info: ImageInfo = asyncio.run(build(Path(args[1]), reporter, force=args[2:] == ["--force"]))
    except KetchError as exc:
        reporter.emit({"type": "error", "error": exc.to_dict()})
        return 1
    reporter.emit({"type": "result", "info": asdict(info)})
    return 0


def child_argv(name: str, images_dir: Path) -> list[str]:
    """The build child's command (``-P``: the daemon's working directory is not on its path)."""
    return [sys.executable, "-P", "-m", "ketch.images.buildproc", name, str(images_dir)]


async def build_in_child(
    name: str, images_dir: Path, reporter: Reporter, *, force: bool = False
) -> ImageInfo:
    """Build ``name`` below ``images_dir`` in a child process (see the module)."""
    argv = child_argv(name, images_dir)
    proc = await asyncio.create_subprocess_exec(
        *argv + (["--force"] if force else []),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 20,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())
    last: dict[str, Any] | None = None
    try:
        while line := await proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a stray line from a tool: not an event
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "step":
                reporter.step(str(event["message"]))
            elif kind == "progress":
                reporter.progress(str(event["label"]), int(event["done"]), event.get("total"))
            elif kind == "warning":
                reporter.warn(str(event["message"]))
            elif kind in ("result", "error"):
                last = event
        await proc.wait()
    except BaseException:  # cancelled (the daemon stops): the build goes with it
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        stderr.cancel()
        raise
    said = (await stderr).decode(errors="replace").strip()
    if last is not None and last["type"] == "result":
        return info_from_json(last["info"])
    if last is not None:
        err = last["error"]
        raise RemoteError(err["code"], err["message"], err.get("hint"), err["exit_code"])
    raise ImageError(
        f"building the {name} image failed (the build process exited {proc.returncode})"
        + (f": {said.splitlines()[-1]}" if said else ""),
        hint="see ketchd.log in the storage root",
    )


if __name__ == "__main__":
    sys.exit(main())
