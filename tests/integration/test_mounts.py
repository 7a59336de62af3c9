"""Classic mounts on a real tiny guest: files both ways, mapped owners, lifecycle, refusals.

One instance, launched with ``--mount``, walks through the tests in order:
the host's file in the guest and the guest's write on the host (owned by the
share's non-root owner), ``info`` (table and JSON), the stream on the
instance's virtio-serial port (no ssh carries it), its read-ahead raised, a
``kill -9`` of ketchd, suspend/resume, stop/start, ``umount`` and ``mount`` on a running instance,
the refusals, and a hostile share (symlinks out of it, from the host and from
the guest) that shows nothing of the host.  Nothing of a mount's host side
outlives ``stop --force`` or ``delete --purge``.  Last, with its record of the
mounts' controller removed (an instance made before it), it mounts over ssh.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch, unique

from ketch.host import procs
from ketch.host.sftp.launch import READ_AHEAD_KB
from ketch.layout import mount_key

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the SFTP server's confinement needs root"),
]

OWNER = 1234  # the share's host owner: not root
TARGET = "/mnt/share"
SECRET = "host secret beside the share"


@pytest.fixture(scope="module")
def share() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="ketch-share-", dir="/tmp"))
    os.chmod(base, 0o755)
    (base / "secret.txt").write_text(SECRET)
    root = base / "share"
    root.mkdir()
    (root / "hello.txt").write_text("hello from the host\n")
    (root / "up").symlink_to("../secret.txt")
    (root / "abs").symlink_to(base / "secret.txt")
    (root / "etc").symlink_to("/etc")
    for path in [root, *root.iterdir()]:
        os.chown(path, OWNER, OWNER, follow_symlinks=False)
    yield root
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mvm(ketch: Ketch, share: Path) -> Iterator[str]:
    name = unique("mnt")
    ketch.run("launch", "tiny", "--name", name, "--memory", "512M", "--mount", f"{share}:{TARGET}")
    try:
        yield name
    finally:
        ketch.run("delete", "--purge", name, check=False)
        assert supervisors(ketch, name) == []


def supervisors(ketch: Ketch, name: str) -> list[int]:
    """Live processes of this instance's mount supervisors (and their servers)."""
    mark = str(ketch.root / "instances" / name / "mounts")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = procs.cmdline(int(entry))
            if argv and "ketch.host.sftp" in argv and any(a.startswith(mark) for a in argv):
                found.append(int(entry))
    return found


def guest_read(ketch: Ketch, name: str, path: str) -> str:
    done = ketch.run("exec", name, "--", "cat", path, check=False)
    if done.returncode != 0:
        Path("/tmp/cl-diag.txt").write_text(diagnose(ketch, name))
    assert done.returncode == 0, (done.stderr, diagnose(ketch, name))
    return done.stdout


def diagnose(ketch: Ketch, name: str) -> str:
    """The mounts' logs and the guest's view, for a failure's message."""
    logs = [p.read_text() for p in (ketch.root / "instances" / name / "mounts").glob("*.log")]
    guest = ketch.run("exec", name, "--", "sh", "-c", "grep sshfs /proc/mounts; ps", check=False)
    return "\n".join([*logs, guest.stdout, guest.stderr, str(supervisors(ketch, name))])


def test_a_host_file_appears_in_the_guest(ketch: Ketch, mvm: str) -> None:
    assert guest_read(ketch, mvm, f"{TARGET}/hello.txt") == "hello from the host\n"
    # Owned by the guest's default user, as Multipass's default mapping.
    ids = ketch.exec(mvm, "sh", "-c", f"stat -c '%u:%g' {TARGET}/hello.txt; id -u; id -g").split()
    assert ids[0] == f"{ids[1]}:{ids[2]}"


def test_a_guest_write_lands_as_the_mapped_host_user(ketch: Ketch, mvm: str, share: Path) -> None:
    ketch.exec(mvm, "sh", "-c", f"echo written > {TARGET}/from-guest.txt; mkdir {TARGET}/d")
    st = (share / "from-guest.txt").stat()
    assert (share / "from-guest.txt").read_text() == "written\n"
    assert (st.st_uid, st.st_gid) == (OWNER, OWNER)
    assert (share / "d").stat().st_uid == OWNER
    # Even as root in the guest: the host side is the share's owner, not root.
    ketch.exec(mvm, "sudo", "sh", "-c", f"echo root > {TARGET}/by-root.txt")
    assert (share / "by-root.txt").stat().st_uid == OWNER


def test_info_shows_the_mount(ketch: Ketch, mvm: str, share: Path) -> None:
    mounts = ketch.info(mvm)["mounts"]
    assert mounts == {
        TARGET: {
            "source_path": str(share),
            "uid_mappings": [f"{OWNER}:default"],
            "gid_mappings": [f"{OWNER}:default"],
            "type": "classic",
            "active": True,
            "transport": "virtio-serial",  # a new instance has the mounts' controller
        }
    }
    table = ketch.run("info", mvm).stdout
    assert f"Mounts:         {share} => {TARGET}\n" in table
    assert f"                    UID map: {OWNER}:default\n" in table
    assert f"                    GID map: {OWNER}:default\n" in table


def stream_children(ketch: Ketch, name: str) -> list[list[str]]:
    """The argv of each child of the instance's mount supervisors."""
    out = []
    for pid in supervisors(ketch, name):
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        out += [argv for c in children if (argv := procs.cmdline(int(c)))]
    return out


def test_the_stream_is_a_virtio_serial_port_not_ssh(ketch: Ketch, mvm: str) -> None:
    children = stream_children(ketch, mvm)
    assert children and all("ketch.host.sftp" in argv for argv in children)  # servers only
    assert not any(Path(argv[0]).name == "ssh" for argv in children)
    sup = [procs.cmdline(p) or [] for p in supervisors(ketch, mvm)]
    assert any("--connect" in argv for argv in sup), sup
    log = "".join(p.read_text() for p in (ketch.root / "instances" / mvm / "mounts").glob("*.log"))
    assert f"{TARGET} over virtio-serial" in log, log
    # the guest's sshfs reads and writes the port's device, not a pipe from sshd
    ports = ketch.exec(mvm, "sudo", "sh", "-c", "ls -l /proc/$(cat /run/ketch-mount-*.pid)/fd/0")
    assert "/dev/vport" in ports, ports


def read_ahead(ketch: Ketch, name: str, target: str) -> int:
    """The guest's read-ahead, in KiB, of the sshfs at ``target`` (its FUSE device's)."""
    script = (
        f"d=$(awk '$5 == \"{target}\" && / - fuse\\.sshfs / {{ print $3 }}' "
        "/proc/self/mountinfo); cat /sys/class/bdi/$d/read_ahead_kb"
    )
    return int(ketch.exec(name, "sh", "-c", script))


def test_the_mount_reads_ahead_further_than_the_kernels_default(ketch: Ketch, mvm: str) -> None:
    assert read_ahead(ketch, mvm, TARGET) == READ_AHEAD_KB > 128


def test_nothing_outside_the_share_is_seen_from_the_guest(ketch: Ketch, mvm: str) -> None:
    script = (
        f"cat {TARGET}/up {TARGET}/abs 2>/dev/null; ls {TARGET}/etc/ 2>/dev/null | head -3; "
        f"ln -s /../../../secret.txt {TARGET}/made; cat {TARGET}/made 2>/dev/null; "
        f"cat {TARGET}/../secret.txt 2>/dev/null; grep -r 'host secret' {TARGET} 2>/dev/null; true"
    )
    out = ketch.exec(mvm, "sudo", "sh", "-c", script)
    assert SECRET not in out


def test_the_mount_survives_a_killed_daemon(ketch: Ketch, mvm: str) -> None:
    before = supervisors(ketch, mvm)
    assert before
    ketch.kill_daemon()
    assert guest_read(ketch, mvm, f"{TARGET}/hello.txt") == "hello from the host\n"
    assert supervisors(ketch, mvm) == before
    assert ketch.info(mvm)["mounts"][TARGET]["active"] is True


def test_a_dead_host_side_is_restarted_by_a_new_daemon(ketch: Ketch, mvm: str) -> None:
    ketch.kill_daemon()
    for pid in supervisors(ketch, mvm):
        os.kill(pid, 9)
    # A new daemon (started by this info) finds it dead and puts it back, in the background
    # once it has started: waited for, bounded.
    deadline = time.monotonic() + 120
    while ketch.info(mvm)["mounts"][TARGET]["active"] is not True:
        assert time.monotonic() < deadline, "the new daemon did not re-establish the mount"
        time.sleep(1)
    assert guest_read(ketch, mvm, f"{TARGET}/hello.txt") == "hello from the host\n"


def test_the_mount_survives_suspend_and_resume(ketch: Ketch, mvm: str) -> None:
    ketch.run("suspend", mvm)
    assert supervisors(ketch, mvm) == []
    ketch.run("start", mvm)
    assert guest_read(ketch, mvm, f"{TARGET}/from-guest.txt") == "written\n"


def test_the_mount_survives_stop_and_start(ketch: Ketch, mvm: str) -> None:
    ketch.run("stop", mvm)
    assert supervisors(ketch, mvm) == []
    ketch.run("start", mvm)
    assert guest_read(ketch, mvm, f"{TARGET}/hello.txt") == "hello from the host\n"


def test_umount_and_mount_on_a_running_instance(ketch: Ketch, mvm: str, share: Path) -> None:
    ketch.run("umount", f"{mvm}:{TARGET}")
    assert "sshfs" not in ketch.exec(mvm, "cat", "/proc/mounts")
    assert ketch.info(mvm)["mounts"] == {}
    assert supervisors(ketch, mvm) == []
    ketch.run("mount", str(share), f"{mvm}:{TARGET}", "-u", f"{OWNER}:0", "-g", f"{OWNER}:0")
    assert ketch.exec(mvm, "stat", "-c", "%u", f"{TARGET}/hello.txt").strip() == "0"
    assert ketch.info(mvm)["mounts"][TARGET]["uid_mappings"] == [f"{OWNER}:0"]


def test_sshfs_ends_cleanly_when_the_guest_unmounts_it(ketch: Ketch, mvm: str) -> None:
    """A user's ``umount`` in the guest ends sshfs by itself (ketch's own unmount kills
    it): it must exit, not abort for a missing library (the image once lacked the
    libgcc_s that glibc loads for pthread_cancel); doctor then mounts it again."""
    key = mount_key(TARGET)
    script = (
        f"p=$(cat /run/ketch-mount-{key}.pid); umount {TARGET}; i=0; "
        'while [ -e "/proc/$p" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done; '
        '[ -e "/proc/$p" ] && echo "still running"; '
        f"cat /run/ketch-mount-{key}.log"
    )
    out = ketch.exec(mvm, "sudo", "sh", "-c", script)
    assert "still running" not in out and "pthread_cancel" not in out, out
    assert ketch.info(mvm)["mounts"][TARGET]["active"] is False
    fixed = ketch.json("doctor", mvm, "--fix")
    assert any(f["code"] == "mount-dead" and f["fixed"] for f in fixed["findings"]), fixed
    assert guest_read(ketch, mvm, f"{TARGET}/hello.txt") == "hello from the host\n"


def test_doctor_finds_a_dead_mount_and_fix_mounts_it_again(ketch: Ketch, mvm: str) -> None:
    for pid in supervisors(ketch, mvm):  # the daemon keeps running: nothing restarts it
        os.kill(pid, 9)
    info = ketch.info(mvm)
    assert info["mounts"][TARGET]["active"] is False
    # info and list show it as an inconsistency, as they show the others
    dead = [i for i in info["inconsistencies"] if i["code"] == "mount-dead"]
    assert len(dead) == 1 and TARGET in dead[0]["message"], info["inconsistencies"]
    assert "SFTP server" in dead[0]["message"]
    listed = {e["name"]: e for e in ketch.json("list")["list"]}
    assert listed[mvm]["inconsistencies"] >= 1 and listed[mvm]["state"] == "Running"
    assert "Inconsistency:  the classic mount" in ketch.run("info", mvm).stdout
    report = ketch.run("doctor", mvm, "--format", "json", check=False)
    assert report.returncode == 2  # something to repair
    assert "mount-dead" in {f["code"] for f in json.loads(report.stdout)["findings"]}
    fixed = ketch.json("doctor", mvm, "--fix")
    assert any(f["code"] == "mount-dead" and f["fixed"] for f in fixed["findings"])
    assert guest_read(ketch, mvm, f"{TARGET}/hello.txt") == "hello from the host\n"
    info = ketch.info(mvm)
    assert info["mounts"][TARGET]["active"] is True
    assert [i for i in info["inconsistencies"] if i["code"].startswith("mount-")] == []


def test_a_dead_mount_at_a_target_with_a_space_is_mounted_again(
    ketch: Ketch, mvm: str, share: Path
) -> None:
    """The guest's /proc/mounts spells such a target with an escape: what the dead host
    side left there (its sshfs, then its mount) must still be found and cleared."""
    spaced = "/mnt/my share"
    ketch.run("mount", str(share), f"{mvm}:{spaced}")
    try:
        assert guest_read(ketch, mvm, f"{spaced}/hello.txt") == "hello from the host\n"
        # Both sides die at once: the guest's sshfs leaves a dead mount (nothing unmounts
        # it), the host side is gone.
        key = mount_key(spaced)
        ketch.exec(mvm, "sudo", "sh", "-c", f"kill -9 $(cat /run/ketch-mount-{key}.pid)")
        pid = procs.read_pidfile(ketch.root / "instances" / mvm / "mounts" / f"{key}.pid")
        assert pid is not None
        os.kill(pid, 9)
        assert ketch.info(mvm)["mounts"][spaced]["active"] is False
        fixed = ketch.json("doctor", mvm, "--fix")
        assert any(f["code"] == "mount-dead" and f["fixed"] for f in fixed["findings"]), fixed
        assert ketch.info(mvm)["mounts"][spaced]["active"] is True
        assert guest_read(ketch, mvm, f"{spaced}/hello.txt") == "hello from the host\n"
        log = (ketch.root / "instances" / mvm / "mounts" / f"{key}.log").read_text()
        assert f"unmounting {spaced}" in log, log  # the dead mount was found, escaped
    finally:
        ketch.run("umount", f"{mvm}:{spaced}")


def test_a_source_removed_and_made_again_is_mounted_again_by_doctor(
    ketch: Ketch, mvm: str, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    again.mkdir()
    (again / "old.txt").write_text("before\n")
    ketch.run("mount", str(again), f"{mvm}:/mnt/again")
    assert guest_read(ketch, mvm, "/mnt/again/old.txt") == "before\n"
    shutil.rmtree(again)
    codes = {i["code"]: i for i in ketch.info(mvm)["inconsistencies"]}
    assert (
        "mount-source-missing" in codes and str(again) in codes["mount-source-missing"]["message"]
    )
    # Made again: another directory, which the running server (confined to the old one)
    # never sees: the mount is dead until doctor gives it a new host side.
    again.mkdir()
    (again / "new.txt").write_text("after\n")
    codes = {i["code"]: i for i in ketch.info(mvm)["inconsistencies"]}
    assert "mount-dead" in codes and "no longer" in codes["mount-dead"]["message"], codes
    fixed = ketch.json("doctor", mvm, "--fix")
    assert any(f["code"] == "mount-dead" and f["fixed"] for f in fixed["findings"]), fixed
    assert guest_read(ketch, mvm, "/mnt/again/new.txt") == "after\n"
    assert [i for i in ketch.info(mvm)["inconsistencies"] if i["code"].startswith("mount-")] == []
    ketch.run("umount", f"{mvm}:/mnt/again")


def test_refusals(ketch: Ketch, mvm: str, share: Path, tmp_path: Path) -> None:
    missing = ketch.run("mount", str(tmp_path / "nope"), f"{mvm}:/mnt/x", check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    for target in ("relative/path", "/proc/x", "/", "/dev", "/etc"):
        bad = ketch.run("mount", str(share), f"{mvm}:{target}", check=False)
        assert bad.returncode == 1, (target, bad.stderr)
    taken = ketch.run("mount", str(share), f"{mvm}:{TARGET}", check=False)
    assert taken.returncode == 1 and "already mounted" in taken.stderr
    native = ketch.run("mount", "-t", "native", str(share), f"{mvm}:/mnt/n", check=False)
    assert native.returncode != 0 and "stop the instance" in native.stderr
    ketch.run("set", "local.privileged-mounts=false")
    try:
        off = ketch.run("mount", str(share), f"{mvm}:/mnt/y", check=False)
        assert off.returncode != 0 and "Mounts are disabled" in off.stderr
    finally:
        ketch.run("set", "local.privileged-mounts=true")
    assert list(ketch.info(mvm)["mounts"]) == [TARGET]


def test_a_missing_source_never_blocks_the_lifecycle(
    ketch: Ketch, mvm: str, tmp_path: Path
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    ketch.run("mount", str(gone), f"{mvm}:/mnt/gone")
    ketch.run("stop", "--force", mvm)
    left = supervisors(ketch, mvm)
    assert left == [], [(p, procs.cmdline(p)) for p in left]
    gone.rmdir()
    started = ketch.run("start", mvm)
    assert "missing" in started.stderr + started.stdout
    assert guest_read(ketch, mvm, f"{TARGET}/hello.txt") == "hello from the host\n"
    ketch.run("umount", f"{mvm}:/mnt/gone")


# A stand-in for a downloaded image's apt-get, in the guest: real apt cannot reach the
# internet here.  "install" puts the hidden sshfs back, as installing the package would;
# with FAIL set it fails as apt does without a network.
APT_GET = """#!/bin/sh
echo "apt-get $*" >> /var/tmp/apt-get.calls
if [ -e /var/tmp/apt-get.fail ]; then
  echo "E: Unable to locate package sshfs" >&2; exit 100
fi
case " $* " in *" install "*) mv /usr/bin/sshfs.hidden /usr/bin/sshfs ;; esac
exit 0
"""


def test_a_guest_without_sshfs_gets_it_from_its_package_manager(
    ketch: Ketch, mvm: str, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    first.mkdir()
    (first / "f.txt").write_text("installed\n")
    ketch.exec(mvm, "sudo", "mv", "/usr/bin/sshfs", "/usr/bin/sshfs.hidden")
    try:
        # no package manager at all (tiny has none): a clear error, nothing recorded
        none = ketch.run("mount", str(first), f"{mvm}:/mnt/first", check=False)
        assert none.returncode == 2, none.stderr
        assert f"cannot install sshfs in {mvm}: no known package manager" in none.stderr
        assert "sudo apt-get install sshfs" in none.stderr  # the hint: what to do
        assert "/mnt/first" not in ketch.info(mvm)["mounts"]
        # apt-get there but failing (no network): its own words, nothing recorded
        ketch.run("exec", mvm, "--", "sudo", "sh", "-c",
                  "cat > /usr/bin/apt-get && chmod 755 /usr/bin/apt-get "
                  "&& touch /var/tmp/apt-get.fail", input=APT_GET.encode())  # fmt: skip
        failed = ketch.run("mount", str(first), f"{mvm}:/mnt/first", check=False)
        assert failed.returncode == 2, failed.stderr
        assert "cannot install sshfs" in failed.stderr
        assert "Unable to locate package sshfs" in failed.stderr
        assert "/mnt/first" not in ketch.info(mvm)["mounts"]
        # apt-get that works: installed on this first classic mount, with a progress line
        ketch.exec(mvm, "sudo", "rm", "/var/tmp/apt-get.fail")
        done = ketch.run("mount", str(first), f"{mvm}:/mnt/first", check=False)
        assert done.returncode == 0, (done.stderr, diagnose(ketch, mvm))
        assert f"Installing sshfs in {mvm}" in done.stdout + done.stderr
        calls = ketch.exec(mvm, "cat", "/var/tmp/apt-get.calls")
        assert "install -y sshfs" in calls, calls
        assert guest_read(ketch, mvm, "/mnt/first/f.txt") == "installed\n"
    finally:
        ketch.run("exec", mvm, "--", "sudo", "sh", "-c",
                  "[ -e /usr/bin/sshfs.hidden ] && mv /usr/bin/sshfs.hidden /usr/bin/sshfs; "
                  "rm -f /usr/bin/apt-get /var/tmp/apt-get.fail", check=False)  # fmt: skip
        ketch.run("umount", f"{mvm}:/mnt/first", check=False)


def test_clone_copies_the_mounts_only_when_asked(ketch: Ketch, mvm: str) -> None:
    ketch.run("stop", mvm)
    plain, with_mounts = unique("cln"), unique("clm")
    try:
        ketch.run("clone", mvm, "--name", plain)
        ketch.run("clone", mvm, "--name", with_mounts, "--mounts")
        assert ketch.info(plain)["mounts"] == {}  # as Multipass
        mounts = ketch.info(mvm)["mounts"]
        assert TARGET in mounts
        assert ketch.info(with_mounts)["mounts"] == mounts
        # the clone has the mounts' controller too: its mount goes over its own port
        assert (ketch.root / "instances" / with_mounts / "mount-serial").exists()
        ketch.run("start", with_mounts)
        mine = ketch.info(with_mounts)["mounts"][TARGET]
        assert mine["active"] is True and mine["transport"] == "virtio-serial", mine
        assert guest_read(ketch, with_mounts, f"{TARGET}/hello.txt") == "hello from the host\n"
    finally:
        ketch.run("delete", "--purge", plain, with_mounts, check=False)
    ketch.run("start", mvm)


def test_an_instance_without_the_controller_mounts_over_ssh(
    ketch: Ketch, mvm: str, share: Path
) -> None:
    """An instance made before the mounts' controller has no record of it: the older device
    layout (a saved state needs it), and its classic mounts go over ssh."""
    ketch.run("stop", mvm)
    (ketch.root / "instances" / mvm / "mount-serial").unlink()
    ketch.run("start", mvm)
    qemu = [procs.cmdline(int(p)) or [] for p in os.listdir("/proc") if p.isdigit()]
    argv = next(a for a in qemu if a and "qemu-system" in a[0] and f"ketch-{mvm}," in " ".join(a))
    assert not any(a.startswith("virtio-serial-pci") for a in argv)
    assert ketch.info(mvm)["mounts"][TARGET]["transport"] == "ssh"
    assert f"=> {TARGET} (over ssh)" in ketch.run("info", mvm).stdout
    assert any(Path(a[0]).name == "ssh" for a in stream_children(ketch, mvm))
    assert guest_read(ketch, mvm, f"{TARGET}/hello.txt") == "hello from the host\n"
    assert read_ahead(ketch, mvm, TARGET) == READ_AHEAD_KB  # a new mount: tuned again
    ketch.exec(mvm, "sh", "-c", f"echo over-ssh > {TARGET}/over-ssh.txt")
    assert (share / "over-ssh.txt").stat().st_uid == OWNER
