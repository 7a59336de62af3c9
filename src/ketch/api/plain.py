"""The replies on ``ketch exec``'s path, decoded without msgspec (pure).

``ketch exec`` (and ``shell``, ``transfer``) needs one reply, an instance's
:class:`~ketch.api.instances.SshTargetReply`, and should cost less than half a
plain ``ssh`` (docs/benchmarks.md).  msgspec with the models would cost it some
25 ms of start-up (msgspec imports ``typing``, ``dataclasses``, ``inspect``,
``datetime``, ``decimal`` ...).  So this module decodes that reply, and the error
reply every route shares (:class:`~ketch.api.common.ErrorReply`), with the
standard library's ``json``, checked as msgspec checks them against their
models: every required field present, each of its type (a bool is not an int),
defaults applied, unknown fields ignored, and a wrong document named in
msgspec's own words (``Expected `int`, got `str` - at `$.port```).  The models
stay the contract: ``tests/unit/test_api_plain.py`` holds these decoders to
them, field by field and document by document.
"""

from __future__ import annotations

import json

from ketch.errors import RemoteError
from ketch.sshtarget import SshTarget

# The JSON type names msgspec's messages use, by the Python type json.loads gives.
_JSON_NAMES = {str: "str", int: "int", float: "float", bool: "bool", list: "array", dict: "object"}


class Malformed(ValueError):
    """A reply that is not what its model says; the message names the field, as msgspec."""


class SshReply:
    """A decoded :class:`~ketch.api.instances.SshTargetReply`: the target and the mounts.

    ``target.control_path`` is the reply's as sent ("" when there is no master);
    ``mounts`` are (SOURCE, TARGET) pairs, host path and guest path.
    """

    __slots__ = ("mounts", "target")

    def __init__(self, target: SshTarget, mounts: list[tuple[str, str]]) -> None:
        self.target = target
        self.mounts = mounts


def _got(value: object) -> str:
    return "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)


def _where(at: str) -> str:
    return f" - at `{at}`" if at != "$" else ""


def _object(value: object, at: str) -> dict[str, object]:
    if type(value) is not dict:
        raise Malformed(f"Expected `object`, got `{_got(value)}`{_where(at)}")
    return value


def _value(doc: dict[str, object], name: str, at: str) -> object:
    if name not in doc:
        raise Malformed(f"Object missing required field `{name}`{_where(at)}")
    return doc[name]


def _wrong(expected: str, value: object, at: str) -> Malformed:
    return Malformed(f"Expected `{expected}`, got `{_got(value)}` - at `{at}`")


def _str(doc: dict[str, object], name: str, at: str) -> str:
    value = _value(doc, name, at)
    if type(value) is str:
        return value
    raise _wrong("str", value, f"{at}.{name}")


def _int(doc: dict[str, object], name: str, at: str) -> int:
    value = _value(doc, name, at)
    if type(value) is int:  # not a bool, not a float
        return value
    raise _wrong("int", value, f"{at}.{name}")


def _list(doc: dict[str, object], name: str, at: str) -> list[object]:
    value = _value(doc, name, at)
    if type(value) is list:
        return value
    raise _wrong("array", value, f"{at}.{name}")


def _optional_str(doc: dict[str, object], name: str, at: str) -> str | None:
    value = doc.get(name)
    if value is None or type(value) is str:
        return value
    raise _wrong("str | null", value, f"{at}.{name}")


def _load(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise Malformed(f"JSON is malformed: {exc}") from exc


def ssh_target_reply(data: bytes) -> SshReply:
    """The body of ``GET /v1/instances/NAME/ssh`` (``SshTargetReply``); Malformed if it is not."""
    doc = _object(_load(data), "$")
    port = _int(doc, "port", "$")
    mounts: list[tuple[str, str]] = []
    for i, item in enumerate(_list(doc, "mounts", "$")):
        at = f"$.mounts[{i}]"
        mount = _object(item, at)
        mounts.append((_str(mount, "source", at), _str(mount, "target", at)))
    control = _str(doc, "control_path", "$") if "control_path" in doc else ""
    target = SshTarget(
        _str(doc, "name", "$"),
        _str(doc, "host", "$"),
        port,
        _str(doc, "user", "$"),
        _str(doc, "identity", "$"),
        _str(doc, "known_hosts", "$"),
        control,
    )
    return SshReply(target, mounts)


def error_reply(data: bytes) -> RemoteError:
    """The error of a 4xx/5xx body (``ErrorReply``), as the client raises it; Malformed if not."""
    doc = _object(_load(data), "$")
    err = _object(_value(doc, "error", "$"), "$.error")
    code = _int(err, "exit_code", "$.error") if "exit_code" in err else 2
    return RemoteError(
        _str(err, "code", "$.error"),
        _str(err, "message", "$.error"),
        _optional_str(err, "hint", "$.error"),
        code,
    )
