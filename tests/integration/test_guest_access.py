"""exec, shell, transfer, cloud-init and host-key pinning against a real VM.

Until ketch's own lifecycle boots instances, the module fixture boots the
built-in tiny image itself: a qcow2 overlay, a NoCloud seed made by
:mod:`ketch.cloudinit` and :func:`ketch.host.seed.build_seed_iso`, QEMU (TCG)
with user-mode networking forwarding a host port to the guest's port 22.

The CLI-facing functions are run in a child Python process (as ``ketch``
would run them) so that standard input and output are real pipes or a PTY.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

import ketch
from ketch.cli.guest import exec_command
from ketch.cli.transfer import transfer
from ketch.cloudinit import merge_vendor, meta_data, parse_user_data, render_user_data
from ketch.errors import GuestError, HostKeyMismatch
from ketch.host.seed import GUEST_CONFIG_FILE, build_seed_iso, render_guest_config
from ketch.host.ssh import generate_keypair, run_in_guest, ssh_argv, wait_ready, write_known_hosts
from ketch.model import ImageInfo
from ketch.progress import ListReporter
from ketch.sshtarget import SshTarget

pytestmark = pytest.mark.vm

NAME = "guestvm"
INSTANCE_ID = "i-guest-access-1"
BOOT_DEADLINE = 900.0  # TCG on a busy 2-core machine; only a deadline, never asserted

USER_DATA = """\
#cloud-config
write_files:
  - path: /etc/ketch-test/written.txt
    content: |
      written by cloud-init
    permissions: "0640"
runcmd:
  - [sh, -c, "echo ran > /var/tmp/runcmd-ok"]
  - echo "$(id -u)" > /var/tmp/runcmd-uid
"""

SRC = str(Path(ketch.__file__).resolve().parent.parent)

# A stand-in for the ketch CLI: the target as JSON, then what to run.
DRIVER = """\
import json, sys
from ketch.errors import KetchError
from ketch.sshtarget import SshTarget
from ketch.cli import guest, transfer
target = SshTarget(**json.loads(sys.argv[1]))
what, args = sys.argv[2], sys.argv[3:]
try:
    if what == "exec":
        sys.exit(guest.exec_command(target, args, workdir=None))
    if what == "exec-in":
        sys.exit(guest.exec_command(target, args[1:], workdir=args[0]))
    if what == "shell":
        sys.exit(guest.shell(target))
    if what == "transfer":
        transfer.transfer(args[:-1], args[-1], resolve=lambda name: target,
                       recursive=True, parents=True)
        sys.exit(0)
except KetchError as exc:
    print(f"ketch-error {exc.code}: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


@dataclass(frozen=True)
class Vm:
    target: SshTarget
    dir: Path
    serial_log: Path
    host_public_key: str


def driver_argv(target: SshTarget, what: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        DRIVER,
        json.dumps({f: getattr(target, f) for f in SshTarget.__slots__}),
        what,
        *args,
    ]


def driver_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": SRC + (os.pathsep + path if path else "")}


def run_driver(
    target: SshTarget, what: str, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        driver_argv(target, what, *args),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env=driver_env(),
        timeout=600,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def vm(tiny_image: ImageInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    work = tmp_path_factory.mktemp("guest-access")
    client_key = work / "id_ed25519"
    client_pub = generate_keypair(client_key, "ketch-test@host")
    host_key = work / "ssh_host_ed25519_key"
    host_pub = generate_keypair(host_key, f"{NAME}@ketch")
    known_hosts = work / "known_hosts"
    write_known_hosts(known_hosts, NAME, host_pub)

    cfg = merge_vendor(
        parse_user_data(USER_DATA),
        default_user="ubuntu",
        client_public_key=client_pub,
        host_key_private=host_key.read_text(),
        host_key_public=host_pub,
        hostname=NAME,
    )
    guest_cfg = render_guest_config(cfg, {"instance-id": INSTANCE_ID, "local-hostname": NAME})
    build_seed_iso(
        work / "cidata.iso",
        meta_data=meta_data(INSTANCE_ID, NAME),
        user_data=render_user_data(cfg),
        extra_files={GUEST_CONFIG_FILE: guest_cfg.encode()},
    )
    overlay = work / "disk.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            tiny_image.disk,
            "-F",
            tiny_image.disk_format,
            str(overlay),
        ],
        check=True,
    )
    boot = tiny_image.boot
    assert boot.kernel and boot.initrd, "the tiny image boots its kernel directly"
    port = free_port()
    serial = work / "serial.log"
    argv = [
        "qemu-system-x86_64",
        "-machine", "q35",
        "-accel", "tcg",
        "-m", "512",
        "-smp", "1",
        "-nographic",
        "-nodefaults",
        "-serial", f"file:{serial}",
        "-kernel", boot.kernel,
        "-initrd", boot.initrd,
        "-append", boot.cmdline or "",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-drive", f"file={work / 'cidata.iso'},if=virtio,format=raw,readonly=on",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    with open(work / "qemu.log", "wb") as log:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    target = SshTarget(
        name=NAME,
        host="127.0.0.1",
        port=port,
        user="ubuntu",
        identity=str(client_key),
        known_hosts=str(known_hosts),
    )
    try:
        reporter = ListReporter()
        try:
            asyncio.run(wait_ready(target, timeout=BOOT_DEADLINE, reporter=reporter))
        except Exception as exc:
            raise AssertionError(
                f"guest did not become ready: {exc}\n--- serial log ---\n{tail(serial)}\n"
                f"--- qemu log ---\n{tail(work / 'qemu.log')}"
            ) from exc
        yield Vm(target, work, serial, host_pub)
    finally:
        qemu.terminate()
        try:
            qemu.wait(timeout=30)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait()


@pytest.fixture
def tampered(vm: Vm, tmp_path: Path) -> SshTarget:
    """The VM's target with a known_hosts pinning some other key."""
    other = generate_keypair(tmp_path / "other_host_key", "impostor")
    path = tmp_path / "known_hosts"
    write_known_hosts(path, NAME, other)
    return vm.target.replace(known_hosts=str(path))


def guest_out(vm: Vm, *argv: str) -> str:
    done = asyncio.run(run_in_guest(vm.target, list(argv), timeout=120, check=True))
    return done.stdout.decode()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


# --- readiness ---------------------------------------------------------------------


def test_wait_ready_succeeds_on_a_ready_guest(vm: Vm) -> None:
    reporter = ListReporter()
    asyncio.run(wait_ready(vm.target, timeout=120, reporter=reporter))
    assert reporter.steps[0].startswith("Waiting for SSH")
    assert "SSH-2.0-" in reporter.steps[1]


def test_ssh_round_trip(vm: Vm) -> None:
    """Time ``ssh true`` (reported, not asserted)."""
    argv = ssh_argv(vm.target, "true", tty=False)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, check=True, timeout=120)
        times.append(time.perf_counter() - start)
    print(f"ssh true round trip: {', '.join(f'{t * 1000:.0f} ms' for t in times)}")


def test_run_in_guest_reads_boot_id(vm: Vm) -> None:
    boot_id = guest_out(vm, "cat", "/proc/sys/kernel/random/boot_id").strip()
    assert len(boot_id) == 36 and boot_id.count("-") == 4


def test_run_in_guest_passes_input_and_exit_code(vm: Vm) -> None:
    done = asyncio.run(run_in_guest(vm.target, ["sh", "-c", "cat; exit 4"], input=b"in\n"))
    assert (done.returncode, done.stdout) == (4, b"in\n")
    with pytest.raises(GuestError, match="exited 4"):
        asyncio.run(run_in_guest(vm.target, ["sh", "-c", "exit 4"], check=True))


# --- cloud-init -----------------------------------------------------------------------


def test_cloud_init_write_files_and_runcmd(vm: Vm) -> None:
    assert guest_out(vm, "sudo", "cat", "/etc/ketch-test/written.txt") == (
        "written by cloud-init\n"
    )
    assert guest_out(vm, "stat", "-c", "%a", "/etc/ketch-test/written.txt").strip() == "640"
    assert guest_out(vm, "cat", "/var/tmp/runcmd-ok") == "ran\n"
    assert guest_out(vm, "cat", "/var/tmp/runcmd-uid") == "0\n"


def test_hostname_from_the_instance_name(vm: Vm) -> None:
    assert guest_out(vm, "hostname").strip() == NAME


# --- exec ----------------------------------------------------------------------------


def test_exit_code_passes_through(vm: Vm) -> None:
    assert run_driver(vm.target, "exec", "sh", "-c", "exit 7").returncode == 7
    assert run_driver(vm.target, "exec", "exit", "7").returncode == 7
    assert run_driver(vm.target, "exec", "true").returncode == 0


def test_exec_in_process_returns_exit_code(vm: Vm) -> None:
    assert exec_command(vm.target, ["sh", "-c", "exit 9"], workdir=None) == 9


def test_binary_data_through_cat(vm: Vm) -> None:
    data = os.urandom(1 << 20)
    done = run_driver(vm.target, "exec", "cat", input=data)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_pipe_in_like_echo_hi(vm: Vm) -> None:
    done = run_driver(vm.target, "exec", "cat", input=b"hi\n")
    assert (done.returncode, done.stdout) == (0, b"hi\n")


def test_stdout_and_stderr_stay_apart(vm: Vm) -> None:
    done = run_driver(vm.target, "exec", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")


def test_hostile_argument_is_one_literal_argument(vm: Vm) -> None:
    hostile = "'; touch /tmp/pwned'"
    done = run_driver(vm.target, "exec", "printf", "[%s]", hostile, "$(id)", "a  b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"[{hostile}][$(id)][a  b]"
    gone = run_driver(vm.target, "exec", "test", "-e", "/tmp/pwned")
    assert gone.returncode == 1


def test_workdir(vm: Vm) -> None:
    done = run_driver(vm.target, "exec-in", "/var/tmp", "pwd")
    assert (done.returncode, done.stdout) == (0, b"/var/tmp\n")
    missing = run_driver(vm.target, "exec-in", "/nonexistent", "touch", "x")
    assert missing.returncode != 0


# --- shell ------------------------------------------------------------------------------


def test_shell_through_a_pty(vm: Vm) -> None:
    argv = driver_argv(vm.target, "shell")
    child = pexpect.spawn(argv[0], argv[1:], env=driver_env(), timeout=120, dimensions=(30, 100))
    try:
        child.expect(r"ubuntu@guestvm:~\$ ")
        child.sendline("echo $((6 * 7)) $(stty size)")
        child.expect("42 30 100")
        child.expect(r"\$ ")
        child.sendline("tty")
        child.expect("/dev/pts/")
        child.expect(r"\$ ")
        child.setwinsize(40, 120)  # ssh passes the change on (SIGWINCH)
        child.sendline("stty size")
        child.expect("40 120")
        child.expect(r"\$ ")
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 5


# --- transfer ----------------------------------------------------------------------------


def test_transfer_10_mib_round_trip(vm: Vm, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(10 << 20))
    transfer(
        [str(src)], f"{NAME}:big.bin", resolve=lambda _: vm.target, recursive=False, parents=False
    )
    remote = guest_out(vm, "sha256sum", "big.bin").split()[0]
    assert remote == sha256(src)
    back = tmp_path / "back.bin"
    transfer(
        [f"{NAME}:big.bin"], str(back), resolve=lambda _: vm.target, recursive=False, parents=False
    )
    assert sha256(back) == sha256(src)


def test_transfer_tree_both_ways(vm: Vm, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub" / "deep er").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a.txt").write_text("a\n")
    (src / "-dash").write_bytes(os.urandom(100))
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "deep er" / "c").write_text("c")
    (src / "sub" / "link").symlink_to("b.bin")
    want = tree_digest(src)

    def resolve(_: str) -> SshTarget:
        return vm.target

    transfer([str(src)], f"{NAME}:/tmp/x/y/", resolve=resolve, recursive=True, parents=True)
    listing = guest_out(vm, "sh", "-c", "cd /tmp/x/y/tree && find . | sort")
    assert "./sub/deep er/c" in listing and "./-dash" in listing
    back = tmp_path / "back"
    transfer([f"{NAME}:/tmp/x/y/tree"], str(back), resolve=resolve, recursive=True, parents=False)
    assert tree_digest(back) == want
    into = tmp_path / "into"
    into.mkdir()
    transfer([f"{NAME}:/tmp/x/y/tree"], str(into), resolve=resolve, recursive=True, parents=False)
    assert tree_digest(into / "tree") == want


def test_transfer_stdin_and_stdout(vm: Vm) -> None:
    data = os.urandom(2 << 20)
    up = run_driver(vm.target, "transfer", "-", f"{NAME}:from-stdin.bin", input=data)
    assert up.returncode == 0, up.stderr
    down = run_driver(vm.target, "transfer", f"{NAME}:from-stdin.bin", "-")
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(down.stdout).digest() == hashlib.sha256(data).digest()


def test_transfer_directory_without_r(vm: Vm, tmp_path: Path) -> None:
    from ketch.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="is a directory") as info:
        transfer(
            [f"{NAME}:/etc"],
            str(tmp_path),
            resolve=lambda _: vm.target,
            recursive=False,
            parents=False,
        )
    assert info.value.hint == "use -r to copy directories"


# --- host key pinning ----------------------------------------------------------------------


def test_tampered_host_key_is_refused_by_exec(tampered: SshTarget) -> None:
    with pytest.raises(HostKeyMismatch, match=f'host key for "{NAME}" changed'):
        exec_command(tampered, ["true"], workdir=None)
    done = run_driver(tampered, "exec", "true")
    assert done.returncode == 2
    assert b"host-key-mismatch" in done.stderr
    assert b"@@@@" not in done.stderr  # OpenSSH's banner is replaced by ketch's error


def test_tampered_host_key_is_refused_everywhere(tampered: SshTarget, tmp_path: Path) -> None:
    with pytest.raises(HostKeyMismatch):
        asyncio.run(wait_ready(tampered, timeout=300, reporter=ListReporter()))
    with pytest.raises(HostKeyMismatch):
        asyncio.run(run_in_guest(tampered, ["true"]))
    with pytest.raises(HostKeyMismatch):
        transfer(
            [f"{NAME}:/etc/hostname"],
            str(tmp_path / "h"),
            resolve=lambda _: tampered,
            recursive=False,
            parents=False,
        )
    assert not (tmp_path / "h").exists()


def test_no_known_host_key_is_refused(vm: Vm, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyMismatch):
        exec_command(vm.target.replace(known_hosts=str(empty)), ["true"], workdir=None)


def test_the_guest_serves_exactly_the_pinned_key(vm: Vm) -> None:
    """ssh-keyscan sees the key ketch generated (and only an ed25519 key matters)."""
    if shutil.which("ssh-keyscan") is None:
        pytest.skip("ssh-keyscan not installed")
    done = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(vm.target.port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert vm.host_public_key.split()[1] in done.stdout


def test_transfer_odd_names_and_empty_directory(vm: Vm, tmp_path: Path) -> None:
    def resolve(_: str) -> SshTarget:
        return vm.target

    empty = tmp_path / "-empty dir"
    empty.mkdir()
    odd = tmp_path / "-odd name 'q'"
    odd.write_bytes(b"odd\n")
    transfer([str(empty), str(odd)], f"{NAME}:odd/", resolve=resolve, recursive=True, parents=True)
    listing = guest_out(vm, "sh", "-c", "cd odd && ls -1A && cat ./-odd*")
    assert listing == "-empty dir\n-odd name 'q'\nodd\n"
    back = tmp_path / "back"
    transfer(
        [f"{NAME}:odd/-empty dir", f"{NAME}:~/odd/-odd name 'q'"],
        str(back),
        resolve=resolve,
        recursive=True,
        parents=True,
    )
    assert sorted(p.name for p in back.iterdir()) == ["-empty dir", "-odd name 'q'"]
    assert (back / "-odd name 'q'").read_bytes() == b"odd\n"


def test_transfer_missing_guest_file(vm: Vm, tmp_path: Path) -> None:
    from ketch.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="no such file"):
        transfer(
            [f"{NAME}:/nonexistent/x"],
            str(tmp_path / "x"),
            resolve=lambda _: vm.target,
            recursive=False,
            parents=False,
        )
    assert list(tmp_path.iterdir()) == []
