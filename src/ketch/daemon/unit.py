"""The systemd unit that starts ketchd at boot: ``ketch daemon --install-unit [--system]``.

The unit's text is :data:`TEMPLATE` (shipped in the package; :func:`render`
fills in the interpreter and the storage root, pure).  A user unit goes to
``~/.config/systemd/user/ketchd.service`` (started when the user's session
manager starts: with ``loginctl enable-linger`` at boot), a system one to
``/etc/systemd/system/ketchd.service``; then ``systemctl [--user]
daemon-reload`` and ``enable --now`` (:func:`systemctl_argv`, pure).  Once
ketchd runs at boot, it starts again the instances that were running when
the host went down (``service/autostart.py``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from ketch.errors import HostCommandError, KetchError

UNIT_NAME = "ketchd.service"
TEMPLATE = """\
[Unit]
Description=ketch daemon (ketchd) for {storage}
After=network-online.target

[Service]
Type=simple
ExecStart={python} -m ketch.daemon.main --storage {storage}
Restart=on-failure
RestartSec=2
# KillMode=process: stopping the service must not kill the VMs it manages
# (QEMU runs detached, but in the service's cgroup).
KillMode=process

[Install]
WantedBy={wanted_by}
"""


def render(python: str, storage: str, *, system: bool) -> str:
    """The unit's text (pure)."""
    return TEMPLATE.format(
        python=shlex.quote(python),
        storage=shlex.quote(storage),
        wanted_by="multi-user.target" if system else "default.target",
    )


def unit_path(*, system: bool, home: str | None = None) -> Path:
    if system:
        return Path("/etc/systemd/system") / UNIT_NAME
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
        home or os.path.expanduser("~"), ".config"
    )
    return Path(base) / "systemd" / "user" / UNIT_NAME


def systemctl_argv(*, system: bool) -> list[list[str]]:
    """The commands that load and enable the unit (pure)."""
    scope = [] if system else ["--user"]
    return [
        ["systemctl", *scope, "daemon-reload"],
        ["systemctl", *scope, "enable", "--now", UNIT_NAME],
    ]


def install(storage: str, *, system: bool) -> Path:
    """Write the unit and enable it; the unit's path."""
    path = unit_path(system=system)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(sys.executable, storage, system=system))
    for argv in systemctl_argv(system=system):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KetchError(
                f"wrote {path} but could not run {' '.join(argv)}: {exc}",
                hint="is systemd running here? enable the unit by hand",
            ) from exc
        if done.returncode != 0:
            raise HostCommandError(argv, done.returncode, done.stderr.strip()[:300])
    return path
