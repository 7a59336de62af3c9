"""Multipass parity (issue 17): the CLI's sentences and shapes against a real ketchd.

The daemon is ``test_daemon_api``'s (real aiohttp app, operations table and
store; fake hypervisor) with real qcow2 disks, and the CLI's ``main()`` talks
to it through ``$KETCH_STORAGE``.  Multipass's sentences are quoted from the
source file named beside each.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_daemon_api import Env, serving

from ketch import __version__
from ketch.cli import main as cli
from ketch.errors import EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE
from ketch.model import Intent
from ketch.service import guestlink

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    with serving(tmp_path) as running:
        monkeypatch.setenv("KETCH_STORAGE", str(running.root.path))
        yield running


def add(api: Env, name: str, *, running: bool = False, port: int = 42001) -> None:
    api.add(name, Intent.RUN if running else Intent.STOP, running=running, port=port)
    disk = api.root.instance(name).disk
    disk.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- get / set ---------------------------------------------------------------------------------


def test_get_keys_lists_every_key_that_does_something(
    api: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    add(api, "web")
    code, out, _ = run(capsys, "get", "--keys")
    assert code == 0
    assert out.splitlines() == [
        "client.primary-name",
        "local.accel",
        "local.address",
        "local.auto-forward",
        "local.bridged-network",
        "local.driver",
        "local.network",
        "local.network.bridge",
        "local.network.subnet",
        "local.passphrase",
        "local.privileged-mounts",
        "local.web.auto-forward",
        "local.web.autostart",
        "local.web.bridged",
        "local.web.cpus",
        "local.web.disk",
        "local.web.memory",
    ]
    assert run(capsys, "get", "--keys", "local.web.cpus")[1] == "local.web.cpus\n"
    code, _, err = run(capsys, "get", "--keys", "local.nope")
    # src/client/cli/cmd/get.cpp (UnrecognizedSettingException)
    assert code == 2 and "Unrecognized settings key: 'local.nope'" in err


def test_an_empty_value_is_shown_as_empty_unless_raw(
    api: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "get", "client.primary-name")[1] == "primary\n"
    assert run(capsys, "set", "client.primary-name=")[0] == 0
    # src/client/cli/cmd/get.cpp: an empty value prints "<empty>", with --raw nothing
    assert run(capsys, "get", "client.primary-name")[1] == "<empty>\n"
    assert run(capsys, "get", "--raw", "client.primary-name")[1] == "\n"
    code, _, err = run(capsys, "shell")  # the primary is disabled now
    assert code == EXIT_USAGE and "primary instance is disabled" in err


def test_set_with_only_a_key_asks_for_the_value(
    api: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)

    def answer(prompt: str) -> str:
        asked.append(prompt)
        return "dev"

    monkeypatch.setattr("builtins.input", answer)
    assert run(capsys, "set", "client.primary-name")[0] == 0
    assert asked == ["client.primary-name: "]  # Multipass's plain prompter: "KEY: "
    assert run(capsys, "get", "client.primary-name")[1] == "dev\n"


# -- restore: everything checked before the question ------------------------------------------


def test_restore_refuses_what_cannot_happen_before_it_asks(
    api: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    add(api, "up", running=True, port=42001)
    add(api, "down", port=42002)
    api.client.stream("/v1/instances/down/snapshots", {"name": "s1"})
    code, _, err = run(capsys, "restore", "ghost.s1")
    assert code == EXIT_FAILED and 'instance "ghost" does not exist' in err
    code, _, err = run(capsys, "restore", "up.s1")
    assert code == EXIT_FAILED and 'cannot restore "up": it is Running' in err
    assert "hint: stop it first: 'ketch stop up'" in err
    code, _, err = run(capsys, "restore", "down.nope")
    assert code == EXIT_FAILED and 'snapshot "down.nope" does not exist' in err
    assert "no terminal" not in err
    code, _, err = run(capsys, "restore", "down.s1")  # only now: the question
    assert code == EXIT_USAGE and "no terminal to ask" in err
    assert run(capsys, "restore", "--destructive", "down.s1")[0] == 0


def test_info_of_several_missing_names_reports_each(
    api: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "info", "ghost-a", "ghost-b")
    assert code == EXIT_FAILED
    assert 'instance "ghost-a" does not exist\ninstance "ghost-b" does not exist' in err


# -- timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["start", "restart", "shell", "wait-ready"])
@pytest.mark.parametrize("bad", ["0", "-5", "soon", "1.5"])
def test_timeout_must_be_a_positive_whole_number(
    capsys: pytest.CaptureFixture[str], verb: str, bad: str
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([verb, f"--timeout={bad}", "vm"])
    assert done.value.code == EXIT_USAGE
    assert "--timeout value has to be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("verb", "sentence"),
    [
        # src/client/cli/cmd/start.cpp, restart.cpp (their timers' messages)
        ("start", "Timed out waiting for instance to start."),
        ("restart", "Timed out waiting for instance to restart."),
    ],
)
def test_start_and_restart_timeout_keep_the_instance_and_exit_5(
    api: Env, capsys: pytest.CaptureFixture[str], verb: str, sentence: str
) -> None:
    """The fake QEMU runs but no SSH answers: readiness never comes within the timeout."""
    api.add("slow", Intent.STOP, running=False, port=guestlink.free_port(set()))
    code, _, err = run(capsys, verb, "--timeout", "1", "slow")
    assert code == EXIT_TIMEOUT
    assert f"{verb} failed: {sentence} " in err
    assert "it was started and is kept" in err
    assert api.states()["slow"] == "Running"


def test_wait_ready(api: Env, capsys: pytest.CaptureFixture[str]) -> None:
    add(api, "up", running=True, port=42001)
    add(api, "down", port=42002)
    assert run(capsys, "wait-ready")[0] == 0  # the daemon answers
    assert run(capsys, "wait-ready", "up", "--timeout", "5")[0] == 0
    code, _, err = run(capsys, "wait-ready", "down")
    assert code == EXIT_FAILED and "'ketch start down' starts it" in err
    code, _, err = run(capsys, "wait-ready", "ghost")
    assert code == EXIT_FAILED and 'instance "ghost" does not exist' in err


# -- version -------------------------------------------------------------------------------


def test_version_without_a_daemon_prints_the_client_only_and_starts_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    monkeypatch.setenv("KETCH_STORAGE", str(root))
    code, out, err = run(capsys, "version")
    # src/client/cli/formatter/table_formatter.cpp: "{:<12}{}" per line, no daemon line
    assert code == 0 and out == f"{'ketch':<12}{__version__}\n"
    assert "ketchd is not available" in err
    assert not root.exists()  # no daemon was started (it would have made the root)
    assert json.loads(run(capsys, "version", "--format", "json")[1]) == {"ketch": __version__}
    assert yaml.safe_load(run(capsys, "version", "--format", "yaml")[1]) == {"ketch": __version__}
    assert run(capsys, "version", "--format", "csv")[1] == f"Ketch\n{__version__}\n"


def test_version_with_a_daemon(api: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "version")
    assert code == 0 and err == ""
    assert out.splitlines()[1].split()[0] == "ketchd"
    doc = json.loads(run(capsys, "version", "--format", "json")[1])
    assert list(doc) == ["ketch", "ketchd"] and doc["ketchd"]


# -- snapshot settings ---------------------------------------------------------------------


def test_snapshot_name_and_comment_are_settings(
    api: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Multipass's keys local.<instance>.<snapshot>.name|comment (its snapshot settings)."""
    add(api, "vm")
    api.client.stream("/v1/instances/vm/snapshots", {"name": "one", "comment": "first"})
    api.client.stream("/v1/instances/vm/snapshots", {"name": "two"})
    keys = run(capsys, "get", "--keys")[1].splitlines()
    assert {"local.vm.one.name", "local.vm.one.comment", "local.vm.two.name"} <= set(keys)
    assert run(capsys, "get", "local.vm.one.comment")[1] == "first\n"
    assert run(capsys, "set", "local.vm.one.comment=known good")[0] == 0
    assert run(capsys, "set", "local.vm.one.name=base")[0] == 0
    assert run(capsys, "get", "local.vm.base.comment")[1] == "known good\n"
    listing = api.client.get("/v1/snapshots")["info"]["vm"]
    assert listing["base"] == {"parent": "", "comment": "known good"}
    assert listing["two"]["parent"] == "base"  # the child follows the rename
    assert api.store.snapshot_head("vm") == "two"
    code, _, err = run(capsys, "set", "local.vm.base.name=two")
    assert code == EXIT_FAILED and "Snapshot already exists: vm.two" in err
    code, _, err = run(capsys, "set", "local.vm.base.name=has.dot")
    assert code == EXIT_USAGE and "invalid snapshot name" in err
    code, _, err = run(capsys, "get", "local.vm.nope.name")
    assert code == EXIT_FAILED and 'snapshot "vm.nope" does not exist' in err


def test_info_with_no_name_shows_every_instance(
    api: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """src/client/cli/cmd/info.cpp: no instance argument means all of them (--all is kept)."""
    add(api, "one", port=42001)
    add(api, "two", port=42002)
    code, out, _ = run(capsys, "info", "--format", "json")
    assert code == 0 and set(json.loads(out)["info"]) == {"one", "two"}
    assert json.loads(run(capsys, "info", "--all", "--format", "json")[1]) == json.loads(out)
