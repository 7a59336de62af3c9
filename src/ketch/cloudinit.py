"""The cloud-init seed ketch gives each instance: user data, vendor merge, meta-data.

Pure: strings and dicts in, strings and dicts out.  The seed ISO itself is
written by :func:`ketch.host.seed.build_seed_iso`.

Rules of :func:`merge_vendor` (what ketch adds to the user's ``#cloud-config``):

* ketch's client public key is appended to the top-level
  ``ssh_authorized_keys`` and to the ``ssh_authorized_keys`` of any ``users``
  entry naming the default user (and of ``system_info.default_user``), unless
  already there; the user's own keys are kept, in order, before it.
* A ``users`` list keeps ``default`` (it is inserted first when the user's list
  lacks it), so the default user ketch logs in as always exists.
* ``ssh_keys`` carries the instance's pinned ed25519 host key.  The user may
  add keys of other types, but an ``ed25519_private``/``ed25519_public``
  (or ``ed25519_certificate``) of their own is **refused** with
  :class:`InvalidArgument`: ketch pins that key, so overriding it would only
  make every later connection fail with a host-key mismatch.
* ``hostname`` defaults to the instance name and ``preserve_hostname`` to
  false; the user may set either.

Limits: :func:`parse_user_data` refuses, with exit 1 and the limit named, a
file that is too large, has too many YAML nodes, expands too far through
aliases, or whose ``write_files`` decode to too much (``ketch.cloudlimits``).
The service layer calls it and the rendering through ``asyncio.to_thread``:
with those bounds a worker thread's memory is bounded, and the event loop
keeps serving while a large file is parsed (at most two at a time).
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import yaml

from ketch.cloudlimits import MAX_USER_DATA, MiB, check_write_files, load
from ketch.errors import InvalidArgument

HEADER = "#cloud-config"
_PARSERS = threading.BoundedSemaphore(2)  # concurrent parses (each bounded as above)

_PINNED_KEYS = ("ed25519_private", "ed25519_public", "ed25519_certificate")


def parse_user_data(text: str) -> dict[str, Any]:
    """Parse a user's ``#cloud-config`` file into a dict.

    The first line must be ``#cloud-config``; the YAML is read with the safe
    loader; a YAML error names its line and column; the document must be a
    mapping (an empty document is an empty mapping).
    """
    body = text.removeprefix("\ufeff")
    first = body.split("\n", 1)[0].rstrip()
    if first != HEADER:
        shown = first if len(first) <= 40 else first[:40] + "…"
        raise InvalidArgument(
            f"cloud-init file must start with a '{HEADER}' line, not {shown!r}",
            hint=f"ketch accepts cloud-config user data only; add '{HEADER}' as the "
            "first line (shell scripts go under 'runcmd:')",
        )
    size = len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_USER_DATA:
        raise InvalidArgument(
            f"cloud-init file is {size} bytes, over ketch's limit of {MAX_USER_DATA} bytes "
            f"({MAX_USER_DATA // MiB} MiB) for user data",
            hint="ship large files into the instance with 'ketch transfer' after launch",
        )
    with _PARSERS:
        data = load(body)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"cloud-init file must be a mapping of settings, not a {_yaml_kind(data)}",
            hint="top-level entries look like 'packages: [...]' or 'runcmd: [...]'",
        )
    check_write_files(data)
    return data


def _yaml_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _key_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(k, str) for k in value):
        return list(value)
    raise InvalidArgument(f"cloud-init '{where}' must be a list of public keys")


def _with_key(value: Any, key: str, where: str) -> list[Any]:
    keys = _key_list(value, where)
    if key.strip() not in (k.strip() for k in keys):
        keys.append(key)
    return keys


def merge_vendor(
    user: dict[str, Any] | None,
    *,
    default_user: str,
    client_public_key: str,
    host_key_private: str,
    host_key_public: str,
    hostname: str,
) -> dict[str, Any]:
    """The user's cloud-config with what ketch needs merged in (see module doc).

    ``user`` is not modified.
    """
    cfg: dict[str, Any] = copy.deepcopy(user) if user else {}
    client_key = client_public_key.strip()

    cfg["ssh_authorized_keys"] = _with_key(
        cfg.get("ssh_authorized_keys"), client_key, "ssh_authorized_keys"
    )

    if "users" in cfg:
        users = cfg["users"]
        if isinstance(users, str):
            users = [u.strip() for u in users.split(",") if u.strip()]
        if not isinstance(users, list):
            raise InvalidArgument("cloud-init 'users' must be a list")
        users = list(users)
        if "default" not in users:
            users.insert(0, "default")
        for i, entry in enumerate(users):
            if isinstance(entry, dict) and entry.get("name") == default_user:
                entry = dict(entry)
                entry["ssh_authorized_keys"] = _with_key(
                    entry.get("ssh_authorized_keys"),
                    client_key,
                    f"users[{i}].ssh_authorized_keys",
                )
                users[i] = entry
        cfg["users"] = users

    system_info = cfg.get("system_info")
    if isinstance(system_info, dict) and isinstance(system_info.get("default_user"), dict):
        du = system_info["default_user"]
        if "ssh_authorized_keys" in du:
            du["ssh_authorized_keys"] = _with_key(
                du["ssh_authorized_keys"],
                client_key,
                "system_info.default_user.ssh_authorized_keys",
            )

    ssh_keys = cfg.get("ssh_keys")
    if ssh_keys is None:
        ssh_keys = {}
    if not isinstance(ssh_keys, dict):
        raise InvalidArgument("cloud-init 'ssh_keys' must be a mapping")
    ours = {"ed25519_private": host_key_private, "ed25519_public": host_key_public.strip()}
    for key in _PINNED_KEYS:
        if key in ssh_keys and _norm(ssh_keys[key]) != _norm(ours.get(key)):
            raise InvalidArgument(
                f"cloud-init 'ssh_keys.{key}' cannot be set: ketch pins each "
                "instance's ed25519 host key",
                hint=f"remove ssh_keys.{key}; keys of other types may stay",
            )
    cfg["ssh_keys"] = {**ssh_keys, **ours}

    cfg.setdefault("hostname", hostname)
    cfg.setdefault("preserve_hostname", False)
    return cfg


def _norm(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (private keys, scripts) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _represent_str)


def render_user_data(cfg: dict[str, Any]) -> str:
    """``#cloud-config`` followed by ``cfg`` as YAML."""
    body = yaml.dump(
        cfg,
        Dumper=_Dumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
        width=1 << 16,
    )
    return f"{HEADER}\n{body}"


def meta_data(instance_id: str, hostname: str) -> str:
    """The NoCloud ``meta-data`` document."""
    return yaml.safe_dump(
        {"instance-id": instance_id, "local-hostname": hostname},
        default_flow_style=False,
        sort_keys=False,
    )
