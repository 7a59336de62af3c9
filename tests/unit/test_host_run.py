"""The one runner of host programs (ketch.host.run) and what the image recipes share.

Real programs throughout: ``sh`` for success, failure and output, a program
name that does not exist for the missing-tool hint, and the recipes' own
package directories for the recipe bytes.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from ketch.errors import HostCommandError, Timeout
from ketch.host.run import TOOL_PACKAGES, missing_tool_hint, run, tool
from ketch.images import debian, tiny
from ketch.images.built import recipe_source


def test_run_captures_output_and_exit_code() -> None:
    done = asyncio.run(run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False))
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    assert done.text == "out\n"


def test_run_checked_failure_carries_stderr() -> None:
    with pytest.raises(HostCommandError) as err:
        asyncio.run(run(["sh", "-c", "echo broken >&2; exit 2"]))
    assert err.value.returncode == 2 and "broken" in err.value.message


def test_run_timeout_kills_the_program() -> None:
    with pytest.raises(Timeout):
        asyncio.run(run(["sleep", "30"], timeout=0.2))


def test_tool_runs_in_the_c_locale(tmp_path: Path) -> None:
    done = asyncio.run(tool(["sh", "-c", 'echo "$LC_ALL"; pwd'], cwd=tmp_path))
    assert done.text.splitlines() == ["C", str(tmp_path)]


def test_a_missing_tool_names_its_package(tmp_path: Path) -> None:
    # A path whose name is a known tool, that does not exist: the spawn fails.
    missing = str(tmp_path / "mkfs.ext4")
    with pytest.raises(HostCommandError) as err:
        asyncio.run(tool([missing, "-V"], hint="not this one"))
    assert err.value.returncode is None
    assert err.value.hint == "install the Debian package e2fsprogs (apt-get install e2fsprogs)"


def test_a_missing_unknown_tool_gets_the_callers_hint(tmp_path: Path) -> None:
    with pytest.raises(HostCommandError) as err:
        asyncio.run(tool([str(tmp_path / "no-such-tool")], hint="check the build"))
    assert err.value.hint == "check the build"


def test_a_failing_tool_gets_the_callers_hint() -> None:
    with pytest.raises(HostCommandError) as err:
        asyncio.run(tool(["sh", "-c", "exit 1"], hint="check the free space"))
    assert err.value.returncode == 1 and err.value.hint == "check the free space"


def test_every_tool_the_builds_name_has_a_package() -> None:
    for name in ("apt-get", "apt-cache", "dpkg-deb", "dpkg-query", "debootstrap", "mkfs.fat"):
        assert name in TOOL_PACKAGES
    assert missing_tool_hint("/usr/sbin/mkfs.fat") == (
        "install the Debian package dosfstools (apt-get install dosfstools)"
    )
    assert missing_tool_hint("sh") is None


@pytest.mark.parametrize("package", [tiny, debian], ids=["tiny", "debian-12"])
def test_the_recipe_is_every_module_of_the_package(package: object, tmp_path: Path) -> None:
    source = Path(str(getattr(package, "__file__", ""))).parent
    modules = sorted(p.name for p in source.glob("*.py"))
    assert len(modules) >= 4 and "__init__.py" in modules
    copy = tmp_path / "recipe"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    base = recipe_source(copy)
    assert base == recipe_source(source)
    for name in modules:
        path = copy / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n# changed\n")
        assert recipe_source(copy) != base, f"{name} is not part of the recipe"
        path.write_bytes(original)
    (copy / "notes.txt").write_text("not a module")
    assert recipe_source(copy) == base
