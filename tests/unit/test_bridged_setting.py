"""``local.NAME.bridged`` (Multipass's): what get says, and what set refuses.

A real ketchd on the fake driver (``test_daemon_api``), through the CLI's
``main()``.  Adding the NIC for real (a bridge, a guest that configures it) is
``tests/integration/test_network.py``, inside a network namespace.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_daemon_api import Env, serving

from ketch.cli import main as cli
from ketch.errors import EXIT_FAILED, EXIT_USAGE
from ketch.model import Intent, NetworkSpec
from ketch.runtime.netplan import seed_instance_id
from ketch.service.bridged import parse_bool

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    with serving(tmp_path) as running:
        monkeypatch.setenv("KETCH_STORAGE", str(running.root.path))
        yield running


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_get_follows_the_bridged_network_setting(
    api: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    api.add("web", Intent.STOP, running=False)
    assert run(capsys, "get", "local.web.bridged")[1] == "false\n"
    spec = api.store.get("web").spec
    api.store.set_spec(replace(spec, networks=(NetworkSpec("kbr0", "52:54:00:00:00:a1"),)))
    assert run(capsys, "get", "local.web.bridged")[1] == "false\n"  # no bridged-network yet
    assert run(capsys, "set", "local.bridged-network=kbr0")[0] == 0
    assert run(capsys, "get", "local.web.bridged")[1] == "true\n"
    # removing it is not supported (Multipass's sentence); the spec keeps its NIC
    code, _, err = run(capsys, "set", "local.web.bridged=false")
    assert code == EXIT_USAGE and "Removing the bridged network is currently not supported" in err
    assert len(api.store.get("web").spec.networks) == 1
    # as in Multipass, the answer changes with local.bridged-network
    assert run(capsys, "set", "local.bridged-network=kbr1")[0] == 0
    assert run(capsys, "get", "local.web.bridged")[1] == "false\n"


def test_set_is_refused_without_a_bridge_and_on_a_running_instance(
    api: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    api.add("web", Intent.STOP, running=False)
    api.add("run", Intent.RUN, running=True, port=42002)
    code, _, err = run(capsys, "set", "local.web.bridged=true")
    assert code == EXIT_USAGE and "local.bridged-network=<name>" in err
    assert run(capsys, "set", "local.web.bridged=false")[0] == 0  # nothing to remove
    code, _, err = run(capsys, "set", "local.web.bridged=maybe")
    assert code == EXIT_USAGE and "Invalid flag" in err
    # a name that is no bridge of the host: refused, nothing changes
    assert run(capsys, "set", "local.bridged-network=kbr-absent")[0] == 0
    code, _, err = run(capsys, "set", "local.web.bridged=true")
    assert code == EXIT_USAGE and "kbr-absent" in err and "ketch networks" in err
    assert api.store.get("web").spec.networks == ()
    # a running instance: Multipass's refusal
    code, _, err = run(capsys, "set", "local.run.bridged=true")
    assert code == EXIT_FAILED
    assert (
        "Cannot update instance settings; instance: run; reason: "
        "Instance must be stopped for modification"
    ) in err
    assert api.store.get("run").spec.networks == ()


def test_the_seed_gets_a_new_instance_id_for_each_nic_added_later() -> None:
    from test_daemon_api import spec

    s = spec("web")
    assert seed_instance_id(s) == s.instance_id
    assert seed_instance_id(replace(s, nics_added=2)) == s.instance_id + "_e_e"
    assert [parse_bool("k", v) for v in ("true", "On", "1", "no", "FALSE")] == [
        True, True, True, False, False,
    ]  # fmt: skip
