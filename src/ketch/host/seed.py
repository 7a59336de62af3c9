"""The NoCloud seed ISO, and the shell-safe guest config ketch's tiny image reads.

**The seed ISO** (:func:`build_seed_iso`) is an ISO9660 filesystem with the
volume label ``cidata`` and Joliet + Rock Ridge names, holding ``meta-data``,
``user-data`` and, when given, ``vendor-data`` and ``network-config``: what
cloud-init's NoCloud datasource reads.  ketch attaches it to the guest as a
read-only virtio disk.  ``extra_files`` adds files beside them; ketch adds
:data:`GUEST_CONFIG_FILE`.

**The guest config** (:func:`render_guest_config`) is ``ketch-guest.sh``: the
cloud-config keys ketch's built-in ``tiny`` image understands, rendered by the
host into a form busybox ``sh`` can read without a YAML parser.  Real cloud
images ignore the file and read ``user-data``, which stays plain
``#cloud-config``.  Format 1::

    # comment lines
    ketch_format '1'
    ketch_meta 'instance-id' 'i-0123'              # every meta-data key
    ketch_meta 'local-hostname' 'web'
    ketch_hostname 'web'                            # hostname, fqdn or local-hostname
    ketch_host_key 'ed25519' '<base64 of the OpenSSH private key>'
    ketch_user NAME UID GECOS HOME SHELL GROUPS     # '' = default; GROUPS a,b,c
    ketch_user_sudo NAME 'ALL=(ALL) NOPASSWD:ALL'   # one line of sudoers each
    ketch_user_key NAME 'ssh-ed25519 AAAA... comment'
    ketch_write_file PATH PERMS OWNER MODE '<base64 content>'  # MODE append|replace
    ketch_runcmd '<base64 of the runcmd shell script>'

One call per line.  Every argument is a single-quoted sh word (a ``'`` inside
is written ``'"'"'``), so the guest can source the file with the ``ketch_*``
functions defined and no value is ever expanded or executed.  File contents
and the runcmd script are base64, so every record stays on one line; values
that would break a line of ``/etc/passwd``, ``/etc/group`` or sudoers (colons
or newlines in a user's fields, a newline in a sudo rule or key, bad names)
are refused with :class:`~ketch.errors.InvalidArgument`.

cloud-config keys understood: ``hostname``, ``fqdn``, ``preserve_hostname``, ``users``
(``default`` is the ``ubuntu`` user, or ``system_info.default_user``; dicts
with ``name``, ``gecos``, ``homedir``, ``shell``, ``groups``, ``uid``,
``sudo``, ``ssh_authorized_keys``),
``ssh_authorized_keys`` (for the default user), ``ssh_keys``
(``{rsa,ecdsa,ed25519}_private``), ``write_files`` (``path``, ``content``,
``encoding``, ``permissions``, ``owner``, ``append``, ``defer``) and
``runcmd``.  Other keys are left to real cloud-init.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import io
import os
import re
import shlex
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from ketch.errors import InvalidArgument, KetchError

VOLUME_LABEL = "cidata"
GUEST_CONFIG_FILE = "ketch-guest.sh"
GUEST_CONFIG_FORMAT = 1

DEFAULT_USER = "ubuntu"
_DEFAULT_USER_ENTRY: dict[str, Any] = {
    "name": DEFAULT_USER,
    "gecos": "Ubuntu",
    "groups": ["adm", "sudo"],
    "sudo": ["ALL=(ALL) NOPASSWD:ALL"],
    "shell": "/bin/sh",
}
_HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IID_RE = re.compile(r"[A-Za-z0-9_.:-]+")
_META_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+")
_PERMS_RE = re.compile(r"(0o|0)?([0-7]{1,4})")
_SEED_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# ---- the ISO -------------------------------------------------------------


def build_seed_iso(
    path: Path,
    *,
    meta_data: str,
    user_data: str,
    vendor_data: str | None = None,
    network_config: str | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> None:
    """Write a NoCloud seed ISO at ``path``, atomically (temp file + rename)."""
    files: dict[str, bytes] = {
        "meta-data": meta_data.encode(),
        "user-data": user_data.encode(),
    }
    if vendor_data is not None:
        files["vendor-data"] = vendor_data.encode()
    if network_config is not None:
        files["network-config"] = network_config.encode()
    for name, data in (extra_files or {}).items():
        if not _SEED_NAME_RE.fullmatch(name) or name in (".", ".."):
            raise InvalidArgument(f"invalid seed file name: {name!r}")
        if name in files:
            raise InvalidArgument(f"seed file {name!r} given twice")
        files[name] = bytes(data)

    path = Path(path)
    iso = pycdlib.PyCdlib()
    tmp: str | None = None
    try:
        iso.new(interchange_level=3, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
        used: set[str] = set()
        for name, data in files.items():
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                iso_path="/" + _iso9660_name(name, used),
                rr_name=name,
                joliet_path="/" + name,
            )
        # 0600: the seed holds the instance's private SSH host key.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            iso.write_fp(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, PyCdlibException) as exc:
        raise KetchError(f"cannot write the seed ISO {path}: {exc}") from exc
    finally:
        iso.close()
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _iso9660_name(name: str, used: set[str]) -> str:
    """A unique level-3 ISO9660 name (``NAME.EXT;1``) standing in for ``name``."""
    stem, dot, ext = name.upper().rpartition(".")
    if not dot:
        stem, ext = ext, ""
    stem = re.sub(r"[^A-Z0-9_]", "_", stem)[:24] or "FILE"
    ext = re.sub(r"[^A-Z0-9_]", "_", ext)[:3]
    candidate = f"{stem}.{ext}"
    n = 1
    while candidate in used:
        suffix = f"_{n}"
        candidate = f"{stem[: 24 - len(suffix)]}{suffix}.{ext}"
        n += 1
    used.add(candidate)
    return candidate + ";1"


# ---- the guest config ----------------------------------------------------


def sh_quote(value: str) -> str:
    """``value`` as one single-quoted sh word; nothing in it is ever expanded."""
    if "\x00" in value:
        raise InvalidArgument("a value contains a NUL character")
    return "'" + value.replace("'", "'\"'\"'") + "'"


def render_guest_config(cloud_config: dict[str, Any], meta: dict[str, str]) -> str:
    """Render ``ketch-guest.sh`` (format 1, see the module docstring)."""
    if not isinstance(cloud_config, dict):
        raise InvalidArgument("cloud-config must be a mapping")
    lines = [
        "# ketch guest config, generated by ketch from meta-data and #cloud-config.",
        "# Read by the ketch tiny image; every value is one single-quoted sh word.",
    ]

    def call(func: str, *args: str) -> None:
        lines.append(" ".join([func, *(sh_quote(a) for a in args)]))

    call("ketch_format", str(GUEST_CONFIG_FORMAT))

    iid = meta.get("instance-id")
    if not iid or not _IID_RE.fullmatch(iid) or iid in (".", ".."):
        raise InvalidArgument(f"invalid or missing instance-id: {iid!r}")
    for key, value in meta.items():
        if not _META_KEY_RE.fullmatch(key):
            raise InvalidArgument(f"invalid meta-data key: {key!r}")
        call("ketch_meta", key, _one_line(str(value), f"meta-data {key}"))

    hostname = None if cloud_config.get("preserve_hostname") else _hostname(cloud_config, meta)
    if hostname is not None:
        call("ketch_hostname", hostname)

    ssh_keys = cloud_config.get("ssh_keys") or {}
    if not isinstance(ssh_keys, dict):
        raise InvalidArgument("ssh_keys must be a mapping")
    for kind in _HOST_KEY_TYPES:
        private = ssh_keys.get(f"{kind}_private")
        if private is None:
            continue
        if not isinstance(private, str) or "PRIVATE KEY" not in private:
            raise InvalidArgument(f"ssh_keys.{kind}_private is not a private key")
        call("ketch_host_key", kind, _b64(private.encode()))

    for user in _users(cloud_config):
        name = user["name"]
        call(
            "ketch_user",
            name,
            user["uid"],
            user["gecos"],
            user["homedir"],
            user["shell"],
            ",".join(user["groups"]),
        )
        for rule in user["sudo"]:
            call("ketch_user_sudo", name, rule)
        for key in user["keys"]:
            call("ketch_user_key", name, key)

    for entry in _list(cloud_config.get("write_files"), "write_files"):
        path, perms, owner, mode, content = _write_file(entry)
        call("ketch_write_file", path, perms, owner, mode, _b64(content))

    runcmd = cloud_config.get("runcmd")
    if runcmd:
        call("ketch_runcmd", _b64(runcmd_script(runcmd).encode()))
    return "\n".join(lines) + "\n"


def runcmd_script(runcmd: Any) -> str:
    """cloud-config ``runcmd`` as the shell script cloud-init would write for it.

    A string is a line of shell; a list is one command whose words are quoted.
    """
    out = ["#!/bin/sh"]
    for item in _list(runcmd, "runcmd"):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list) and item:
            out.append(shlex.join(_scalar(w, "runcmd word") for w in item))
        else:
            raise InvalidArgument(f"runcmd entries must be strings or lists, not {item!r}")
    return "\n".join(out) + "\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _one_line(value: str, what: str) -> str:
    if "\n" in value or "\r" in value or "\x00" in value:
        raise InvalidArgument(f"{what} must be a single line")
    return value


def _scalar(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidArgument(f"{what} must be a string, not {value!r}")
    return str(value)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{what} must be a list")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidArgument(f"invalid {what}: {value!r}")
    return value


def _hostname(cloud_config: dict[str, Any], meta: dict[str, str]) -> str | None:
    if cloud_config.get("hostname"):
        value, what = cloud_config["hostname"], "hostname"
    elif cloud_config.get("fqdn"):
        value, what = str(cloud_config["fqdn"]).split(".", 1)[0], "fqdn"
    elif meta.get("local-hostname"):
        value, what = meta["local-hostname"].split(".", 1)[0], "local-hostname"
    else:
        return None
    if (
        not isinstance(value, str)
        or len(value) > 64
        or not all(_HOST_LABEL_RE.fullmatch(label) for label in value.split("."))
    ):
        raise InvalidArgument(f"invalid {what}: {value!r}")
    return value


def _passwd_field(value: Any, what: str) -> str:
    if value is None:
        return ""
    text = _scalar(value, what)
    if ":" in text or "\n" in text or "\r" in text:
        raise InvalidArgument(f"{what} must not contain ':' or a newline")
    return _one_line(text, what)


def _strings(value: Any, what: str) -> list[str]:
    """A string or a list of strings, as cloud-config allows for keys and rules."""
    if value is None or value is False:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument(f"{what} must be a string or a list of strings")


def _users(cloud_config: dict[str, Any]) -> list[dict[str, Any]]:
    raw = cloud_config.get("users", ["default"])
    if isinstance(raw, str):
        raw = [u.strip() for u in raw.split(",") if u.strip()]
    elif isinstance(raw, dict):
        raw = [{"name": k, **(v or {})} for k, v in raw.items()]
    entries = _list(raw, "users")
    users: list[dict[str, Any]] = []
    top_keys = _strings(cloud_config.get("ssh_authorized_keys"), "ssh_authorized_keys")
    default_entry = dict(_DEFAULT_USER_ENTRY)
    system_info = cloud_config.get("system_info")
    if isinstance(system_info, dict) and isinstance(system_info.get("default_user"), dict):
        default_entry.update(system_info["default_user"])
    for entry in entries:
        default = entry == "default"
        if default:
            entry = default_entry
        elif isinstance(entry, str):
            entry = {"name": entry}
        elif not isinstance(entry, dict):
            raise InvalidArgument(f"users entries must be 'default', names or mappings: {entry!r}")
        name = _name(entry.get("name"), "user name")
        what = f"user {name}"
        uid = entry.get("uid")
        if uid is not None and (
            isinstance(uid, bool) or not str(uid).isdigit() or int(str(uid)) > 2**31
        ):
            raise InvalidArgument(f"{what}: invalid uid {uid!r}")
        home = _passwd_field(entry.get("homedir"), f"{what}: homedir")
        shell = _passwd_field(entry.get("shell"), f"{what}: shell")
        for path, key in ((home, "homedir"), (shell, "shell")):
            if path and not path.startswith("/"):
                raise InvalidArgument(f"{what}: {key} must be an absolute path")
        groups_raw = entry.get("groups")
        if isinstance(groups_raw, str):
            groups_raw = [g.strip() for g in groups_raw.split(",") if g.strip()]
        groups = [_name(g, f"{what}: group") for g in _list(groups_raw, f"{what}: groups")]
        sudo_raw = entry.get("sudo")
        if sudo_raw is True:
            raise InvalidArgument(f"{what}: sudo must be a rule such as 'ALL=(ALL) NOPASSWD:ALL'")
        rules = [_one_line(r, f"{what}: sudo rule") for r in _strings(sudo_raw, f"{what}: sudo")]
        keys = _strings(entry.get("ssh_authorized_keys"), f"{what}: ssh_authorized_keys")
        if default:
            keys = keys + top_keys
        keys = [_one_line(k.strip(), f"{what}: ssh key") for k in keys if k.strip()]
        users.append(
            {
                "name": name,
                "uid": "" if uid is None else str(uid),
                "gecos": _passwd_field(entry.get("gecos"), f"{what}: gecos"),
                "homedir": home,
                "shell": shell,
                "groups": groups,
                "sudo": rules,
                "keys": _dedupe(keys),
            }
        )
    return users


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _write_file(entry: Any) -> tuple[str, str, str, str, bytes]:
    if not isinstance(entry, dict):
        raise InvalidArgument("write_files entries must be mappings")
    path = entry.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument(f"write_files: path must be absolute: {path!r}")
    path = _one_line(path, "write_files: path")
    what = f"write_files {path}"
    perms_raw = entry.get("permissions", "0644")
    if isinstance(perms_raw, int) and not isinstance(perms_raw, bool):
        if not 0 <= perms_raw <= 0o7777:
            raise InvalidArgument(f"{what}: invalid permissions {perms_raw!r}")
        perms = f"{perms_raw:04o}"
    else:
        match = _PERMS_RE.fullmatch(str(perms_raw).strip())
        if not match:
            raise InvalidArgument(f"{what}: invalid permissions {perms_raw!r}")
        perms = match.group(2).rjust(4, "0")
    owner = entry.get("owner", "root:root")
    if not isinstance(owner, str):
        raise InvalidArgument(f"{what}: owner must be 'user' or 'user:group'")
    for part in owner.split(":", 1):
        if not (part.isdigit() or _NAME_RE.fullmatch(part)):
            raise InvalidArgument(f"{what}: invalid owner {owner!r}")
    mode = "append" if entry.get("append") else "replace"
    return path, perms, owner, mode, _content(entry, what)


def _content(entry: dict[str, Any], what: str) -> bytes:
    content = entry.get("content", "")
    if content is None:
        content = ""
    data = content.encode() if isinstance(content, str) else content
    if not isinstance(data, bytes):
        raise InvalidArgument(f"{what}: content must be a string")
    encoding = str(entry.get("encoding", "text/plain")).strip().lower()
    try:
        if encoding in ("b64", "base64"):
            return base64.b64decode(data, validate=False)
        if encoding in ("gz", "gzip"):
            return gzip.decompress(data)
        if encoding in ("gz+base64", "gzip+base64", "gz+b64", "gzip+b64"):
            return gzip.decompress(base64.b64decode(data))
    except (binascii.Error, OSError, EOFError) as exc:
        raise InvalidArgument(f"{what}: content is not valid {encoding}: {exc}") from exc
    if encoding in ("text/plain", "text", "plain", ""):
        return data
    raise InvalidArgument(f"{what}: unsupported encoding {encoding!r}")
