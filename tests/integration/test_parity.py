"""Multipass parity on the details (issue 17): sentences, JSON shapes, flags, a real daemon.

Each Multipass sentence asserted here is quoted from the Multipass (1.16) source
file named in the comment beside it; where ketch says more, its words come after.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ketchcli import Ketch

from ketch import __version__

# include/multipass/exceptions/invalid_memory_size_exception.h
NOT_A_SIZE = (
    "is not a valid memory size - need a non-negative integer (in base 10) "
    "or a decimal followed by K, M, or G (e.g. 1234B, 42MiB, 0.5G)"
)


def test_bad_name_memory_and_disk_in_multipass_words(ketch: Ketch) -> None:
    # src/client/cli/cmd/launch.cpp: "Invalid instance name supplied: {}"
    done = ketch.run("launch", "--name", "bad_name", check=False)
    assert done.returncode == 1
    assert "Invalid instance name supplied: bad_name" in done.stderr
    assert "hint: names follow hostname rules" in done.stderr
    for flag in ("--memory", "--disk"):
        done = ketch.run("launch", "--name", "ok-size", flag, "1CiG", check=False)
        assert done.returncode == 1, done.stderr
        assert f"launch failed: 1CiG {NOT_A_SIZE}\n" in done.stderr
        assert f"hint: that was the {flag[2:]} size" in done.stderr
    # src/client/cli/cmd/launch.cpp (INVALID_MEM_SIZE): "Invalid memory size value supplied: {}."
    done = ketch.run("launch", "--name", "ok-size", "--memory", "16M", check=False)
    assert done.returncode == 1
    assert "Invalid memory size value supplied: 16M." in done.stderr
    assert "ok-size" not in {i["name"] for i in ketch.json("list")["list"]}


def test_info_reports_every_missing_name(ketch: Ketch) -> None:
    done = ketch.run("info", "ghost-a", "ghost-b", check=False)
    assert done.returncode == 2
    assert 'instance "ghost-a" does not exist' in done.stderr
    assert 'instance "ghost-b" does not exist' in done.stderr


def test_restore_of_a_missing_instance_is_refused_before_any_question(ketch: Ketch) -> None:
    done = ketch.run("restore", "ghost-r.snapshot1", check=False)
    assert done.returncode == 2
    assert 'instance "ghost-r" does not exist' in done.stderr
    assert "no terminal" not in done.stderr


@pytest.mark.vm
def test_running_instance_refusals_then_snapshot_names(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    # src/daemon/daemon.cpp (clone): "Multipass can only clone stopped instances.", ketch-named
    done = ketch.run("clone", vm, check=False)
    assert done.returncode == 2
    assert f'clone failed: ketch can only clone stopped instances. cannot clone "{vm}"' in (
        done.stderr
    )
    assert f"hint: stop it first: 'ketch stop {vm}'" in done.stderr
    # restore of a running instance: refused with the daemon's sentence, never a question
    done = ketch.run("restore", f"{vm}.snapshot1", check=False)
    assert done.returncode == 2
    assert f'restore failed: cannot restore "{vm}": it is Running' in done.stderr
    assert "no terminal" not in done.stderr and "Do you want" not in done.stdout
    ketch.run("stop", vm)
    ketch.run("snapshot", vm, "--name", "dup")
    # include/multipass/exceptions/snapshot_exceptions.h: "Snapshot already exists: {}.{}"
    done = ketch.run("snapshot", vm, "--name", "dup", check=False)
    assert done.returncode == 2
    assert f"snapshot failed: Snapshot already exists: {vm}.dup\n" in done.stderr
    # a snapshot that does not exist: said before any question
    done = ketch.run("restore", f"{vm}.nope", check=False)
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert "no terminal" not in done.stderr
    # everything checked: only now the question, which a script cannot answer
    done = ketch.run("restore", f"{vm}.dup", check=False)
    assert done.returncode == 1 and "no terminal to ask" in done.stderr
    assert "--destructive" in done.stderr and f"ketch snapshot {vm}" in done.stderr
    ketch.run("restore", "--destructive", f"{vm}.dup")


def test_find_machine_output_is_multipass_shaped_and_warnings_go_to_stderr_once(
    ketch: Ketch,
) -> None:
    # src/client/cli/formatter/json_formatter.cpp: "images" keyed by image name
    done = ketch.run("find", "--format", "json", "--force-update", "--only-images")
    doc = json.loads(done.stdout)
    assert list(doc) == ["errors", "images"] and doc["errors"] == []
    assert list(doc["images"]["tiny"]) == ["aliases", "os", "release", "remote", "version"]
    assert doc["images"]["debian-12"]["os"] == "debian"
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(set(warnings))  # each unreachable remote once
    assert "unreachable" not in done.stdout
    again = ketch.run("find", "--format", "yaml", "--show-unsupported")
    assert set(yaml.safe_load(again.stdout)["images"]) >= {"tiny", "debian-12"}
    csv = ketch.run("find", "--format", "csv").stdout.splitlines()
    assert csv[0] == "Image,Remote,Aliases,OS,Release,Version,Type"


def test_get_keys_raw_and_empty_values(ketch: Ketch) -> None:
    # src/client/cli/cmd/get.cpp: --keys, --raw, "<empty>"
    keys = ketch.run("get", "--keys").stdout.splitlines()
    assert {"client.primary-name", "local.accel", "local.driver"} <= set(keys)
    assert keys == sorted(keys)
    try:
        ketch.run("set", "client.primary-name=")
        assert ketch.run("get", "client.primary-name").stdout == "<empty>\n"
        assert ketch.run("get", "--raw", "client.primary-name").stdout == "\n"
    finally:
        ketch.run("set", "client.primary-name=primary")
    done = ketch.run("set", "client.primary-name", check=False)  # no terminal to ask
    assert done.returncode == 1 and "client.primary-name=VALUE" in done.stderr


def test_find_knows_debians_names_offline(ketch: Ketch) -> None:
    for name in ("debian", "bookworm", "12"):
        doc = json.loads(ketch.run("find", name, "--format", "json").stdout)
        assert "debian-12" in doc["images"], name
        assert doc["images"]["debian-12"]["aliases"] == ["debian", "bookworm", "12"]


def test_version_never_starts_a_daemon(ketch: Ketch, tmp_path: Path) -> None:
    # src/client/cli/formatter/table_formatter.cpp: "{:<12}{}", the daemon line only if one answers
    fresh = Ketch(tmp_path / "never-started")
    done = fresh.run("version")
    assert done.stdout == f"{'ketch':<12}{__version__}\n"
    assert "ketchd is not available" in done.stderr
    assert json.loads(fresh.run("version", "--format", "json").stdout) == {"ketch": __version__}
    assert not (tmp_path / "never-started").exists()
    ketch.run("list")  # the session's daemon runs
    doc = json.loads(ketch.run("version", "--format", "json").stdout)
    assert list(doc) == ["ketch", "ketchd"] and doc["ketchd"]
    assert [line.split()[0] for line in ketch.run("version").stdout.splitlines()] == [
        "ketch",
        "ketchd",
    ]


def test_help_reads_like_multipass_help(ketch: Ketch) -> None:
    # src/client/cli/argparser.cpp: generalHelpText, format_short_help_for
    text = ketch.run("help").stdout
    assert text.startswith("Usage: ketch [options] <command>\n")
    section = text.split("\nAvailable commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in section]
    assert names == sorted(names) and {"launch", "image", "doctor", "wait-ready"} <= set(names)
    assert ketch.run("--help").stdout == text


def test_wait_ready_and_timeout_usage(ketch: Ketch) -> None:
    assert ketch.run("wait-ready", "--timeout", "60").returncode == 0
    done = ketch.run("wait-ready", "ghost-w", check=False)
    assert done.returncode == 2 and 'instance "ghost-w" does not exist' in done.stderr
    for verb in ("start", "restart", "shell", "wait-ready"):
        done = ketch.run(verb, "--timeout", "0", "x", check=False)
        assert done.returncode == 1
        assert "--timeout value has to be a positive integer" in done.stderr


@pytest.mark.vm
def test_start_restart_with_a_timeout_and_wait_ready(ketch: Ketch, vm: str) -> None:
    ketch.run("stop", "--force", vm)
    ketch.run("start", "--timeout", "600", vm)
    assert ketch.state(vm) == "Running"
    ketch.run("wait-ready", vm, "--timeout", "600")
    ketch.run("restart", "--timeout", "600", vm)
    assert ketch.state(vm) == "Running"
    ketch.run("stop", vm)
    done = ketch.run("wait-ready", vm, check=False)
    assert done.returncode == 2 and f"'ketch start {vm}' starts it" in done.stderr
