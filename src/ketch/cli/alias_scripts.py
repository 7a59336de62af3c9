"""The aliases' scripts: one executable per alias in ketch's bin directory, running ``ketch exec``.

* ``CONTEXT.ALIAS`` for every alias, and ``ALIAS`` for the one a bare name
  means (:meth:`~ketch.cli.alias_store.AliasDict.resolve`: the active
  context's, else the only one of that name), as Multipass's
  create_alias.cpp makes them.  Each is ``exec KETCH exec [-n] INSTANCE --
  COMMAND "$@"`` (:func:`script_text`), KETCH being the absolute path of the
  ketch that wrote it, every word quoted.
* After every change the bin directory is made to hold exactly those
  (:func:`sync_scripts`), so ``prefer`` re-points the bare names and a
  purge's removals take their scripts along; a file there that ketch did not
  write (no :data:`MARKER` line) is never removed nor overwritten.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
from pathlib import Path

from ketch.cli.alias_store import DIR_MODE, AliasDefinition, AliasDict, bin_dir

MARKER = "# ketch alias script: made by 'ketch alias', removed by 'ketch unalias'"
SCRIPT_MODE = 0o755


def ketch_argv() -> list[str]:
    """How a script runs this same ketch: its absolute path (or the interpreter and module)."""
    exe = sys.argv[0] if sys.argv else ""
    if os.path.basename(exe) == "ketch" and os.path.isfile(exe) and os.access(exe, os.X_OK):
        return [os.path.abspath(exe)]
    # -P: the directory the alias runs in (a project's) is not on sys.path
    return [os.path.abspath(sys.executable), "-P", "-m", "ketch.cli.main"]


def script_text(definition: AliasDefinition, ketch: list[str]) -> str:
    """The script: ``exec KETCH exec [-n] INSTANCE -- COMMAND "$@"``, every word quoted."""
    words = [*ketch, "exec"]
    if definition.working_directory == "default":
        words.append("-n")
    words += [definition.instance, "--", definition.command]
    return "#!/bin/sh\n" + MARKER + "\nexec " + " ".join(shlex.quote(w) for w in words) + ' "$@"\n'


def wanted_scripts(aliases: AliasDict) -> dict[str, AliasDefinition]:
    """Every script the bin directory should hold: file name → what it runs."""
    out: dict[str, AliasDefinition] = {}
    for aliases_of in aliases.contexts.values():
        for name in aliases_of:
            resolved = aliases.resolve(name)
            if resolved is not None:
                out[name] = resolved
    for context, aliases_of in aliases.contexts.items():
        for name, definition in aliases_of.items():
            out[f"{context}.{name}"] = definition
    return out


def is_ours(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return MARKER.encode() in f.read(4096).split(b"\n")[:3]
    except OSError:
        return False


def sync_scripts(aliases: AliasDict, home: Path | None = None) -> list[str]:
    """Make the bin directory hold exactly :func:`wanted_scripts`; warnings for what failed."""
    where = bin_dir(home)
    wanted = wanted_scripts(aliases)
    warnings: list[str] = []
    if not wanted and not where.is_dir():
        return warnings
    ketch = ketch_argv()
    try:
        where.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        where.mkdir(exist_ok=True, mode=DIR_MODE)
        present = sorted(p for p in where.iterdir() if p.name not in wanted and is_ours(p))
    except OSError as exc:
        return [f"cannot use the alias scripts' directory {where}: {exc.strerror}"]
    for stale in present:
        try:
            stale.unlink()
        except OSError as exc:
            warnings.append(f"'{exc.strerror}' when removing alias script {stale}")
    for name, definition in sorted(wanted.items()):
        try:
            write_script(where / name, script_text(definition, ketch))
        except OSError as exc:
            warnings.append(f"'{exc.strerror}' when writing alias script {where / name}")
    return warnings


class NotOurs(OSError):
    """A file of that name is in the bin directory and ketch did not write it."""


def write_script(path: Path, text: str) -> None:
    """Write ``path`` (0755) through a temporary file, unless it already says ``text``.

    Raises :class:`NotOurs` (an OSError) when a file there is not one of ketch's.
    """
    try:
        if path.read_text(encoding="utf-8") == text and os.access(path, os.X_OK):
            return
    except (OSError, UnicodeDecodeError):
        pass
    if (path.exists() or path.is_symlink()) and not is_ours(path):
        raise NotOurs(0, f"{path} exists and was not made by ketch")
    fd, tmp = tempfile.mkstemp(prefix=".alias-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, SCRIPT_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def path_hint(home: Path | None = None) -> str | None:
    """Multipass's message to put the bin directory on PATH; None when it is there already."""
    where = str(bin_dir(home).absolute())
    path = [os.path.normpath(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    if os.path.normpath(where) in path:
        return None
    # Multipass's platform_linux.cpp alias_path_message(), with ketch for multipass.
    return (
        "You'll need to add this to your shell configuration (.bashrc, .zshrc or so) for\n"
        f'aliases to work without prefixing with `ketch`:\n\nPATH="$PATH:{where}"\n'
    )
