"""Where ketch keeps things: the storage root and every file in it.

Every file in an instance directory is a named constant here, and each is
documented in ``docs/internals.md``.  The storage root is ``$KETCH_STORAGE``
when set (as ``MULTIPASS_STORAGE`` for Multipass), else the user's XDG data
directory.
"""

from __future__ import annotations

import os

from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

STORAGE_ENV = "KETCH_STORAGE"

# ketchd's umask: what it, QEMU and qemu-img create is 0600 (files) or 0700
# (directories); the storage root itself must be 0700 (``daemon/trust.py``).
UMASK = 0o077
FILE_MODE = 0o600
DIR_MODE = 0o700

# Files directly under the storage root.
SOCKET = "ketchd.sock"
DAEMON_PID = "ketchd.pid"
DAEMON_LOG = "ketchd.log"
DATABASE = "ketch.db"
DATABASE_DAMAGED = "ketch.db.damaged-"  # + UTC time: a damaged database, moved aside, kept
DATABASE_REPAIRED = "ketch.db.repaired.json"  # what ketchd did about it, until doctor --fix
BOOT_ID = "boot_id"  # the host's boot id when ketchd last started (service/autostart.py)
SETTINGS_RECORD = "settings.json"  # every setting, mirrored from the database (store/mirror.py)
SSH_DIR = "ssh"
CLIENT_KEY = "id_ed25519"  # in SSH_DIR; the .pub beside it
VAULT_DIR = "vault"
INSTANCES_DIR = "instances"
CACHE_DIR = "cache"
ACCEL_CACHE = "accel.json"  # in CACHE_DIR
NETWORK_DIR = "network"  # the managed network's state (runtime/network.py)
HOSTS_DIR = "hosts"  # per libvirt host: the SSH files ketch derives for it (service/hosts.py)
HOSTS_RECORD = "hosts.json"  # every host added, mirrored from the database (store/mirror.py)
TLS_DIR = "tls"  # remote access (daemon/tls.py): only with local.address or ketchd --address

# Files in TLS_DIR (all 0600).
TLS_CERT = "server.crt"  # ketchd's self-signed certificate, made on first start
TLS_KEY = "server.key"  # its private key
TLS_CLIENTS = "trusted-clients.pem"  # the client certificates enrolled with the passphrase

# Files in the client's config directory ($XDG_CONFIG_HOME/ketch, remote access only).
CLIENT_CERT = "client.crt"  # the client's certificate, made by its first 'ketch authenticate'
CLIENT_CERT_KEY = "client.key"  # its private key
KNOWN_SERVERS = "known_servers"  # HOST:PORT and the server fingerprint pinned at first contact
REMOTE_SSH_DIR = "remote-ssh"  # per server and instance: the guest's key and known_hosts

# Warm-launch templates, one directory each (service/templates.py); on the storage
# root's filesystem, not a tmpfs: a template's memory file is as large as its RAM.
TEMPLATES_DIR = "templates"

# Files in a template directory (templates/<image>-<key>/).
TEMPLATE_RECORD = "template.json"  # what it was made from (its key); written last
TEMPLATE_DISK = "golden.qcow2"  # the guest's disk at the save, frozen (read-only)
TEMPLATE_MEMORY = "memory.ram"  # the guest's RAM (memory-backend-file, share=on while saved)
TEMPLATE_STATE = "device.state"  # the device state (a migration stream, RAM excluded)
# while it is made, the template is booted as an instance would be: DISK is
# TEMPLATE_DISK; SEED_ISO, PIDFILE, QMP_SOCKET, SERIAL_LOG, QEMU_LOG, AGENT_SOCKET as below;
# a UEFI template keeps its EFI_VARS (the variables at the save: each clone starts on a copy)

# Files in NETWORK_DIR.
NETWORK_STATE = "network.json"  # the bridge's name and subnet, kept so addresses stay stable
DHCP_HOSTS = "dhcp-hosts"  # the allocation table: MAC,IP,NAME per instance
DNSMASQ_PID = "dnsmasq.pid"
DNSMASQ_LEASES = "dnsmasq.leases"
DNSMASQ_LOG = "dnsmasq.log"

# Files in an instance directory (instances/<name>/).
DISK = "disk.qcow2"
EFI_VARS = "efivars.fd"  # UEFI instances only: their firmware's variables
SEED_ISO = "cidata.iso"
PIDFILE = "qemu.pid"
QMP_SOCKET = "qmp.sock"
SERIAL_LOG = "serial.log"
QEMU_LOG = "qemu.log"
HOST_KEY = "ssh_host_ed25519_key"  # private; the .pub beside it
KNOWN_HOSTS = "known_hosts"
# The instance's multiplexed SSH connection (host/ssh/master.py): ketchd's ssh ControlMaster
# listens on SSH_MUX_SOCKET (0600), its pid in SSH_MUX_PID, its stderr in SSH_MUX_LOG.
SSH_MUX_SOCKET = "ssh-mux.sock"
SSH_MUX_PID = "ssh-mux.pid"
SSH_MUX_LOG = "ssh-mux.log"
# An instance on a remote libvirt host (host/ssh/jump.py): the ssh -N -L that brings the
# guest's SSH port there to 127.0.0.1:ssh_port here, its pid in JUMP_PID, stderr JUMP_LOG.
JUMP_PID = "ssh-jump.pid"
JUMP_LOG = "ssh-jump.log"
# One virtiofsd per native mount, named by the mount's tag (runtime/virtiofs.py):
# virtiofs-<tag>.sock (its vhost-user socket, QEMU connects), .pid, .log.
VIRTIOFS_PREFIX = "virtiofs-"
VIRTIOFS_SOCKET = ".sock"
VIRTIOFS_PID = ".pid"
VIRTIOFS_LOG = ".log"

AGENT_SOCKET = "warm-agent.sock"  # warm start: the host end of the guest agent's virtio port
WARM_RECORD = "warm.json"  # a warm-started instance: its template and its device layout

READY = "ready"  # the QEMU run on record (or its saved state) reached readiness
NIC = "nic.json"  # on the managed network: the TAP, MAC and address QEMU was started with
INSTANCE_RECORD = "instance.json"  # the store's record of it, mirrored (store/mirror.py)

MOUNTS_DIR = "mounts"  # one pid file and one log per classic mount, named by mount_key()
MOUNT_PIDFILE = "{key}.pid"  # in MOUNTS_DIR: the mount's detached SFTP supervisor
MOUNT_LOG = "{key}.log"  # in MOUNTS_DIR: the supervisor's, the server's and ssh's stderr
MOUNT_SOCKET = "{key}.sock"  # in MOUNTS_DIR: the host end of the mount's virtio-serial port
# The instance's QEMU has the virtio-serial controller classic mounts plug their ports into
# (host/qemu.py MOUNT_SERIAL); written when its disk is made.  Absent: the older device
# layout (a saved state needs the same), and classic mounts over ssh.
MOUNT_SERIAL = "mount-serial"


def mount_key(target: str) -> str:
    """The file-name key of the mount at guest path ``target`` (a digest: paths have slashes)."""
    import hashlib

    return hashlib.sha256(target.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def storage_dir() -> str:
    """The storage root in force for this process, as a string (``pathlib`` not needed).

    ``$KETCH_STORAGE``, made absolute with symlinks resolved; else ``ketch`` in
    the XDG data directory (``$XDG_DATA_HOME`` when it is an absolute path,
    else ``~/.local/share``, as the XDG base directory specification says).
    """
    env = os.environ.get(STORAGE_ENV)
    if env:
        return os.path.realpath(os.path.expanduser(env))
    return os.path.join(xdg_data_home(), "ketch")


def xdg_data_home() -> str:
    """``$XDG_DATA_HOME`` when it is an absolute path, else ``~/.local/share`` (the XDG spec)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    return xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".local", "share")


def config_dir() -> str:
    """The client's own directory: ``$XDG_CONFIG_HOME/ketch`` (else ``~/.config/ketch``)."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "ketch")


def storage_root() -> Path:
    """The storage root in force for this process."""
    from pathlib import Path

    return Path(storage_dir())


class _Paths:
    """A value object around one directory (plain class: ``dataclasses`` costs
    ~6 ms of import on the CLI's hot path)."""

    __slots__ = ("path",)

    def __init__(self, path: Path | str) -> None:
        from pathlib import Path  # here, not at the top: the CLI's hot path never makes one

        self.path = Path(path)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.path == self.path

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.path))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class Root(_Paths):
    """Paths below one storage root."""

    __slots__ = ()

    @property
    def socket(self) -> Path:
        return self.path / SOCKET

    @property
    def daemon_pid(self) -> Path:
        return self.path / DAEMON_PID

    @property
    def daemon_log(self) -> Path:
        return self.path / DAEMON_LOG

    @property
    def database(self) -> Path:
        return self.path / DATABASE

    @property
    def boot_id(self) -> Path:
        return self.path / BOOT_ID

    @property
    def settings_record(self) -> Path:
        return self.path / SETTINGS_RECORD

    @property
    def hosts_record(self) -> Path:
        return self.path / HOSTS_RECORD

    def host_dir(self, name: str) -> Path:
        return self.path / HOSTS_DIR / name

    @property
    def database_repaired(self) -> Path:
        return self.path / DATABASE_REPAIRED

    @property
    def client_key(self) -> Path:
        return self.path / SSH_DIR / CLIENT_KEY

    @property
    def vault(self) -> Path:
        return self.path / VAULT_DIR

    @property
    def instances(self) -> Path:
        return self.path / INSTANCES_DIR

    @property
    def accel_cache(self) -> Path:
        return self.path / CACHE_DIR / ACCEL_CACHE

    @property
    def tls_cert(self) -> Path:
        return self.path / TLS_DIR / TLS_CERT

    @property
    def tls_key(self) -> Path:
        return self.path / TLS_DIR / TLS_KEY

    @property
    def tls_clients(self) -> Path:
        return self.path / TLS_DIR / TLS_CLIENTS

    @property
    def network(self) -> NetworkDir:
        return NetworkDir(self.path / NETWORK_DIR)

    @property
    def templates(self) -> Path:
        return self.path / TEMPLATES_DIR

    def template(self, key: str) -> TemplateDir:
        return TemplateDir(self.templates / key)

    def instance(self, name: str) -> InstanceDir:
        return InstanceDir(self.instances / name)


class NetworkDir(_Paths):
    """Paths of the managed network's directory."""

    __slots__ = ()

    @property
    def state(self) -> Path:
        return self.path / NETWORK_STATE

    @property
    def hosts(self) -> Path:
        return self.path / DHCP_HOSTS

    @property
    def dnsmasq_pid(self) -> Path:
        return self.path / DNSMASQ_PID

    @property
    def leases(self) -> Path:
        return self.path / DNSMASQ_LEASES

    @property
    def dnsmasq_log(self) -> Path:
        return self.path / DNSMASQ_LOG


class TemplateDir(_Paths):
    """Paths of one warm-launch template's directory."""

    __slots__ = ()

    @property
    def record(self) -> Path:
        return self.path / TEMPLATE_RECORD

    @property
    def disk(self) -> Path:
        return self.path / TEMPLATE_DISK

    @property
    def memory(self) -> Path:
        return self.path / TEMPLATE_MEMORY

    @property
    def state(self) -> Path:
        return self.path / TEMPLATE_STATE

    @property
    def boot(self) -> InstanceDir:
        """The template as the instance booted to make it: pid file, QMP socket, logs
        (its disk is :attr:`disk`, not the instance's DISK)."""
        return InstanceDir(self.path)


class InstanceDir(_Paths):
    """Paths of one instance's directory."""

    __slots__ = ()

    @property
    def disk(self) -> Path:
        return self.path / DISK

    @property
    def efi_vars(self) -> Path:
        return self.path / EFI_VARS

    @property
    def seed_iso(self) -> Path:
        return self.path / SEED_ISO

    @property
    def pidfile(self) -> Path:
        return self.path / PIDFILE

    @property
    def qmp_socket(self) -> Path:
        return self.path / QMP_SOCKET

    @property
    def serial_log(self) -> Path:
        return self.path / SERIAL_LOG

    @property
    def qemu_log(self) -> Path:
        return self.path / QEMU_LOG

    @property
    def host_key(self) -> Path:
        return self.path / HOST_KEY

    @property
    def known_hosts(self) -> Path:
        return self.path / KNOWN_HOSTS

    @property
    def ssh_mux_socket(self) -> Path:
        return self.path / SSH_MUX_SOCKET

    @property
    def ssh_mux_pidfile(self) -> Path:
        return self.path / SSH_MUX_PID

    @property
    def ssh_mux_log(self) -> Path:
        return self.path / SSH_MUX_LOG

    @property
    def jump_pidfile(self) -> Path:
        return self.path / JUMP_PID

    @property
    def jump_log(self) -> Path:
        return self.path / JUMP_LOG

    def virtiofs_socket(self, tag: str) -> Path:
        return self.path / f"{VIRTIOFS_PREFIX}{tag}{VIRTIOFS_SOCKET}"

    def virtiofs_pidfile(self, tag: str) -> Path:
        return self.path / f"{VIRTIOFS_PREFIX}{tag}{VIRTIOFS_PID}"

    def virtiofs_log(self, tag: str) -> Path:
        return self.path / f"{VIRTIOFS_PREFIX}{tag}{VIRTIOFS_LOG}"

    @property
    def agent_socket(self) -> Path:
        return self.path / AGENT_SOCKET

    @property
    def warm_record(self) -> Path:
        return self.path / WARM_RECORD

    @property
    def ready(self) -> Path:
        return self.path / READY

    @property
    def nic(self) -> Path:
        return self.path / NIC

    @property
    def record(self) -> Path:
        return self.path / INSTANCE_RECORD

    @property
    def mounts(self) -> Path:
        return self.path / MOUNTS_DIR

    @property
    def mount_serial(self) -> Path:
        return self.path / MOUNT_SERIAL

    def mount_socket(self, target: str) -> Path:
        return self.mounts / MOUNT_SOCKET.format(key=mount_key(target))

    def mount_pidfile(self, target: str) -> Path:
        return self.mounts / MOUNT_PIDFILE.format(key=mount_key(target))

    def mount_log(self, target: str) -> Path:
        return self.mounts / MOUNT_LOG.format(key=mount_key(target))
