"""The pure parts of mounts: argv of both sides, /proc/mounts, validation, CLI arguments, info.

Real things where they are cheap: ``sh`` runs the guest script's unmount
check against a /proc/mounts text, the validation looks at real directories.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ketch.api import models as m
from ketch.cli.output import mounts_text
from ketch.cli.verbs_mounts import launch_mount, parse_targets, split_target
from ketch.errors import EXIT_FAILED, EXIT_USAGE, InvalidArgument, KetchError
from ketch.host.sftp.launch import (
    READ_AHEAD_KB,
    SSHFS_OPTIONS,
    clear_script,
    escape_mount_path,
    guest_argv,
    guest_tune_argv,
    guest_unmount_argv,
    is_supervisor,
    mounted_targets,
    supervisor_argv,
    tune_script,
)
from ketch.host.ssh.argv import remote_command
from ketch.layout import InstanceDir, mount_key
from ketch.model import IdMap
from ketch.service.mounts import check_source, check_target, default_maps, parse_id_map

PROC_MOUNTS = (
    "/dev/vda / ext4 rw,relatime 0 0\n"
    ":/ /mnt/share fuse.sshfs rw,nosuid,nodev,relatime,user_id=0,group_id=0,allow_other 0 0\n"
    ":/ /home/ubuntu/my\\040project fuse.sshfs rw 0 0\n"
    "tmpfs /run tmpfs rw 0 0\n"
)


def test_mounted_targets_reads_sshfs_lines_and_unescapes() -> None:
    assert mounted_targets(PROC_MOUNTS) == {"/mnt/share", "/home/ubuntu/my project"}
    assert mounted_targets("") == set()


def test_supervisor_argv_and_its_recognition() -> None:
    argv = supervisor_argv(
        "/src",
        uid=1234,
        gid=1234,
        uid_maps=[(1234, 1000)],
        gid_maps=[(1234, 1000)],
        pidfile="/r/instances/vm/mounts/k.pid",
        log="/r/instances/vm/mounts/k.log",
        ssh=["ssh", "-p", "22", "--", "127.0.0.1", "cmd --pidfile /other"],
        python="/usr/bin/python3",
    )
    assert argv[:4] == ["/usr/bin/python3", "-m", "ketch.host.sftp", "/src"]
    assert argv[argv.index("--uid-map") + 1] == "1234:1000"
    assert is_supervisor(argv, "/r/instances/vm/mounts/k.pid")
    assert not is_supervisor(argv, "/other")  # after "--": the ssh command's words
    assert not is_supervisor(["/usr/bin/python3", "-m", "other", "--pidfile", "/x"], "/x")


def test_guest_command_is_one_quoted_shell_string() -> None:
    target = "/home/ubuntu/a b'; touch /tmp/pwned"
    command = remote_command(guest_argv(target, mount_key(target)))
    assert command.startswith("sudo -n env 'KETCH_MOUNT_AT=/home/ubuntu/a\\040b'")
    assert " sh -c " in command
    assert "'/home/ubuntu/a b'\"'\"'; touch /tmp/pwned'" in command
    assert "-o " + ",".join(SSHFS_OPTIONS) in command
    assert "slave" in SSHFS_OPTIONS and "allow_other" in SSHFS_OPTIONS


def test_mount_files_are_named_by_a_digest_of_the_target() -> None:
    idir = InstanceDir(Path("/r/instances/vm"))
    assert idir.mount_pidfile("/mnt/a") == Path(f"/r/instances/vm/mounts/{mount_key('/mnt/a')}.pid")
    assert idir.mount_log("/mnt/a").suffix == ".log"
    assert mount_key("/mnt/a") != mount_key("/mnt/b") and len(mount_key("/x")) == 16


@pytest.mark.parametrize(
    ("target", "clean"),
    [("/mnt/share", "/mnt/share"), ("/home/ubuntu/p/", "/home/ubuntu/p"), ("//srv//x", "/srv/x")],
)
def test_good_targets(target: str, clean: str) -> None:
    assert check_target(target, "ubuntu") == clean


@pytest.mark.parametrize(
    "target",
    ["relative", "", "/", "/proc", "/proc/x", "/sys/fs", "/dev", "/etc", "/etc/x", "/usr",
     "/usr/local", "/boot", "/run/x", "/var", "/home", "/home/ubuntu", "/bin", "/lib64",
     "/mnt/../etc"],
)  # fmt: skip
def test_bad_targets_are_usage_errors(target: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_target(target, "ubuntu")
    assert caught.value.exit_code == EXIT_USAGE


def test_sources(tmp_path: Path) -> None:
    assert check_source(str(tmp_path)) == os.path.realpath(tmp_path)
    with pytest.raises(KetchError) as caught:
        check_source(str(tmp_path / "missing"))
    assert caught.value.exit_code == EXIT_FAILED and "does not exist" in caught.value.message
    (tmp_path / "file").write_text("x")
    with pytest.raises(KetchError):
        check_source(str(tmp_path / "file"))


def test_default_maps_are_the_owner_to_the_default_user(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(tmp_path, 4321, 4322)
    st = tmp_path.stat()
    assert default_maps(str(tmp_path), (), ()) == (
        (IdMap(st.st_uid, None),),
        (IdMap(st.st_gid, None),),
    )
    given = (IdMap(1, 2),)
    assert default_maps(str(tmp_path), given, given) == (given, given)


def test_id_maps() -> None:
    assert parse_id_map("1000:1001") == IdMap(1000, 1001)
    assert parse_id_map("0:default") == IdMap(0, None)
    for bad in ("1000", "a:b", ":1", "1:", "-1:2", "99999999999:1"):
        with pytest.raises(InvalidArgument):
            parse_id_map(bad)


def test_cli_arguments(tmp_path: Path) -> None:
    assert split_target("vm") == ("vm", None)
    assert split_target("vm:/x") == ("vm", "/x")
    for bad in (":/x", "vm:"):
        with pytest.raises(InvalidArgument):
            split_target(bad)
    source = str(tmp_path / "src")
    assert parse_targets(source, ["a", "b:/t"]) == [("a", source), ("b", "/t")]
    assert launch_mount(f"{source}:/t") == (source, "/t")
    assert launch_mount(source) == (source, source)


def test_info_lines_as_multipass() -> None:
    mounts = {
        "/mnt/share": m.MountInfo(
            source_path="/home/me/project",
            uid_mappings=["1000:default"],
            gid_mappings=["1000:default"],
            type="classic",
            active=True,
            transport="virtio-serial",
        ),
        "/mnt/slow": m.MountInfo(
            source_path="/srv/y",
            uid_mappings=[],
            gid_mappings=[],
            type="classic",
            active=True,
            transport="ssh",
        ),
        "/opt/x": m.MountInfo(
            source_path="/srv/x",
            uid_mappings=[],
            gid_mappings=[],
            type="native",
            active=False,
        ),
    }
    assert mounts_text({}) == "--"
    assert mounts_text(mounts).split("\n") == [
        "/home/me/project => /mnt/share",
        " " * 16 + "    UID map: 1000:default",
        " " * 16 + "    GID map: 1000:default",
        " " * 16 + "/srv/y           => /mnt/slow (over ssh)",
        " " * 16 + "/srv/x           => /opt/x (native) (not active)",
    ]


def run_guest_sh(
    argv: list[str], script: str, path: str = ""
) -> subprocess.CompletedProcess[bytes]:
    """A guest script's argv (``guest_sh``) run here, its script replaced by ``script``
    (the same, on a test's files), without sudo: env, sh and their arguments as given."""
    assert argv[:3] == ["sudo", "-n", "env"] and argv[4:6] == ["sh", "-c"]
    name, value = argv[3].split("=", 1)
    env = {
        **os.environ,
        name: value,
        "PATH": f"{path}:{os.environ['PATH']}" if path else os.environ["PATH"],
    }
    return subprocess.run(["sh", "-c", script, *argv[7:]], env=env, capture_output=True, timeout=10)


# /proc/self/mountinfo of a tiny guest with two classic mounts, one at "/mnt/my share".
MOUNTINFO = Path(__file__).parent / "data" / "mountinfo-tiny-sshfs.txt"


@pytest.mark.parametrize(("target", "dev"), [("/mnt/my share", "0:25"), ("/mnt/plain", "0:26")])
def test_the_tune_script_raises_the_read_ahead_of_that_mount_only(
    tmp_path: Path, target: str, dev: str
) -> None:
    bdi = tmp_path / "bdi"
    for name in ("0:25", "0:26", "254:0"):
        (bdi / name).mkdir(parents=True)
        (bdi / name / "read_ahead_kb").write_text("128\n")
    done = run_guest_sh(guest_tune_argv(target), tune_script(str(MOUNTINFO), str(bdi)))
    assert done.returncode == 0 and done.stderr == b""
    got = {d.name: (d / "read_ahead_kb").read_text().strip() for d in bdi.iterdir()}
    assert got == {n: str(READ_AHEAD_KB) if n == dev else "128" for n in got}


def test_the_tune_script_says_when_there_is_no_such_mount(tmp_path: Path) -> None:
    done = run_guest_sh(guest_tune_argv("/mnt/other"), tune_script(str(MOUNTINFO), str(tmp_path)))
    assert b"no sshfs at /mnt/other" in done.stderr


def test_mount_paths_are_escaped_as_the_kernel_does() -> None:
    assert escape_mount_path("/mnt/my share\tx\\y") == "/mnt/my\\040share\\011x\\134y"
    assert mounted_targets(f":/ {escape_mount_path('/a b')} fuse.sshfs rw 0 0") == {"/a b"}


def test_the_clear_script_unmounts_a_dead_sshfs_at_a_target_with_a_space(tmp_path: Path) -> None:
    """/proc/mounts spells the target with octal escapes: the script must still find it
    (it once compared the plain path, and left a dead mount at such a target)."""
    mounts = tmp_path / "mounts"
    mounts.write_text(
        ":/ /mnt/my\\040share fuse.sshfs rw,nosuid,nodev 0 0\n"
        ":/ /mnt/my fuse.sshfs rw 0 0\n/dev/vda / ext4 rw 0 0\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "umount"  # records its arguments and takes the line out of "mounts"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/umount.calls\n'
        f"grep -v 'my.040share' {mounts} > {mounts}.new; mv {mounts}.new {mounts}\n"
    )
    fake.chmod(0o755)
    argv = guest_unmount_argv("/mnt/my share", "k")
    done = run_guest_sh(argv, clear_script(str(mounts)) + "true", str(bin_dir))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "umount.calls").read_text() == "-l /mnt/my share\n"
    assert b"unmounting /mnt/my share" in done.stderr
    assert "/mnt/my fuse.sshfs" in mounts.read_text()  # another mount is left alone
