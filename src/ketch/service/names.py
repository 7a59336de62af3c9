"""Instance names: hostname rules, and random names like Multipass's."""

from __future__ import annotations

import re
import secrets

from ketch.errors import InvalidArgument

_NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

_ADJECTIVES = (
    "agile", "amber", "brave", "bright", "calm", "clever", "crisp", "eager", "fair", "gentle",
    "glad", "golden", "happy", "jolly", "keen", "lively", "lucid", "merry", "nimble", "noble",
    "proud", "quick", "quiet", "rapid", "sharp", "shy", "solid", "steady", "sunny", "swift",
    "tidy", "vivid", "warm", "wise", "witty", "zesty",
)  # fmt: skip
_NOUNS = (
    "albatross", "auk", "bittern", "crane", "curlew", "dunlin", "egret", "falcon", "gannet",
    "godwit", "grebe", "heron", "ibis", "kestrel", "kite", "lapwing", "merlin", "osprey",
    "petrel", "plover", "puffin", "redshank", "shag", "skua", "snipe", "stint", "swift",
    "tern", "turnstone", "wagtail", "whimbrel", "wren",
)  # fmt: skip


# Multipass's sentences: the daemon's launch reply (src/client/cli/cmd/launch.cpp,
# "Invalid instance name supplied: {}") and the rule its --name help states.
VALID_NAMES = (
    "Valid names must consist of letters, numbers, or hyphens, must start with a letter, "
    "and must end with an alphanumeric character."
)


def validate(name: str, what: str = "instance") -> str:
    """Accept a hostname-shaped instance (or snapshot) name or raise InvalidArgument.

    An instance name is refused with Multipass's sentence first, ketch's reason after.
    """
    if what == "instance" and (("." in name) or not _NAME.fullmatch(name)):
        why = (
            '"." separates an instance from a snapshot'
            if "." in name
            else "names follow hostname rules"
        )
        raise InvalidArgument(
            f"Invalid instance name supplied: {name}",
            hint=f"{why}: {VALID_NAMES} At most 63 characters.",
        )
    if "." in name:
        raise InvalidArgument(
            f'invalid {what} name "{name}": "." separates an instance from a snapshot',
            hint="use letters, digits and hyphens",
        )
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f'invalid {what} name "{name}": names follow hostname rules',
            hint="start with a letter, use only letters, digits and hyphens, "
            "do not end with a hyphen, at most 63 characters",
        )
    return name


def random_name(taken: set[str]) -> str:
    """A fresh adjective-noun name not in ``taken``."""
    for _ in range(1000):
        name = f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"
        if name not in taken:
            return name
    return f"ketch-{secrets.token_hex(4)}"
