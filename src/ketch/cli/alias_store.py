"""The client's aliases (Multipass's ``AliasDict``): contexts of aliases, a JSON file, scripts.

Aliases belong to the user, not to a daemon (Multipass keeps them on the
client's side too): the file is ``aliases.json`` in ketch's data directory
(``$XDG_DATA_HOME/ketch``, :func:`alias_home`), and each alias is an
executable script in its ``bin`` directory that runs ``ketch exec``.

* The dictionary maps context names to contexts, a context maps alias names
  to :class:`AliasDefinition` (instance, command, working directory ``map``
  or ``default``); one context is active (``default`` at first).  The file
  has Multipass's shape (``{"active-context": ..., "contexts": {...}}``;
  Multipass's older flat shape reads into ``default``), is written whole to a
  temporary file and renamed over the old one, under a lock, and contexts
  left empty are dropped on saving, except the active one (as
  ``AliasDict::sanitize_contexts``).  A file that is not what it should be
  is an error that names it, never silently replaced (Multipass starts over).
* :func:`changing` (load, change, save under a lock) then brings the
  scripts in line with the dictionary (:mod:`ketch.cli.alias_scripts`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ketch.errors import InvalidArgument, KetchError

DEFAULT_CONTEXT = "default"  # Multipass's default_context_name
ALIASES_FILE = "aliases.json"
BIN_DIR = "bin"
LOCK_FILE = ".aliases.lock"
WORKING_DIRECTORIES = ("map", "default")
DIR_MODE = 0o700  # the home and its bin directory: the user's alone (see make_home)
FILE_MODE = 0o600


class AliasFileError(KetchError):
    """The aliases file cannot be read or written, or is not an aliases file."""

    code = "alias-file"


def alias_home() -> Path:
    """ketch's data directory for the user: ``$XDG_DATA_HOME/ketch`` (aliases.json, bin/)."""
    from ketch.layout import xdg_data_home

    return Path(xdg_data_home()) / "ketch"


def make_home(home: Path) -> None:
    """Create the aliases' home 0700 (and its files 0600, :data:`FILE_MODE`).

    By default it is also the default storage root (``$XDG_DATA_HOME/ketch``),
    which ketchd refuses when others may open it (``daemon/trust.py``): an
    alias made before the first daemon start must not make the root 0755.
    """
    home.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)


def bin_dir(home: Path | None = None) -> Path:
    """Where the alias scripts are."""
    return (home or alias_home()) / BIN_DIR


@dataclass(frozen=True)
class AliasDefinition:
    """What an alias runs: Multipass's ``AliasDefinition``."""

    instance: str
    command: str
    working_directory: str = "map"  # "map": map the host's directory; "default": the home

    def to_json(self) -> dict[str, str]:
        return {
            "command": self.command,
            "instance": self.instance,
            "working-directory": self.working_directory,
        }


@dataclass
class AliasDict:
    """Contexts of aliases and the active one (see the module doc)."""

    active: str = DEFAULT_CONTEXT
    contexts: dict[str, dict[str, AliasDefinition]] = field(
        default_factory=lambda: {DEFAULT_CONTEXT: {}}
    )

    # -- queries ---------------------------------------------------------------------

    def empty(self) -> bool:
        return not any(self.contexts.values())

    def active_context(self) -> dict[str, AliasDefinition]:
        return self.contexts.setdefault(self.active, {})

    def exists_alias(self, name: str) -> bool:
        """Is there an alias ``name`` in any context?"""
        return any(name in c for c in self.contexts.values())

    def resolve(self, name: str) -> AliasDefinition | None:
        """What the bare name means: the active context's alias, else the only one so named."""
        if name in self.active_context():
            return self.active_context()[name]
        found = [c[name] for c in self.contexts.values() if name in c]
        return found[0] if len(found) == 1 else None

    def get_context_and_alias(self, name: str) -> tuple[str, str] | None:
        """``ALIAS`` in the active context, or ``CONTEXT.ALIAS`` (split at the last dot)."""
        if name in self.active_context():
            return self.active, name
        context, dot, alias = name.rpartition(".")
        if dot and alias in self.contexts.get(context, {}):
            return context, alias
        return None

    # -- changes ---------------------------------------------------------------------

    def set_active_context(self, name: str) -> None:
        self.active = name
        self.contexts.setdefault(name, {})

    def add_alias(self, name: str, definition: AliasDefinition) -> bool:
        """Add to the active context; False if it has one of that name already."""
        context = self.active_context()
        if name in context:
            return False
        context[name] = definition
        return True

    def remove_alias(self, context: str, name: str) -> bool:
        return self.contexts.get(context, {}).pop(name, None) is not None

    def remove_aliases_for_instance(self, instance: str) -> list[tuple[str, str]]:
        """Drop the context named as the instance and every alias running on it (as Multipass)."""
        removed = [(instance, a) for a in sorted(self.contexts.get(instance, {}))]
        if instance in self.contexts:
            del self.contexts[instance]
            if self.active == instance:
                self.set_active_context(DEFAULT_CONTEXT)
        for context, aliases in self.contexts.items():
            for name in sorted(aliases):
                if aliases[name].instance == instance:
                    removed.append((context, name))
        for context, name in removed:
            self.remove_alias(context, name)
        return removed

    def sanitize(self) -> None:
        """Drop empty contexts but the active one (Multipass's ``sanitize_contexts``)."""
        for name in [n for n, c in self.contexts.items() if not c and n != self.active]:
            del self.contexts[name]
        self.contexts.setdefault(self.active, {})

    # -- the file --------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        """Multipass's ``AliasDict::to_json``: keys sorted, as Qt writes them."""
        return {
            "active-context": self.active,
            "contexts": {
                c: {a: d.to_json() for a, d in sorted(aliases.items())}
                for c, aliases in sorted(self.contexts.items())
            },
        }

    @classmethod
    def from_json(cls, doc: object, where: Path) -> AliasDict:
        def bad(what: str) -> AliasFileError:
            return AliasFileError(
                f"the aliases file {where} is not an aliases file: {what}",
                hint=f"repair or move it away (ketch starts over without it): {where}",
            )

        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        if not doc:
            return cls()
        if "active-context" in doc:
            active = doc["active-context"]
            contexts = doc.get("contexts", {})
            if not isinstance(active, str) or not isinstance(contexts, dict):
                raise bad("'active-context' is not a name or 'contexts' not an object")
        else:  # Multipass's shape before contexts: every alias is in "default"
            active, contexts = DEFAULT_CONTEXT, {DEFAULT_CONTEXT: doc}
        out = cls(active=active, contexts={})
        for cname, aliases in contexts.items():
            if not isinstance(aliases, dict):
                raise bad(f"context {cname!r} is not an object")
            ctx: dict[str, AliasDefinition] = {}
            for aname, rec in aliases.items():
                if not isinstance(rec, dict):
                    raise bad(f"alias {cname}.{aname} is not an object")
                instance, command = rec.get("instance"), rec.get("command")
                wd = rec.get("working-directory") or "default"  # Multipass's default on reading
                if not isinstance(instance, str) or not isinstance(command, str):
                    raise bad(f"alias {cname}.{aname} has no instance or command")
                if wd not in WORKING_DIRECTORIES:
                    raise bad(f'invalid working_directory string "{wd}" in {cname}.{aname}')
                ctx[aname] = AliasDefinition(instance, command, wd)
            out.contexts[cname] = ctx
        out.contexts.setdefault(out.active, {})
        return out


def qt_json(value: object, indent: int = 0) -> str:
    """JSON as Qt's ``QJsonDocument::Indented`` writes it (Multipass's output, byte for byte).

    Four spaces a level, ``"key": value``, and an empty object written
    ``{`` newline ``}`` (Python's json writes ``{}``).
    """
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, dict):
        items = [f"{inner}{qt_json(k)}: {qt_json(v, indent + 4)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + ("\n" if items else "") + pad + "}"
    return json.dumps(value, ensure_ascii=False)


def load(home: Path | None = None) -> AliasDict:
    """The user's aliases; an empty dictionary when there is no file yet."""
    path = (home or alias_home()) / ALIASES_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AliasDict()
    except (OSError, UnicodeDecodeError) as exc:
        raise AliasFileError(f"cannot read the aliases file {path}: {exc}") from exc
    try:
        doc = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise AliasFileError(
            f"the aliases file {path} is not valid JSON: {exc}",
            hint=f"repair or move it away (ketch starts over without it): {path}",
        ) from exc
    return AliasDict.from_json(doc, path)


def save(aliases: AliasDict, home: Path | None = None) -> None:
    """Write the file whole: a temporary file beside it, renamed over it."""
    home = home or alias_home()
    aliases.sanitize()
    path = home / ALIASES_FILE
    try:
        make_home(home)
        fd, tmp = tempfile.mkstemp(prefix=".aliases-", suffix=".tmp", dir=home)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(qt_json(aliases.to_json()) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise AliasFileError(f"cannot write the aliases file {path}: {exc.strerror}") from exc


@contextlib.contextmanager
def changing(home: Path | None = None) -> Iterator[AliasDict]:
    """Load, let the caller change, save and sync the scripts; one writer at a time."""
    import fcntl

    home = home or alias_home()
    try:
        make_home(home)
        lock = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AliasFileError(f"cannot lock the aliases in {home}: {exc.strerror}") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        aliases = load(home)
        yield aliases
        save(aliases, home)
        from ketch.cli.alias_scripts import sync_scripts

        for warning in sync_scripts(aliases, home):
            print(f"Warning: {warning}", file=sys.stderr)
    finally:
        os.close(lock)


# -- names --------------------------------------------------------------------------


def check_name(name: str, what: str = "Alias") -> str:
    """A name that can be a file of the bin directory (Multipass: "has to be a valid filename")."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\0" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise InvalidArgument(
            f"{what} has to be a valid filename",
            hint="a name without '/', not empty, '.' or '..', e.g. 'ls' or 'docker-compose'",
        )
    return name
