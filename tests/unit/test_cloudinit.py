"""cloud-init user data: parsing, ketch's vendor merge, rendering."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from ketch.cloudinit import merge_vendor, meta_data, parse_user_data, render_user_data
from ketch.errors import InvalidArgument

CLIENT = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClient ketch@host"
HOST_PRIV = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
HOST_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost vm1"


def merge(user: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "default_user": "ubuntu",
        "client_public_key": CLIENT,
        "host_key_private": HOST_PRIV,
        "host_key_public": HOST_PUB,
        "hostname": "vm1",
    }
    args.update(kw)
    return merge_vendor(user, **args)


# --- parse_user_data -------------------------------------------------------------


def test_parse_minimal() -> None:
    assert parse_user_data("#cloud-config\nruncmd: [ls]\n") == {"runcmd": ["ls"]}


def test_parse_header_only_is_empty() -> None:
    assert parse_user_data("#cloud-config\n") == {}
    assert parse_user_data("#cloud-config") == {}


def test_parse_tolerates_bom_crlf_and_trailing_space() -> None:
    assert parse_user_data("\ufeff#cloud-config  \r\nhostname: x\r\n") == {"hostname": "x"}


@pytest.mark.parametrize(
    "text",
    ["", "runcmd: [ls]\n", "#!/bin/sh\necho hi\n", "# cloud-config\n", " #cloud-config\n"],
)
def test_parse_requires_the_header(text: str) -> None:
    with pytest.raises(InvalidArgument, match="#cloud-config") as info:
        parse_user_data(text)
    assert info.value.hint and "#cloud-config" in info.value.hint


def test_bad_yaml_names_line_and_column() -> None:
    text = "#cloud-config\nruncmd:\n  - ls\n packages: [a\n"
    with pytest.raises(InvalidArgument) as info:
        parse_user_data(text)
    assert "line 4, column 2" in info.value.message
    assert "not valid YAML" in info.value.message


def test_bad_yaml_unclosed_quote() -> None:
    with pytest.raises(InvalidArgument, match=r"line \d+, column \d+"):
        parse_user_data('#cloud-config\nhostname: "abc\n')


@pytest.mark.parametrize("body", ["- a\n- b\n", "just a string\n", "42\n"])
def test_parse_must_be_a_mapping(body: str) -> None:
    with pytest.raises(InvalidArgument, match="must be a mapping"):
        parse_user_data("#cloud-config\n" + body)


def test_parse_is_safe() -> None:
    with pytest.raises(InvalidArgument):
        parse_user_data("#cloud-config\nx: !!python/object/apply:os.system ['true']\n")


# --- merge_vendor ----------------------------------------------------------------------


def test_merge_empty() -> None:
    cfg = merge(None)
    assert cfg["ssh_authorized_keys"] == [CLIENT]
    assert cfg["ssh_keys"] == {"ed25519_private": HOST_PRIV, "ed25519_public": HOST_PUB}
    assert cfg["hostname"] == "vm1"
    assert cfg["preserve_hostname"] is False
    assert "users" not in cfg  # cloud-init's default is ["default"]


def test_client_key_is_appended_after_the_users_keys() -> None:
    cfg = merge({"ssh_authorized_keys": ["ssh-rsa AAAAmine me@x"]})
    assert cfg["ssh_authorized_keys"] == ["ssh-rsa AAAAmine me@x", CLIENT]


def test_client_key_not_duplicated() -> None:
    cfg = merge({"ssh_authorized_keys": [CLIENT]})
    assert cfg["ssh_authorized_keys"] == [CLIENT]


def test_single_key_string_becomes_a_list() -> None:
    cfg = merge({"ssh_authorized_keys": "ssh-rsa AAAAmine"})
    assert cfg["ssh_authorized_keys"] == ["ssh-rsa AAAAmine", CLIENT]


def test_bad_key_list() -> None:
    with pytest.raises(InvalidArgument, match="ssh_authorized_keys"):
        merge({"ssh_authorized_keys": {"a": 1}})


def test_users_list_keeps_default() -> None:
    cfg = merge({"users": [{"name": "bob", "shell": "/bin/sh"}]})
    assert cfg["users"] == ["default", {"name": "bob", "shell": "/bin/sh"}]


def test_users_list_with_default_is_kept_in_order() -> None:
    cfg = merge({"users": [{"name": "bob"}, "default"]})
    assert cfg["users"] == [{"name": "bob"}, "default"]


def test_users_as_string() -> None:
    assert merge({"users": "bob"})["users"] == ["default", "bob"]


def test_users_not_a_list() -> None:
    with pytest.raises(InvalidArgument, match="users"):
        merge({"users": 3})


def test_default_users_entry_gets_the_client_key() -> None:
    user = {"users": ["default", {"name": "ubuntu", "ssh_authorized_keys": ["ssh-rsa AAAAx"]}]}
    cfg = merge(user)
    assert cfg["users"][1]["ssh_authorized_keys"] == ["ssh-rsa AAAAx", CLIENT]
    # other users' keys are theirs alone
    cfg = merge({"users": [{"name": "bob", "ssh_authorized_keys": ["ssh-rsa AAAAb"]}]})
    assert cfg["users"][1]["ssh_authorized_keys"] == ["ssh-rsa AAAAb"]


def test_system_info_default_user_keys() -> None:
    user = {"system_info": {"default_user": {"name": "ubuntu", "ssh_authorized_keys": []}}}
    assert merge(user)["system_info"]["default_user"]["ssh_authorized_keys"] == [CLIENT]


def test_merge_does_not_modify_the_input() -> None:
    user = {"ssh_authorized_keys": ["k"], "users": [{"name": "ubuntu"}]}
    merge(user)
    assert user == {"ssh_authorized_keys": ["k"], "users": [{"name": "ubuntu"}]}


@pytest.mark.parametrize("key", ["ed25519_private", "ed25519_public", "ed25519_certificate"])
def test_pinned_host_key_cannot_be_overridden(key: str) -> None:
    with pytest.raises(InvalidArgument, match=f"ssh_keys.{key}") as info:
        merge({"ssh_keys": {key: "something else"}})
    assert info.value.hint and "remove" in info.value.hint


def test_same_pinned_key_is_accepted_and_other_types_kept() -> None:
    cfg = merge({"ssh_keys": {"ed25519_public": HOST_PUB + "\n", "rsa_public": "ssh-rsa AAAAr"}})
    assert cfg["ssh_keys"] == {
        "ed25519_public": HOST_PUB,
        "rsa_public": "ssh-rsa AAAAr",
        "ed25519_private": HOST_PRIV,
    }


def test_user_hostname_wins() -> None:
    cfg = merge({"hostname": "custom", "preserve_hostname": True})
    assert cfg["hostname"] == "custom"
    assert cfg["preserve_hostname"] is True


def test_user_settings_are_kept() -> None:
    user = {"runcmd": ["echo hi"], "write_files": [{"path": "/x", "content": "y"}]}
    cfg = merge(user)
    assert cfg["runcmd"] == ["echo hi"]
    assert cfg["write_files"] == [{"path": "/x", "content": "y"}]


# --- rendering -------------------------------------------------------------------------


def test_render_round_trips() -> None:
    cfg = merge(parse_user_data("#cloud-config\nruncmd:\n  - [sh, -c, 'echo ok > /x']\n"))
    text = render_user_data(cfg)
    assert text.startswith("#cloud-config\n")
    assert parse_user_data(text) == cfg


def test_render_private_key_as_literal_block() -> None:
    text = render_user_data(merge(None))
    assert "ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n" in text
    assert yaml.safe_load(text)["ssh_keys"]["ed25519_private"] == HOST_PRIV


def test_render_odd_strings_round_trip() -> None:
    cfg = {"a": "trailing space \nline", "b": "yes", "c": "1.0", "d": "é", "e": "  lead\n"}
    assert parse_user_data(render_user_data(cfg)) == cfg


def test_meta_data() -> None:
    assert yaml.safe_load(meta_data("i-123", "vm1")) == {
        "instance-id": "i-123",
        "local-hostname": "vm1",
    }
    assert meta_data("i-123", "vm1") == "instance-id: i-123\nlocal-hostname: vm1\n"
