"""Issue 14 on a real tiny VM: aliases, and ``exec`` mapping the host's working directory.

One instance for the module.  The mount itself is not what is tested here
(the mount verbs are another part of issue 14): a ``MountSpec`` is put into
the instance's spec through the store, and its target directories are made
in the guest with ``ketch exec``; what is tested is that ``exec`` and the
aliases run in the guest directory that matches the host's, as Multipass's
exec.cpp maps it.  Aliases live in a temporary ``$XDG_DATA_HOME``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from ketchcli import Ketch, unique

from ketch.model import Intent, MountSpec
from ketch.store.db import Store

pytestmark = pytest.mark.vm

TARGET = "/home/ubuntu/proj"
HOME = "/home/ubuntu"


@dataclasses.dataclass
class Setup:
    k: Ketch  # the session's root, with XDG_DATA_HOME of this module
    vm: str
    src: Path  # the mounted host directory
    data: Path  # XDG_DATA_HOME

    @property
    def bin(self) -> Path:
        return self.data / "ketch" / "bin"

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ketch.cli.main", *args],
            capture_output=True,
            text=True,
            env=self.k.env,
            cwd=cwd,
            timeout=300,
            check=False,
        )

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        done = self.run(*args, cwd=cwd)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def script(self, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / name), *args],
            capture_output=True,
            text=True,
            env=self.k.env,
            cwd=cwd,
            timeout=300,
            check=False,
        )


def _set_mounts(root: Path, name: str, mounts: tuple[MountSpec, ...]) -> None:
    store = Store(root / "ketch.db")
    try:
        spec = store.get(name).spec
        store.set_spec(dataclasses.replace(spec, mounts=mounts))
    finally:
        store.close()


@pytest.fixture(scope="module")
def s(ketch: Ketch, vm: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("aliases")
    src = base / "proj"
    for d in ("sub/deeper", "with space", "it's", "nowhere"):
        (src / d).mkdir(parents=True)
    (base / "proj-other").mkdir()  # a prefix of another name: not under the mount
    (base / "link").symlink_to(src / "sub")
    k = Ketch(ketch.root)
    k.env["XDG_DATA_HOME"] = str(base / "data")
    _set_mounts(ketch.root, vm, (MountSpec(str(src), TARGET),))
    k.run("exec", vm, "--", "mkdir", "-p", f"{TARGET}/sub/deeper", f"{TARGET}/with space",
          f"{TARGET}/it's")  # fmt: skip
    yield Setup(k, vm, src, base / "data")
    _set_mounts(ketch.root, vm, ())


# -- exec --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        pytest.param("proj", TARGET, id="cwd-is-the-source"),
        pytest.param("proj/sub", f"{TARGET}/sub", id="below-the-source"),
        pytest.param("proj/sub/deeper", f"{TARGET}/sub/deeper", id="two-below"),
        pytest.param("proj/with space", f"{TARGET}/with space", id="a-space"),
        pytest.param("proj/it's", f"{TARGET}/it's", id="a-quote"),
        pytest.param("link", f"{TARGET}/sub", id="through-a-symlink"),
        pytest.param("proj-other", HOME, id="a-sibling-sharing-a-prefix"),
        pytest.param(".", HOME, id="outside-every-mount"),
    ],
)
def test_exec_runs_in_the_mapped_directory(s: Setup, where: str, expected: str) -> None:
    cwd = s.src.parent / where
    assert s.ok("exec", s.vm, "--", "pwd", cwd=cwd).strip() == expected


def test_exec_no_map_runs_in_home(s: Setup) -> None:
    assert s.ok("exec", s.vm, "-n", "--", "pwd", cwd=s.src / "sub").strip() == HOME
    assert s.ok("exec", "-n", s.vm, "--", "pwd", cwd=s.src).strip() == HOME


def test_exec_working_directory_wins_over_the_mapping(s: Setup) -> None:
    assert s.ok("exec", s.vm, "-d", "/tmp", "--", "pwd", cwd=s.src / "sub").strip() == "/tmp"


def test_exec_working_directory_and_no_map_clash(s: Setup) -> None:
    # exec.cpp: "Options --{} and --{} clash"
    done = s.run("exec", s.vm, "-d", "/tmp", "-n", "--", "pwd")
    assert done.returncode == 1
    assert "Options --working-directory and --no-map-working-directory clash" in done.stderr


def test_exec_in_a_directory_the_guest_lacks_fails_without_running(s: Setup) -> None:
    # exec.cpp sends `cd DIR && COMMAND`: the guest's cd fails and the command is not run.
    done = s.run("exec", s.vm, "--", "touch", "/tmp/ran-anyway", cwd=s.src / "nowhere")
    assert done.returncode != 0
    assert "nowhere" in done.stderr
    assert s.run("exec", s.vm, "--", "test", "-e", "/tmp/ran-anyway").returncode == 1


def test_exec_sudo_changes_directory_as_root(s: Setup) -> None:
    # exec.cpp: with sudo, cd runs as root too ("the default user does not have access").
    assert s.run("exec", s.vm, "-d", "/root", "--", "pwd").returncode != 0
    assert s.ok("exec", s.vm, "-d", "/root", "--", "sudo", "pwd").strip() == "/root"


# -- aliases ------------------------------------------------------------------------------


def test_alias_runs_in_the_mapped_directory_and_passes_arguments(s: Setup) -> None:
    first = s.ok("alias", f"{s.vm}:pwd")
    # create_alias.cpp: the first alias, its folder not on PATH: say how to add it.
    assert f'PATH="$PATH:{s.bin}"' in first
    script = s.bin / "pwd"
    assert os.access(script, os.X_OK) and (s.bin / "default.pwd").exists()
    assert s.script("pwd", cwd=s.src / "sub").stdout.strip() == f"{TARGET}/sub"
    assert s.script("default.pwd", cwd=s.src).stdout.strip() == TARGET
    assert s.ok("pwd", cwd=s.src / "sub/deeper").strip() == f"{TARGET}/sub/deeper"  # ketch ALIAS
    s.ok("alias", f"{s.vm}:echo", "say")
    done = s.script("say", "a", "b c", "; touch /tmp/x", cwd=s.src)
    assert done.stdout == "a b c ; touch /tmp/x\n"
    s.ok("unalias", "pwd", "say")
    assert not script.exists() and not (s.bin / "say").exists()


def test_alias_no_map_runs_in_home(s: Setup) -> None:
    s.ok("alias", "-n", f"{s.vm}:pwd", "homepwd")
    try:
        assert s.script("homepwd", cwd=s.src / "sub").stdout.strip() == HOME
        doc = json.loads(s.ok("aliases", "--format", "json"))
        assert doc["contexts"]["default"]["homepwd"]["working-directory"] == "default"
    finally:
        s.ok("unalias", "homepwd")


def test_aliases_formats(s: Setup) -> None:
    s.ok("alias", f"{s.vm}:ls", "lsv")
    s.ok("alias", "--no-map-working-directory", f"{s.vm}:/bin/uname")
    try:
        doc = json.loads(s.ok("aliases", "--format", "json"))
        assert doc == {  # alias_dict.cpp to_json
            "active-context": "default",
            "contexts": {
                "default": {
                    "lsv": {"command": "ls", "instance": s.vm, "working-directory": "map"},
                    "uname": {
                        "command": "/bin/uname",
                        "instance": s.vm,
                        "working-directory": "default",
                    },
                }
            },
        }
        csv = s.ok("aliases", "--format", "csv")
        assert csv == (
            "Alias,Instance,Command,Working directory,Context\n"
            f"lsv,{s.vm},ls,map,default*\n"
            f"uname,{s.vm},/bin/uname,default,default*\n"
        )
        assert yaml.safe_load(s.ok("aliases", "--format", "yaml")) == {
            "active_context": "default",
            "aliases": {
                "default": [
                    {"alias": "lsv", "command": "ls", "instance": s.vm, "working-directory": "map"},
                    {"alias": "uname", "command": "/bin/uname", "instance": s.vm,
                     "working-directory": "default"},
                ]
            },
        }  # fmt: skip
        table = s.run("aliases")
        assert table.stdout.splitlines()[0].split() == [
            "Alias", "Instance", "Command", "Context", "Working", "directory"
        ]  # fmt: skip
        assert str(s.bin) in table.stderr  # where the scripts are
        assert s.script("uname", cwd=s.src).stdout.strip() == "Linux"
    finally:
        s.ok("unalias", "--all")
    assert s.ok("aliases") == "No aliases defined.\n"
    assert sorted(p.name for p in s.bin.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["alias", "nope-xyz:ls"], "Instance 'nope-xyz' does not exist", id="no-vm"),
        pytest.param(["alias", "VM:ls", "a/b"], "Alias has to be a valid filename", id="bad-name"),
        pytest.param(
            ["alias", "VM:ls", "list"], "Alias name 'list' clashes with a command name", id="clash"
        ),
        pytest.param(["alias", "VM:"], "No command given", id="no-command"),
        pytest.param(["alias", ":ls"], "No instance name given", id="no-instance"),
        pytest.param(["unalias", "ghost"], "Nonexistent alias: ghost.", id="unalias-none"),
        pytest.param(["unalias", "g1", "g2"], "Nonexistent aliases: g1, g2.", id="unalias-two"),
        pytest.param(["unalias"], "Name argument or --all is required", id="unalias-nothing"),
        pytest.param(
            ["unalias", "x", "--all"],
            "Cannot specify name when --all option set",
            id="unalias-both",
        ),
    ],
)
def test_alias_refusals(s: Setup, argv: list[str], message: str) -> None:
    """Multipass's messages (alias.cpp, unalias.cpp, common_cli.cpp), exit 1, nothing made."""
    done = s.run(*[a.replace("VM", s.vm) for a in argv])
    assert done.returncode == 1, done
    assert message in done.stderr
    assert not s.bin.exists() or not any(s.bin.iterdir())


def test_alias_clash_with_an_existing_alias(s: Setup) -> None:
    s.ok("alias", f"{s.vm}:ls", "twice")
    try:
        done = s.run("alias", f"{s.vm}:pwd", "twice")
        assert done.returncode == 1
        assert "Alias 'twice' already exists in current context" in done.stderr
        assert "ls" in (s.bin / "twice").read_text()
    finally:
        s.ok("unalias", "twice")


def test_prefer_switches_what_a_bare_name_runs(s: Setup) -> None:
    s.ok("alias", f"{s.vm}:pwd", "where")
    s.ok("prefer", "other")
    s.ok("alias", "-n", f"{s.vm}:pwd", "where")
    try:
        assert s.script("where", cwd=s.src).stdout.strip() == HOME  # the active context's
        assert s.script("default.where", cwd=s.src).stdout.strip() == TARGET
        s.ok("prefer", "default")
        assert s.script("where", cwd=s.src).stdout.strip() == TARGET
        assert "default*" in s.ok("aliases", "--format", "csv")
        s.ok("unalias", "other.where")
        assert not (s.bin / "other.where").exists() and (s.bin / "where").exists()
    finally:
        s.ok("unalias", "--all")
        s.ok("prefer", "default")


def _ghost(root: Path, vm: str) -> str:
    """A stopped instance that only exists in the store (purging it needs nothing more)."""
    name = unique("ghost")
    store = Store(root / "ketch.db")
    try:
        spec = store.get(vm).spec
        port = max(store.used_ports()) + 1
        store.add(
            dataclasses.replace(spec, name=name, ssh_port=port, mounts=(), instance_id=name),
            Intent.STOP,
        )
    finally:
        store.close()
    return name


@pytest.mark.parametrize("how", ["delete-purge", "delete-then-purge"])
def test_purging_an_instance_removes_its_aliases(s: Setup, how: str) -> None:
    ghost = _ghost(s.k.root, s.vm)
    s.ok("alias", f"{ghost}:ls", "ghostls")
    s.ok("alias", f"{s.vm}:ls", "stays")
    try:
        assert (s.bin / "ghostls").exists()
        if how == "delete-purge":
            s.ok("delete", "--purge", ghost)
        else:
            s.ok("delete", ghost)
            assert (s.bin / "ghostls").exists()  # a soft delete keeps them (recoverable)
            s.ok("purge")
        assert s.ok("aliases", "--format", "csv").splitlines()[1:] == [
            f"stays,{s.vm},ls,map,default*"
        ]
        assert not (s.bin / "ghostls").exists() and not (s.bin / "default.ghostls").exists()
    finally:
        s.run("delete", "--purge", ghost)
        s.ok("unalias", "--all")
