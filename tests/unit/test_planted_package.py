"""A ``ketch/`` package planted in the working directory is never imported by what ketch starts.

``python -m MODULE`` puts the working directory first on ``sys.path``: a user
who runs ``ketch`` in a directory someone else wrote to (a project checkout,
``/tmp``) would have that directory's ``ketch/`` imported by the ketchd the
CLI starts, which may run as root.  Every ``python -m ketch.…`` that ketch
runs uses ``-P``.  The attack is real: without ``-P`` the planted package runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ketch.cli.alias_scripts import ketch_argv
from ketch.client_autostart import daemon_argv
from ketch.images.buildproc import child_argv


def plant(where: Path) -> Path:
    marker = where / "PWNED"
    pkg = where / "ketch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    for sub in ("cli", "daemon", "images"):
        (pkg / sub).mkdir()
        (pkg / sub / "__init__.py").write_text("")
    for mod in ("cli/main.py", "daemon/main.py", "images/buildproc.py"):
        (pkg / mod).write_text("")
    return marker


def run(argv: list[str], cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, capture_output=True, timeout=60, check=False)


def test_without_dash_p_the_planted_package_would_run(tmp_path: Path) -> None:
    marker = plant(tmp_path)
    run([sys.executable, "-m", "ketch.cli.main", "--version"], tmp_path)
    assert marker.exists()  # the attack this guards against


@pytest.mark.parametrize(
    "argv",
    [
        [*daemon_argv()[:-1], "ketch.cli.main", "--version"],  # the daemon's flags, a quick module
        [*child_argv("tiny", Path("/nonexistent"))[:3], "ketch.cli.main", "--version"],
        [*ketch_argv(), "--version"],  # under pytest: the interpreter form
    ],
    ids=["daemon", "image-build-child", "alias-script"],
)
def test_what_ketch_starts_never_imports_it(argv: list[str], tmp_path: Path) -> None:
    marker = plant(tmp_path)
    run(argv, tmp_path)
    assert not marker.exists()


def test_every_python_dash_m_ketch_runs_has_dash_p() -> None:
    for argv in (daemon_argv(), child_argv("tiny", Path("/x"))):
        assert argv[1:3] == ["-P", "-m"], argv
    alias = ketch_argv()
    assert len(alias) == 1 or alias[1:3] == ["-P", "-m"], alias
