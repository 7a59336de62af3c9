"""The alias dictionary, its file, its scripts and its output formats (no daemon, no VM).

Expected outputs are Multipass's own: its tests/test_alias_dict.cpp
(``FormatterTestsuite``) gives the table, csv, json and yaml of the same
dictionaries byte for byte; the behaviour quoted in each test is from the
file named there (src/client/common/alias_dict.cpp and the cli/cmd files).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.cli import alias_scripts as scripts
from ketch.cli import alias_store as store
from ketch.cli import main as cli
from ketch.cli import verbs_aliases
from ketch.cli.alias_store import AliasDefinition, AliasDict
from ketch.errors import InvalidArgument


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$XDG_DATA_HOME``; its ``ketch`` directory is the aliases' home."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data" / "ketch"


def two_in_default() -> AliasDict:
    d = AliasDict()
    d.add_alias("lsp", AliasDefinition("primary", "ls", "map"))
    d.add_alias("llp", AliasDefinition("primary", "ls", "map"))
    return d


def docker_context() -> AliasDict:
    d = AliasDict()
    d.set_active_context("docker")
    d.add_alias("docker", AliasDefinition("docker", "docker", "map"))
    d.add_alias("docker-compose", AliasDefinition("docker", "docker-compose", "map"))
    d.set_active_context("default")
    return d


# -- formats: test_alias_dict.cpp's FormatterTestsuite --------------------------------------


def test_formats_of_an_empty_dictionary() -> None:
    d = AliasDict()
    out = verbs_aliases.aliases_output
    assert out(d, "csv") == "Alias,Instance,Command,Working directory,Context\n"
    assert out(d, "json") == (
        '{\n    "active-context": "default",\n    "contexts": {\n'
        '        "default": {\n        }\n    }\n}\n'
    )
    assert out(d, "table") == "No aliases defined.\n"
    assert out(d, "yaml") == "active_context: default\naliases:\n  default: ~\n"


def test_formats_of_two_aliases_in_the_active_context() -> None:
    d = two_in_default()
    out = verbs_aliases.aliases_output
    assert out(d, "csv") == (
        "Alias,Instance,Command,Working directory,Context\n"
        "llp,primary,ls,map,default*\n"
        "lsp,primary,ls,map,default*\n"
    )
    assert out(d, "json") == (
        "{\n"
        '    "active-context": "default",\n'
        '    "contexts": {\n'
        '        "default": {\n'
        '            "llp": {\n'
        '                "command": "ls",\n'
        '                "instance": "primary",\n'
        '                "working-directory": "map"\n'
        "            },\n"
        '            "lsp": {\n'
        '                "command": "ls",\n'
        '                "instance": "primary",\n'
        '                "working-directory": "map"\n'
        "            }\n"
        "        }\n"
        "    }\n"
        "}\n"
    )
    assert out(d, "table") == (
        "Alias   Instance   Command   Context    Working directory\n"
        "llp     primary    ls        default*   map\n"
        "lsp     primary    ls        default*   map\n"
    )
    assert out(d, "yaml") == (
        "active_context: default\n"
        "aliases:\n"
        "  default:\n"
        "    - alias: llp\n"
        "      command: ls\n"
        "      instance: primary\n"
        "      working-directory: map\n"
        "    - alias: lsp\n"
        "      command: ls\n"
        "      instance: primary\n"
        "      working-directory: map\n"
    )


def test_formats_of_another_context() -> None:
    d = docker_context()
    out = verbs_aliases.aliases_output
    assert out(d, "csv") == (
        "Alias,Instance,Command,Working directory,Context\n"
        "docker,docker,docker,map,docker\n"
        "docker-compose,docker,docker-compose,map,docker\n"
    )
    assert json.loads(out(d, "json"))["contexts"]["default"] == {}
    assert '        "default": {\n        },\n' in out(d, "json")
    assert out(d, "table") == (
        "Alias            Instance   Command          Context   Working directory\n"
        "docker           docker     docker           docker    map\n"
        "docker-compose   docker     docker-compose   docker    map\n"
    )
    assert out(d, "yaml").startswith("active_context: default\naliases:\n  default: ~\n  docker:\n")


# -- the dictionary (alias_dict.cpp) ------------------------------------------------------


def test_resolve_prefers_the_active_context_then_a_unique_name() -> None:
    d = docker_context()
    assert d.resolve("docker") == AliasDefinition("docker", "docker", "map")  # unique elsewhere
    d.add_alias("docker", AliasDefinition("vm", "docker", "default"))
    assert d.resolve("docker") == AliasDefinition("vm", "docker", "default")  # active first
    d.set_active_context("third")
    assert d.resolve("docker") is None  # in two contexts, neither active: ambiguous
    assert d.get_context_and_alias("docker.docker") == ("docker", "docker")
    assert d.get_context_and_alias("default.docker") == ("default", "docker")
    assert d.get_context_and_alias("nope.docker") is None


def test_remove_aliases_for_instance_drops_its_context_and_its_aliases() -> None:
    # alias_dict.cpp remove_aliases_for_instance; test_alias_dict.cpp RemoveInstanceTestsuite.
    d = AliasDict()
    d.add_alias("some_alias", AliasDefinition("instance_to_remove", "some_command"))
    d.add_alias("other_alias", AliasDefinition("other_instance", "other_command"))
    d.add_alias("another_alias", AliasDefinition("instance_to_remove", "another_command"))
    d.set_active_context("instance_to_remove")
    d.add_alias("x", AliasDefinition("other_instance", "x"))
    removed = d.remove_aliases_for_instance("instance_to_remove")
    assert sorted(removed) == [
        ("default", "another_alias"),
        ("default", "some_alias"),
        ("instance_to_remove", "x"),
    ]
    assert d.active == "default"
    assert sorted(d.active_context()) == ["other_alias"]


def test_save_drops_empty_contexts_but_the_active_one(home: Path) -> None:
    d = docker_context()
    d.set_active_context("empty-active")
    d.contexts["empty-other"] = {}
    store.save(d, home)
    back = store.load(home)
    assert back.active == "empty-active"
    assert sorted(back.contexts) == ["docker", "empty-active"]


def test_file_round_trip_and_atomic_write(home: Path) -> None:
    d = two_in_default()
    store.save(d, home)
    assert store.load(home) == d
    assert sorted(p.name for p in home.iterdir()) == ["aliases.json"]  # no temporary left
    assert (home / "aliases.json").read_text().endswith("}\n")


def test_multipass_old_flat_file_reads_into_default(home: Path) -> None:
    # alias_dict.cpp load_dict: no "active-context": "everything defined goes into the default".
    home.mkdir(parents=True)
    (home / "aliases.json").write_text(json.dumps({"lsp": {"instance": "p", "command": "ls"}}))
    d = store.load(home)
    assert d.active == "default"
    # a record without "working-directory" reads as "default" (alias_dict.cpp records_to_context)
    assert d.contexts == {"default": {"lsp": AliasDefinition("p", "ls", "default")}}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param("[1, 2]", id="not-an-object"),
        pytest.param(
            '{"active-context": "default", "contexts": {"default": {"a": '
            '{"instance": "i", "command": "c", "working-directory": "elsewhere"}}}}',
            id="bad-working-directory",
        ),
    ],
)
def test_a_damaged_file_is_an_error_not_a_fresh_start(home: Path, text: str) -> None:
    """Multipass starts over on a file it cannot parse; ketch says so and loses nothing."""
    home.mkdir(parents=True)
    (home / "aliases.json").write_text(text)
    with pytest.raises(store.AliasFileError) as err:
        store.load(home)
    assert str(home / "aliases.json") in err.value.message
    with pytest.raises(store.AliasFileError), store.changing(home):
        pass
    assert (home / "aliases.json").read_text() == text


def test_qt_json_escapes_like_json() -> None:
    value = {'a"b': {"c": "d\\e\nü"}}
    assert json.loads(store.qt_json(value)) == value


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "x\0y", "tab\there"])
def test_bad_alias_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="Alias has to be a valid filename"):
        store.check_name(name)


@pytest.mark.parametrize("name", ["ls", "docker-compose", "a.b", "ünï", "-x", "with space"])
def test_good_alias_names(name: str) -> None:
    assert store.check_name(name) == name


# -- scripts ----------------------------------------------------------------------------


def test_script_runs_ketch_exec_with_every_word_quoted(tmp_path: Path) -> None:
    """Run the script itself, with a stand-in ketch that prints its arguments."""
    fake = tmp_path / "fake ketch"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done\n')
    fake.chmod(0o755)
    d = AliasDefinition("vm", "echo 'hi'; rm -rf /", "default")
    script = tmp_path / "s"
    scripts.write_script(script, scripts.script_text(d, [str(fake)]))
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    done = subprocess.run([str(script), "a b", "$HOME", "--"], capture_output=True, text=True)
    assert done.stdout == "[exec][-n][vm][--][echo 'hi'; rm -rf /][a b][$HOME][--]"
    mapped = scripts.script_text(AliasDefinition("vm", "ls"), [str(fake)])
    assert " -n " not in mapped


def test_ketch_argv_is_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "ketch"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bin/ketch", "alias"])
    assert scripts.ketch_argv() == [str(exe)]
    monkeypatch.setattr(sys, "argv", ["/somewhere/ketch/cli/main.py", "alias"])
    assert scripts.ketch_argv() == [os.path.abspath(sys.executable), "-P", "-m", "ketch.cli.main"]


def test_sync_writes_qualified_and_bare_names_and_follows_prefer(home: Path) -> None:
    d = docker_context()
    d.add_alias("docker", AliasDefinition("vm", "docker"))
    assert scripts.sync_scripts(d, home) == []
    names = sorted(p.name for p in store.bin_dir(home).iterdir())
    # create_alias.cpp: CONTEXT.ALIAS always; ALIAS for the one a bare name means
    assert names == ["default.docker", "docker", "docker-compose", "docker.docker",
                     "docker.docker-compose"]  # fmt: skip
    bare = store.bin_dir(home) / "docker"
    assert "exec vm --" in bare.read_text()
    d.set_active_context("docker")  # prefer docker
    scripts.sync_scripts(d, home)
    assert "exec docker --" in bare.read_text()
    d.set_active_context("third")  # two contexts have "docker", neither active: no bare one
    scripts.sync_scripts(d, home)
    assert not bare.exists()


def test_sync_removes_stale_scripts_but_never_a_foreign_file(home: Path) -> None:
    d = two_in_default()
    scripts.sync_scripts(d, home)
    foreign = store.bin_dir(home) / "mine"
    foreign.write_text("#!/bin/sh\necho the user's own\n")
    d.remove_alias("default", "llp")
    scripts.sync_scripts(d, home)
    names = sorted(p.name for p in store.bin_dir(home).iterdir())
    assert names == ["default.lsp", "lsp", "mine"]
    with pytest.raises(scripts.NotOurs):
        scripts.write_script(foreign, "#!/bin/sh\n")
    assert "own" in foreign.read_text()


def test_path_hint(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    where = store.bin_dir()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    hint = scripts.path_hint()
    assert hint is not None
    assert hint.endswith(f'\n\nPATH="$PATH:{where}"\n')
    monkeypatch.setenv("PATH", f"/usr/bin:{where}/")
    assert scripts.path_hint() is None


# -- the verbs without a daemon -----------------------------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["alias", "vm"], "No command given"),
        (["alias", "vm:"], "No command given"),
        (["alias", ":ls"], "No instance name given"),
        (["alias", "vm:ls", "a/b"], "Alias has to be a valid filename"),
        (["alias", "vm:/usr/bin/"], "Alias has to be a valid filename"),
        (["unalias"], "Name argument or --all is required"),
        (["unalias", "a", "b", "--all"], "Cannot specify names when --all option set"),
        (["unalias", "ghost"], "Nonexistent alias: ghost."),
        (["prefer", "a/b"], "Context has to be a valid filename"),
    ],
)
def test_refusals_before_any_daemon_contact(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 1
    assert message in err
    assert out == ""


def test_prefer_and_unalias_by_context(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with store.changing(home) as d:
        d.add_alias("ls", AliasDefinition("vm", "ls"))
    assert run(["prefer", "work"], capsys)[0] == 0
    assert store.load(home).active == "work"
    assert "unalias failed: Nonexistent alias: ls.\n" in run(["unalias", "ls"], capsys)[2]
    assert run(["unalias", "default.ls"], capsys)[0] == 0
    assert store.load(home).empty()
    assert not any(store.bin_dir(home).iterdir())


def test_ketch_alias_name_expands_to_exec(home: Path) -> None:
    with store.changing(home) as d:
        d.add_alias("ll", AliasDefinition("vm", "ls", "default"))
        d.add_alias("pw", AliasDefinition("vm", "pwd"))
    assert cli.alias_command(["ll", "--", "-la", "x"]) == [
        "exec",
        "-n",
        "vm",
        "--",
        "ls",
        "-la",
        "x",
    ]
    assert cli.alias_command(["default.pw"]) == ["exec", "vm", "--", "pwd"]
    assert cli.alias_command(["nothing"]) is None


def test_forget_instances_creates_nothing_without_aliases(home: Path) -> None:
    verbs_aliases.forget_instances(["vm"])
    assert not home.exists()


def test_forget_instances_removes_theirs(home: Path) -> None:
    with store.changing(home) as d:
        d.add_alias("a", AliasDefinition("gone", "ls"))
        d.add_alias("b", AliasDefinition("stays", "ls"))
    verbs_aliases.forget_instances(["gone"])
    assert sorted(store.load(home).active_context()) == ["b"]
    assert sorted(p.name for p in store.bin_dir(home).iterdir()) == ["b", "default.b"]


def test_a_fresh_alias_home_is_a_storage_root_ketchd_accepts(home: Path) -> None:
    """By default the aliases' home is the default storage root: it must not become 0755."""
    from ketch.daemon.trust import check_root
    from ketch.layout import Root

    with store.changing(home) as d:
        d.add_alias("ls", AliasDefinition("vm", "ls"))
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "aliases.json").stat().st_mode) == 0o600
    assert check_root(Root(home)) == []  # refused not, and nothing to tighten
    assert os.access(store.bin_dir(home) / "ls", os.X_OK)
