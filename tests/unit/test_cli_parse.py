"""The ``ketch`` command line: verbs and Multipass's flags, usage errors, completion, help.

Nothing here talks to a daemon.  Parsing is checked on ``build_parser()``;
usage errors run ``main()`` in-process with ``KETCH_STORAGE`` pointing below
a regular file, so that any accidental attempt to reach (or start) ketchd
fails at once with exit code 3 instead of the expected 1; a few checks run
``python -m ketch.cli.main`` as a real subprocess with ``KETCH_STORAGE`` in a
temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ketch import __version__
from ketch.cli import main as cli
from ketch.cli import verbs_guest, verbs_instances, verbs_system
from ketch.cli.main import HELP, build_parser
from ketch.errors import EXIT_USAGE

VERBS = sorted(HELP)
ALIASES = {"ls": "list", "sh": "shell", "connect": "shell", "copy-files": "transfer"}


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def handler(ns: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The function a parsed command line runs (the parser names it; this imports it)."""
    fn: Callable[[argparse.Namespace], int] = ns.func.resolve()
    return fn


def ketch(tmp_path: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess with its own storage root."""
    env = dict(os.environ, KETCH_STORAGE=str(tmp_path / "storage"))
    return subprocess.run(
        [sys.executable, "-m", "ketch.cli.main", *argv],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=60,
    )


@pytest.fixture
def no_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A storage root that cannot exist: a daemon contact fails (exit 3), never starts one."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    root = blocker / "storage"
    monkeypatch.setenv("KETCH_STORAGE", str(root))
    return root


# -- parsing every verb ----------------------------------------------------------------------


def test_launch_with_multipass_flags() -> None:
    ns = parse(
        "launch", "noble", "-n", "web", "-c", "2", "-m", "2G", "-d", "10G",
        "--cloud-init", "ci.yaml", "--timeout", "600",
    )  # fmt: skip
    assert (ns.image, ns.name, ns.cpus, ns.memory, ns.disk) == ("noble", "web", 2, "2G", "10G")
    assert ns.cloud_init == "ci.yaml" and ns.timeout == 600.0
    assert handler(ns) is verbs_instances.cmd_launch


def test_launch_long_flags_and_defaults() -> None:
    ns = parse("launch", "--name", "a", "--cpus", "1", "--memory", "1G", "--disk", "5G")
    assert (ns.image, ns.name, ns.cpus, ns.memory, ns.disk) == (None, "a", 1, "1G", "5G")
    assert parse("launch", "--mem", "3G").memory == "3G"
    bare = parse("launch")
    assert (bare.image, bare.name, bare.cpus, bare.cloud_init) == (None, None, None, None)


@pytest.mark.parametrize("verb", ["start", "stop", "suspend", "restart", "delete", "recover"])
def test_instance_verbs_take_names_and_all(verb: str) -> None:
    ns = parse(verb, "a", "b")
    assert ns.names == ["a", "b"] and ns.all is False
    ns = parse(verb, "--all")
    assert ns.names == [] and ns.all is True
    assert handler(ns) is getattr(verbs_instances, f"cmd_{verb}")


def test_stop_flags() -> None:
    ns = parse("stop", "vm", "--force")
    assert ns.force and not ns.cancel and ns.time is None
    ns = parse("stop", "vm", "-t", "+5")
    assert ns.time == "+5"
    ns = parse("stop", "vm", "--time", "10")
    assert ns.time == "10"
    ns = parse("stop", "vm", "-c")
    assert ns.cancel
    ns = parse("stop", "-f", "vm")
    assert ns.force and ns.names == ["vm"]


def test_delete_purge() -> None:
    assert parse("delete", "vm", "--purge").purge is True
    assert parse("delete", "-p", "vm").purge is True
    assert parse("delete", "vm").purge is False


def test_purge_takes_nothing() -> None:
    assert handler(parse("purge")) is verbs_instances.cmd_purge


def exec_of(*argv: str) -> tuple[str, str | None, list[str]]:
    """(instance, working directory, guest command) as ``ketch exec`` would use them."""
    ns = cli.parse_args(build_parser(), ["exec", *argv])
    workdir, _no_map, command = verbs_guest.exec_request(ns)
    return ns.name, workdir, command


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["ls", "-la"], id="plain"),
        pytest.param(
            ["sh", "-c", "echo $HOME; rm -rf /tmp/x && `id` | cat > /dev/null"],
            id="shell-metacharacters",
        ),
        pytest.param(["sh", "-c", "--format json"], id="flag-inside-an-argument"),
        pytest.param(["echo", "--", "-n", "--help"], id="inner-double-dash-and-help"),
        pytest.param(["echo", "-d", "/x", "--format", "json"], id="ketch-flags-after-command"),
        pytest.param(["printf", "%s\\n", "'quoted'", '"dq"', "ünï"], id="quotes-and-unicode"),
        pytest.param(["true", "", "x"], id="empty-argument"),
    ],
)
def test_exec_keeps_hostile_arguments_literal(command: list[str]) -> None:
    assert exec_of("vm", "--", *command) == ("vm", None, command)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["-d", "/elsewhere", "pwd"], id="looks-like-exec-flag"),
        pytest.param(["--format", "json"], id="looks-like-ketch-flag"),
    ],
)
def test_exec_command_starting_with_a_dash_is_literal(command: list[str]) -> None:
    assert exec_of("vm", "--", *command) == ("vm", None, command)


def test_exec_without_double_dash() -> None:
    assert exec_of("vm", "uname", "-a") == ("vm", None, ["uname", "-a"])


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["-d", "/srv", "vm", "--", "pwd"], id="short-before-name"),
        pytest.param(["--working-directory", "/srv", "vm", "--", "pwd"], id="long-before-name"),
        pytest.param(["vm", "-d", "/srv", "--", "pwd"], id="short-after-name"),
        pytest.param(["vm", "--working-directory=/srv", "--", "pwd"], id="long-equals-after-name"),
        pytest.param(["vm", "--cd", "/srv", "--", "pwd"], id="cd-after-name"),
    ],
)
def test_exec_working_directory(argv: list[str]) -> None:
    assert exec_of(*argv) == ("vm", "/srv", ["pwd"])


def test_transfer_flags() -> None:
    ns = parse("transfer", "-r", "-p", "a.txt", "dir/", "vm:/home/ubuntu/x")
    assert ns.recursive and ns.parents
    assert ns.paths == ["a.txt", "dir/", "vm:/home/ubuntu/x"]
    ns = parse("transfer", "--recursive", "--parents", "vm:/etc", ".")
    assert ns.recursive and ns.parents
    ns = parse("transfer", "vm:/etc/hostname", "-")
    assert not ns.recursive and ns.paths == ["vm:/etc/hostname", "-"]


@pytest.mark.parametrize("verb", ["list", "info", "find"])
@pytest.mark.parametrize("fmt", ["table", "json", "csv", "yaml"])
def test_format_flag(verb: str, fmt: str) -> None:
    assert parse(verb, "--format", fmt).format == fmt


@pytest.mark.parametrize("verb", ["list", "info", "find"])
def test_format_defaults_to_table(verb: str) -> None:
    assert parse(verb).format == "table"


def test_info_names_and_all() -> None:
    ns = parse("info", "a", "b", "--format", "json")
    assert ns.names == ["a", "b"] and not ns.all
    assert parse("info", "--all").all


def test_find_query() -> None:
    assert parse("find", "release:noble").query == "release:noble"
    assert parse("find").query is None


@pytest.mark.parametrize(("alias", "verb"), sorted(ALIASES.items()))
def test_aliases(alias: str, verb: str) -> None:
    argv = {"ls": [], "sh": ["vm"], "connect": ["vm"], "copy-files": ["a", "vm:b"]}[alias]
    assert handler(parse(alias, *argv)).__name__ == f"cmd_{verb}"


def test_shell_name_is_optional() -> None:
    assert parse("shell").name is None
    assert parse("shell", "vm").name == "vm"


def test_get_set_image_version_completion() -> None:
    assert parse("get", "local.accel").key == "local.accel"
    assert parse("set", "local.accel=tcg").assignment == "local.accel=tcg"
    ns = parse("image", "build", "tiny", "--force")
    assert (ns.image_command, ns.name, ns.force) == ("build", "tiny", True)
    assert parse("image", "prune", "--days", "3").days == 3.0
    assert parse("image", "list", "--format", "json").format == "json"
    assert parse("version", "--format", "json").format == "json"
    assert parse("completion", "zsh").shell == "zsh"
    assert handler(parse("daemon")) is verbs_system.cmd_daemon


def test_every_verb_has_a_handler() -> None:
    parser = build_parser()
    minimal = {
        "exec": ["vm"], "get": ["k"], "set": ["k=v"], "transfer": ["a", "b"],
        "image": ["list"], "host": ["list"], "completion": ["bash"], "forward": ["vm", "80:80"],
        "snapshot": ["vm"], "restore": ["vm.snapshot1"], "clone": ["vm"],
        "alias": ["vm:ls"], "prefer": ["ctx"],
        "mount": [".", "vm"], "umount": ["vm"], "unmount": ["vm"],
    }  # fmt: skip
    for verb in VERBS:
        ns = parser.parse_args([verb, *minimal.get(verb, [])])
        fn = handler(ns)
        assert fn.__name__ == "cmd_" + verb.replace("-", "_") and fn.__module__.startswith(
            "ketch.cli.verbs_"
        ), verb


# -- usage errors in-process: exit 1, before any daemon contact ------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(["launch", "--cpus", "two"], "invalid int value", id="launch-cpus-not-int"),
        pytest.param(["list", "--format", "xml"], "invalid choice", id="list-bad-format"),
        pytest.param(["stop", "--bogus"], "unrecognized arguments: --bogus", id="stop-bad-flag"),
        pytest.param(["frobnicate"], "invalid choice", id="unknown-verb"),
        pytest.param(["completion", "fish"], "invalid choice", id="completion-fish"),
        pytest.param(["image"], "required", id="image-without-action"),
        pytest.param(["exec"], "required", id="exec-without-name"),
    ],
)
def test_parse_errors_exit_1(
    no_daemon: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert words in err
    assert "usage: ketch" in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(
            ["stop", "--force", "--time", "5", "vm"],
            "--force cannot be combined",
            id="stop-force-and-time",
        ),
        pytest.param(
            ["stop", "--force", "--cancel", "vm"],
            "--force cannot be combined",
            id="stop-force-and-cancel",
        ),
        pytest.param(["stop", "--time", "soon", "vm"], "invalid time 'soon'", id="stop-bad-time"),
        pytest.param(["delete"], "give instance names or --all", id="delete-nothing"),
        pytest.param(["recover"], "give instance names or --all", id="recover-nothing"),
        pytest.param(["exec", "vm"], "no command given", id="exec-no-command"),
        pytest.param(["exec", "vm", "--"], "no command given", id="exec-only-dashes"),
        pytest.param(
            ["exec", "vm", "-d", "/x", "--"], "no command given", id="exec-dir-no-command"
        ),
        pytest.param(
            ["exec", "vm", "--bogus", "--", "pwd"],
            "unknown exec option '--bogus'",
            id="exec-unknown-option-after-name",
        ),
        pytest.param(["exec", "vm", "-d"], "-d needs a directory", id="exec-dir-missing"),
        pytest.param(
            ["set", "novalue"], "there is no terminal to ask for it", id="set-no-value-no-tty"
        ),
        # src/client/cli/cmd/set.cpp: "Bad key-value format."
        pytest.param(["set", "=x"], "Bad key-value format.", id="set-no-key"),
        # src/client/cli/cmd/get.cpp
        pytest.param(["get"], "Multiple settings not implemented yet.", id="get-no-key"),
        pytest.param(["image", "build", "jammy"], "unknown image 'jammy'", id="image-build-other"),
        pytest.param(["transfer", "only-one"], "at least one source", id="transfer-one-path"),
        pytest.param(
            ["launch", "--cloud-init", "/nonexistent/ci.yaml"],
            "cannot read cloud-init",
            id="launch-missing-cloud-init",
        ),
    ],
)
def test_usage_errors_exit_1_with_a_message(
    no_daemon: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    assert cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{argv[0]} failed: " in err
    assert words in err


def test_exec_usage_error_has_a_hint(no_daemon: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["exec", "vm"]) == EXIT_USAGE
    assert "hint: ketch exec NAME -- COMMAND" in capsys.readouterr().err


def test_stop_time_usage_error_has_a_hint(
    no_daemon: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["stop", "--time", "x", "vm"]) == EXIT_USAGE
    assert "hint: give minutes" in capsys.readouterr().err


def test_a_daemon_contact_would_show_as_exit_3(
    no_daemon: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guard for the fixture: reaching for the daemon here fails fast, without starting one."""
    assert cli.main(["list"]) == 3
    assert "ketchd" in capsys.readouterr().err
    assert not no_daemon.exists()


@pytest.mark.parametrize(
    ("argv", "area", "own", "models"),
    [
        (["list"], "args_instances", {"verbs_instances"}, False),
        (["info", "vm"], "args_instances", {"verbs_instances"}, False),
        (["exec", "vm", "--", "true"], "args_guest", {"verbs_guest", "guest"}, False),
        (["snapshot", "vm"], "args_instances", {"verbs_snapshots", "progress"}, True),  # a stream
    ],
)
def test_a_verb_imports_its_own_handler_module_only(
    no_daemon: Path, argv: list[str], area: str, own: set[str], models: bool
) -> None:
    """The hot path stays light: the verb's handler module and the one declaring its arguments."""
    code = (
        "import sys\n"
        "from ketch.cli.main import main\n"
        f"code = main({argv!r})\n"
        "loaded = sorted(m[10:] for m in sys.modules if m.startswith('ketch.cli.'))\n"
        "print(code, 'msgspec' in sys.modules, ' '.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    code_, msgspec, *loaded = done.stdout.split()
    assert code_ == "3", done.stderr  # the daemon is unreachable: the request was the next step
    assert set(loaded) == {"main", "parser", area} | own
    assert msgspec == str(models)  # list, info, exec: sent (and failed) before the models


# -- the real program as a subprocess ---------------------------------------------------------


def test_bogus_flag_exits_1_and_says_why(tmp_path: Path) -> None:
    done = ketch(tmp_path, "--bogus")
    assert done.returncode == 1
    assert "unrecognized arguments: --bogus" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "storage").exists()


def test_no_verb_prints_help_and_exits_1(tmp_path: Path) -> None:
    done = ketch(tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("Usage: ketch [options] <command>\n")  # as multipass
    for verb in ("launch", "list", "exec"):
        assert verb in done.stderr


def test_version_flag(tmp_path: Path) -> None:
    done = ketch(tmp_path, "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"ketch {__version__}"


def test_help_launch_prints_launch_help(tmp_path: Path) -> None:
    done = ketch(tmp_path, "help", "launch")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: ketch launch")
    for flag in ("--name", "--cpus", "--memory", "--disk", "--cloud-init", "--timeout"):
        assert flag in done.stdout
    assert HELP["launch"] in done.stdout


def test_help_without_topic_lists_every_verb(tmp_path: Path) -> None:
    done = ketch(tmp_path, "help")
    assert done.returncode == 0
    for verb in VERBS:
        assert verb in done.stdout


def test_help_unknown_topic_exits_1(tmp_path: Path) -> None:
    done = ketch(tmp_path, "help", "frobnicate")
    assert done.returncode == 1
    assert "invalid choice" in done.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_mentions_every_verb(tmp_path: Path, shell: str) -> None:
    done = ketch(tmp_path, "completion", shell)
    assert done.returncode == 0
    words = set(done.stdout.replace("'", " ").replace('"', " ").replace(":", " ").split())
    for verb in [*VERBS, *ALIASES]:
        assert verb in words, verb
    assert "_ketch" in done.stdout


def test_bash_completion_is_valid_and_completes(tmp_path: Path) -> None:
    script = tmp_path / "ketch.bash"
    script.write_text(ketch(tmp_path, "completion", "bash").stdout)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    probe = (
        f"source {script}\n"
        'COMP_WORDS=(ketch st); COMP_CWORD=1; _ketch; echo "verbs: ${COMPREPLY[*]}"\n'
        'COMP_WORDS=(ketch stop --f); COMP_CWORD=2; _ketch; echo "stop: ${COMPREPLY[*]}"\n'
        'COMP_WORDS=(ketch launch --c); COMP_CWORD=2; _ketch; echo "launch: ${COMPREPLY[*]}"\n'
    )
    out = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()
    assert sorted(out[0].split()[1:]) == ["start", "stop"]
    assert out[1].split()[1:] == ["--force"]
    assert sorted(out[2].split()[1:]) == ["--cloud-init", "--cold", "--cpus"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_completion_is_valid(tmp_path: Path) -> None:
    script = tmp_path / "_ketch"
    script.write_text(ketch(tmp_path, "completion", "zsh").stdout)
    subprocess.run(["zsh", "-n", str(script)], check=True, timeout=30)
