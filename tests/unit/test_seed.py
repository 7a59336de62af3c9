"""The NoCloud seed ISO and the shell-safe guest config (ketch.host.seed)."""

from __future__ import annotations

import base64
import gzip
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from ketch.errors import InvalidArgument, KetchError
from ketch.host.seed import (
    GUEST_CONFIG_FILE,
    build_seed_iso,
    render_guest_config,
    runcmd_script,
    sh_quote,
)

META = {"instance-id": "i-0123", "local-hostname": "web"}


def read_iso(path: Path) -> tuple[str, dict[str, bytes], dict[str, bytes]]:
    """(volume label, files by Rock Ridge name, files by Joliet name)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        rr: dict[str, bytes] = {}
        joliet: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            rr[name] = out.getvalue()
        for child in iso.list_children(joliet_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.file_identifier().decode("utf-16_be")
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path="/" + name)
            joliet[name] = out.getvalue()
    finally:
        iso.close()
    return label, rr, joliet


# ---- the ISO ---------------------------------------------------------------


def test_seed_iso_has_label_and_files(tmp_path: Path) -> None:
    iso = tmp_path / "cidata.iso"
    build_seed_iso(iso, meta_data="instance-id: i-1\n", user_data="#cloud-config\n{}\n")
    label, rr, joliet = read_iso(iso)
    assert label == "cidata"
    assert rr == {"meta-data": b"instance-id: i-1\n", "user-data": b"#cloud-config\n{}\n"}
    assert joliet == rr


def test_seed_iso_optional_and_extra_files(tmp_path: Path) -> None:
    iso = tmp_path / "cidata.iso"
    build_seed_iso(
        iso,
        meta_data="m",
        user_data="u",
        vendor_data="v",
        network_config="n",
        extra_files={GUEST_CONFIG_FILE: b"ketch_format '1'\n"},
    )
    _, rr, joliet = read_iso(iso)
    assert rr == {
        "meta-data": b"m",
        "user-data": b"u",
        "vendor-data": b"v",
        "network-config": b"n",
        "ketch-guest.sh": b"ketch_format '1'\n",
    }
    assert joliet == rr


def test_seed_iso_replaces_atomically(tmp_path: Path) -> None:
    iso = tmp_path / "cidata.iso"
    iso.write_bytes(b"old")
    build_seed_iso(iso, meta_data="m2", user_data="u2")
    assert read_iso(iso)[1]["meta-data"] == b"m2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cidata.iso"]


def test_seed_iso_is_private_and_errors_are_ketch_errors(tmp_path: Path) -> None:
    iso = tmp_path / "cidata.iso"
    build_seed_iso(iso, meta_data="m", user_data="u")
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600  # it holds the private host key
    with pytest.raises(KetchError, match="cannot write the seed ISO"):
        build_seed_iso(tmp_path / "missing" / "x.iso", meta_data="m", user_data="u")


@pytest.mark.skipif(shutil.which("blkid") is None, reason="needs blkid")
def test_seed_iso_label_as_blkid_sees_it(tmp_path: Path) -> None:
    iso = tmp_path / "cidata.iso"
    build_seed_iso(iso, meta_data="m", user_data="u")
    out = subprocess.run(
        ["blkid", "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True
    )
    assert out.stdout.strip() == "cidata"


@pytest.mark.parametrize("name", ["", "a/b", "..", "with space", "meta-data"])
def test_seed_iso_refuses_bad_extra_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument):
        build_seed_iso(tmp_path / "x.iso", meta_data="m", user_data="u", extra_files={name: b""})
    assert not (tmp_path / "x.iso").exists()


# ---- quoting ---------------------------------------------------------------

HOSTILE = [
    "'; touch PWNED; '",
    "$(touch PWNED)",
    "`touch PWNED`",
    "a\nb\ntouch PWNED",
    "\\'\\\"$HOME${IFS}*?[a]~!#",
    "'",
    "",
]


def sh_words(script: str, cwd: Path) -> list[list[str]]:
    """Source ``script`` with every ketch_* call stubbed; the calls and their arguments."""
    stubs = "\n".join(
        f'{f}() {{ printf "%s\\0" {f} "$@"; printf "\\001"; }}'
        for f in (
            "ketch_format",
            "ketch_meta",
            "ketch_hostname",
            "ketch_host_key",
            "ketch_user",
            "ketch_user_sudo",
            "ketch_user_key",
            "ketch_write_file",
            "ketch_runcmd",
            "echo_words",
        )
    )
    (cwd / "config.sh").write_text(script)
    out = subprocess.run(
        ["sh", "-c", stubs + "\n. ./config.sh\n"],
        cwd=cwd,
        capture_output=True,
        check=True,
    ).stdout
    calls = []
    for record in out.split(b"\x01"):
        if record:
            calls.append([w.decode() for w in record.split(b"\0")[:-1]])
    return calls


@pytest.mark.parametrize("value", HOSTILE)
def test_sh_quote_round_trips_through_sh(tmp_path: Path, value: str) -> None:
    calls = sh_words(f"echo_words {sh_quote(value)} {sh_quote(value)}\n", tmp_path)
    assert calls == [["echo_words", value, value]]
    assert not (tmp_path / "PWNED").exists()


def test_sh_quote_refuses_nul() -> None:
    with pytest.raises(InvalidArgument):
        sh_quote("a\0b")


def test_hostile_values_are_data(tmp_path: Path) -> None:
    evil = "'; touch PWNED; echo '$(touch PWNED)`touch PWNED`"
    cc: dict[str, Any] = {
        "users": [
            "default",
            {
                "name": "eve",
                "gecos": evil,
                "homedir": "/home/" + evil.replace(":", ""),
                "sudo": "ALL=(ALL) NOPASSWD: /bin/echo " + evil,
                "ssh_authorized_keys": ["ssh-ed25519 AAAA " + evil],
            },
        ],
        "write_files": [
            {"path": "/tmp/" + evil, "content": evil + "\n" + evil, "owner": "eve:eve"}
        ],
        "runcmd": [evil, ["echo", evil]],
    }
    script = render_guest_config(cc, {**META, "extra": evil})
    calls = sh_words(script, tmp_path)
    assert not (tmp_path / "PWNED").exists()
    by_name: dict[str, list[list[str]]] = {}
    for call in calls:
        by_name.setdefault(call[0], []).append(call[1:])
    assert ["extra", evil] in by_name["ketch_meta"]
    eve = by_name["ketch_user"][1]
    assert eve[0] == "eve" and eve[2] == evil
    assert by_name["ketch_user_sudo"][1] == ["eve", "ALL=(ALL) NOPASSWD: /bin/echo " + evil]
    assert by_name["ketch_user_key"] == [["eve", "ssh-ed25519 AAAA " + evil]]
    path, perms, owner, mode, content = by_name["ketch_write_file"][0]
    assert (path, perms, owner, mode) == ("/tmp/" + evil, "0644", "eve:eve", "replace")
    assert base64.b64decode(content) == (evil + "\n" + evil).encode()
    (runcmd,) = by_name["ketch_runcmd"]
    assert base64.b64decode(runcmd[0]).decode() == runcmd_script([evil, ["echo", evil]])
    # One record per line: every line is a comment or a single call.
    for line in script.splitlines():
        assert line.startswith(("#", "ketch_"))


@pytest.mark.parametrize(
    "cc",
    [
        {"hostname": "web; touch PWNED"},
        {"hostname": "a\nb"},
        {"hostname": "$(x)"},
        {"users": [{"name": "eve", "gecos": "x:0:0:root"}]},
        {"users": [{"name": "eve", "gecos": "line\nroot::0:0::/:/bin/sh"}]},
        {"users": [{"name": "eve", "shell": "/bin/sh\nroot"}]},
        {"users": [{"name": "eve", "homedir": "relative"}]},
        {"users": [{"name": "eve; rm -rf /"}]},
        {"users": [{"name": "root:x"}]},
        {"users": [{"name": "eve", "groups": ["ok", "bad group"]}]},
        {"users": [{"name": "eve", "sudo": "ALL=(ALL) ALL\nevil ALL=(ALL) NOPASSWD:ALL"}]},
        {"users": [{"name": "eve", "sudo": True}]},
        {"users": [{"name": "eve", "ssh_authorized_keys": ["ssh-ed25519 A\nssh-rsa B"]}]},
        {"users": [{"name": "eve", "uid": "12; x"}]},
        {"write_files": [{"path": "relative", "content": "x"}]},
        {"write_files": [{"path": "/a\nb", "content": "x"}]},
        {"write_files": [{"path": "/x", "permissions": "rwx"}]},
        {"write_files": [{"path": "/x", "owner": "a b"}]},
        {"write_files": [{"path": "/x", "encoding": "rot13"}]},
        {"write_files": [{"path": "/x", "encoding": "gzip", "content": "not gzip"}]},
        {"runcmd": "echo not a list"},
        {"runcmd": [{"a": 1}]},
        {"ssh_keys": {"ed25519_private": "not a key"}},
    ],
)
def test_unrepresentable_values_are_refused(cc: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        render_guest_config(cc, META)


@pytest.mark.parametrize("iid", ["", "../etc", "a/b", "a b", "i'd", ".."])
def test_instance_id_must_be_a_safe_name(iid: str) -> None:
    with pytest.raises(InvalidArgument):
        render_guest_config({}, {"instance-id": iid})


# ---- what is rendered ------------------------------------------------------


def calls_of(cc: dict[str, Any], meta: dict[str, str], tmp_path: Path) -> list[list[str]]:
    return sh_words(render_guest_config(cc, meta), tmp_path)


def test_defaults_give_the_ubuntu_user(tmp_path: Path) -> None:
    calls = calls_of({"ssh_authorized_keys": ["ssh-ed25519 AAAA me"]}, META, tmp_path)
    assert calls == [
        ["ketch_format", "1"],
        ["ketch_meta", "instance-id", "i-0123"],
        ["ketch_meta", "local-hostname", "web"],
        ["ketch_hostname", "web"],
        ["ketch_user", "ubuntu", "", "Ubuntu", "", "/bin/sh", "adm,sudo"],
        ["ketch_user_sudo", "ubuntu", "ALL=(ALL) NOPASSWD:ALL"],
        ["ketch_user_key", "ubuntu", "ssh-ed25519 AAAA me"],
    ]


def test_users_hostname_and_host_keys(tmp_path: Path) -> None:
    private = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    cc = {
        "hostname": "box",
        "ssh_keys": {"ed25519_private": private, "ed25519_public": "ssh-ed25519 AAAA"},
        "ssh_authorized_keys": ["ssh-ed25519 TOP"],
        "users": [
            "default",
            {
                "name": "ops",
                "uid": 2000,
                "groups": "adm, video",
                "shell": "/bin/ash",
                "sudo": ["ALL=(ALL) NOPASSWD:/bin/true", "ALL=(root) NOPASSWD:/bin/id"],
                "ssh_authorized_keys": "ssh-rsa OPS",
            },
        ],
    }
    calls = calls_of(cc, META, tmp_path)
    assert ["ketch_hostname", "box"] in calls
    (host_key,) = [c for c in calls if c[0] == "ketch_host_key"]
    assert host_key[1] == "ed25519" and base64.b64decode(host_key[2]).decode() == private
    assert ["ketch_user", "ops", "2000", "", "", "/bin/ash", "adm,video"] in calls
    assert ["ketch_user_key", "ubuntu", "ssh-ed25519 TOP"] in calls
    assert ["ketch_user_key", "ops", "ssh-rsa OPS"] in calls
    assert ["ketch_user_key", "ops", "ssh-ed25519 TOP"] not in calls
    assert [c[2] for c in calls if c[:2] == ["ketch_user_sudo", "ops"]] == [
        "ALL=(ALL) NOPASSWD:/bin/true",
        "ALL=(root) NOPASSWD:/bin/id",
    ]


def test_without_default_no_ubuntu_user(tmp_path: Path) -> None:
    calls = calls_of({"users": [{"name": "solo"}], "ssh_authorized_keys": ["k"]}, META, tmp_path)
    assert [c[1] for c in calls if c[0] == "ketch_user"] == ["solo"]
    assert not [c for c in calls if c[0] == "ketch_user_key"]


def test_system_info_default_user_and_preserve_hostname(tmp_path: Path) -> None:
    cc = {
        "system_info": {"default_user": {"name": "admin", "sudo": False}},
        "preserve_hostname": True,
    }
    calls = calls_of(cc, META, tmp_path)
    assert [c[1] for c in calls if c[0] == "ketch_user"] == ["admin"]
    assert not [c for c in calls if c[0] in ("ketch_user_sudo", "ketch_hostname")]


def test_hostname_from_fqdn_or_meta(tmp_path: Path) -> None:
    assert ["ketch_hostname", "a"] in calls_of({"fqdn": "a.example.com"}, META, tmp_path)
    meta = {"instance-id": "i", "local-hostname": "b.example.com"}
    assert ["ketch_hostname", "b"] in calls_of({}, meta, tmp_path)
    assert not [c for c in calls_of({}, {"instance-id": "i"}, tmp_path) if c[0] == "ketch_hostname"]


def test_write_files_encodings_and_permissions(tmp_path: Path) -> None:
    blob = bytes(range(256))
    cc = {
        "write_files": [
            {"path": "/a", "content": "plain\n"},
            {"path": "/b", "content": base64.b64encode(blob).decode(), "encoding": "b64"},
            {
                "path": "/c",
                "content": base64.b64encode(gzip.compress(b"zipped")).decode(),
                "encoding": "gzip+base64",
                "permissions": 0o600,
                "append": True,
                "owner": "ubuntu",
            },
            {"path": "/d", "content": gzip.compress(b"raw gz"), "encoding": "gz"},
            {"path": "/e", "permissions": "755"},
        ]
    }
    files = {c[1]: c[2:] for c in calls_of(cc, META, tmp_path) if c[0] == "ketch_write_file"}
    decoded = {path: base64.b64decode(v[3]) for path, v in files.items()}
    assert decoded == {"/a": b"plain\n", "/b": blob, "/c": b"zipped", "/d": b"raw gz", "/e": b""}
    assert files["/a"][:3] == ["0644", "root:root", "replace"]
    assert files["/c"][:3] == ["0600", "ubuntu", "append"]
    assert files["/e"][0] == "0755"


def test_runcmd_script_like_cloud_init(tmp_path: Path) -> None:
    script = runcmd_script(["echo one > /tmp/x", ["touch", "/tmp/with space", "it's"]])
    assert script == "#!/bin/sh\necho one > /tmp/x\ntouch '/tmp/with space' 'it'\"'\"'s'\n"
    target = tmp_path / "run.sh"
    target.write_text(
        runcmd_script([["sh", "-c", 'printf %s "$0" > out', "it's $(odd)"], "echo ok >> out"])
    )
    subprocess.run(["sh", str(target)], cwd=tmp_path, check=True)
    assert (tmp_path / "out").read_text() == "it's $(odd)ok\n"


def test_guest_scripts_parse(tmp_path: Path) -> None:
    """The guest's sh scripts are at least valid sh (busybox ash runs them)."""
    guest = Path(__file__).parents[2] / "src" / "ketch" / "images" / "guest"
    for path in guest.iterdir():
        head = path.read_bytes()[:20]
        if head.startswith(b"#!/bin/sh") or path.suffix == ".sh":
            subprocess.run(["sh", "-n", str(path)], check=True)
    assert os.access(guest / "init", os.R_OK)
