"""ketch.libvirt_uri: the two URI shapes ``host add`` takes, normalised, and every refusal."""

from __future__ import annotations

import pytest

from ketch import libvirt_uri
from ketch.errors import EXIT_FAILED, InvalidHost


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("qemu:///system", "qemu:///system"),
        ("QEMU:///system", "qemu:///system"),
        ("qemu+ssh://big1/system", "qemu+ssh://big1/system"),
        ("qemu+ssh://root@127.0.0.1:2222/system", "qemu+ssh://root@127.0.0.1:2222/system"),
        ("qemu+ssh://u@[::1]:22/system", "qemu+ssh://u@[::1]:22/system"),
        ("qemu+ssh://u@h/system?no_verify=1", "qemu+ssh://u@h/system?no_verify=1"),
        ("qemu:///system?socket=/run/x/sock", "qemu:///system?socket=/run/x/sock"),
        ("qemu+ssh://h/system?mode=legacy&proxy=netcat", "qemu+ssh://h/system?mode=legacy&proxy=netcat"),
    ],
)  # fmt: skip
def test_accepted_uris_read_back_the_same(given: str, normal: str) -> None:
    assert libvirt_uri.parse(given).text() == normal


def test_parts_and_extra_parameters() -> None:
    u = libvirt_uri.parse("qemu+ssh://root@127.0.0.1:2222/system")
    assert (u.scheme, u.user, u.host, u.port, u.remote) == (
        "qemu+ssh",
        "root",
        "127.0.0.1",
        2222,
        True,
    )
    assert u.text({"command": "/s/hosts/a b/ssh"}) == (
        "qemu+ssh://root@127.0.0.1:2222/system?command=/s/hosts/a+b/ssh"
    )
    local = libvirt_uri.parse("qemu:///system")
    assert (local.host, local.user, local.port, local.remote) == (None, None, None, False)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("", "empty"),
        ("qemu:///system with space", "spaces"),
        ("xen:///system", "scheme 'xen' is not one ketch drives (qemu, qemu+ssh)"),
        ("qemu+tcp://h/system", "scheme 'qemu+tcp'"),
        ("/system", "scheme none"),
        ("qemu:///session", "path '/session' is not /system"),
        ("qemu+ssh://h", "path '/' is not /system"),
        ("qemu://big1/system", "qemu:// names this machine"),
        ("qemu+ssh:///system", "needs a host"),
        ("qemu+ssh://h:99999/system", "out of range"),
        ("qemu+ssh://h/system#x", "fragment"),
        ("qemu+ssh://h/system?keyfile=/k", "give the key with --ssh-key"),
        ("qemu+ssh://h/system?command=/bin/sh", "'command' is ketch's"),
        ("qemu+ssh://h/system?known_hosts=/k", "'known_hosts' is not one ketch passes"),
        ("qemu+ssh://h/system?no_verify=yes", "'no_verify=yes': give one of 0, 1"),
        ("qemu:///system?no_verify=1", "for qemu+ssh:// only"),
    ],
)
def test_refusals_say_why_and_exit_2(uri: str, says: str) -> None:
    with pytest.raises(InvalidHost) as err:
        libvirt_uri.parse(uri)
    assert says in err.value.message, err.value.message
    assert err.value.hint == "give " + libvirt_uri.ACCEPTED
    assert err.value.exit_code == EXIT_FAILED and err.value.code == "invalid-host"
