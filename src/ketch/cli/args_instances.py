"""The arguments of the instance verbs: launch, list, info, the lifecycle, snapshots, clone."""

from __future__ import annotations

from ketch.cli.parser import Verbs


def declare(v: Verbs) -> None:
    """Declare the instance verbs' arguments."""
    cmd, fmt, timeout, names = v.cmd, v.fmt, v.timeout, v.names
    sp = cmd("launch", "verbs_instances")
    sp.add_argument(
        "image",
        nargs="?",
        default=None,
        help="tiny, debian-12, ALIAS, REMOTE:ALIAS, file:// or http(s):// URL",
    )
    sp.add_argument("-n", "--name", help="instance name (default: a random one)")
    sp.add_argument("-c", "--cpus", type=int, help="number of CPUs (default 1)")
    sp.add_argument("-m", "--memory", "--mem", dest="memory", help="memory, e.g. 1G (default 1G)")
    sp.add_argument("-d", "--disk", help="disk size, e.g. 5G (default 5G)")
    sp.add_argument("--cloud-init", metavar="FILE", help="#cloud-config user data, or - for stdin")
    sp.add_argument("--timeout", type=float, help="seconds to wait for the instance to be ready")
    sp.add_argument(
        "--firmware",
        choices=("bios", "uefi"),
        help="boot the image through SeaBIOS or UEFI (OVMF); default: what the image needs",
    )
    sp.add_argument(
        "--forward",
        action="append",
        default=[],
        metavar="[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]",
        help="forward a host port to the guest (repeatable); HOSTIP defaults to 127.0.0.1",
    )
    sp.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="SPEC",
        help="add a NIC on a host bridge: name=BRIDGE[,mode=auto|manual][,mac=MAC], or BRIDGE "
        "(repeatable; see 'ketch networks')",
    )
    sp.add_argument(
        "--bridged", action="store_true", help="add a NIC on local.bridged-network (--network)"
    )
    sp.add_argument(
        "--cold", action="store_true", help="boot it, even when a warm-launch template fits"
    )
    sp.add_argument(
        "--host",
        metavar="NAME",
        help="run it on this host (default: the one with the most free memory that can take "
        "it when libvirt hosts are configured, else local; see 'ketch host list')",
    )
    sp.add_argument(
        "--mount",
        action="append",
        metavar="SOURCE:TARGET",
        help="mount a local directory in the instance (repeatable; TARGET default: SOURCE)",
    )

    sp = cmd("list", "verbs_instances")
    fmt(sp)
    sp.add_argument("--snapshots", action="store_true", help="list snapshots instead")
    sp.add_argument(
        "--no-ipv4", action="store_true", help="do not show the instances' IPv4 addresses"
    )
    sp = cmd("info", "verbs_instances")
    sp.add_argument("names", nargs="*", metavar="NAME", help="instances, or INSTANCE.SNAPSHOT")
    sp.add_argument("--all", action="store_true", help="every instance")
    sp.add_argument(
        "--snapshots", action="store_true", help="details of every snapshot of the instances"
    )
    sp.add_argument(
        "--no-runtime-information",
        action="store_true",
        help="only what the daemon knows without running commands in the instances",
    )
    fmt(sp)
    for verb in ("start", "suspend", "restart"):
        sp = cmd(verb, "verbs_instances")
        names(sp)
        if verb != "suspend":
            timeout(sp)
    sp = cmd("stop", "verbs_instances")
    names(sp)
    sp.add_argument(
        "-f", "--force", action="store_true", help="end the instance at once, from any state"
    )
    sp.add_argument("-t", "--time", help="shut down after this many minutes")
    sp.add_argument("-c", "--cancel", action="store_true", help="cancel a delayed shutdown")
    sp = cmd("delete", "verbs_instances")
    sp.add_argument("names", nargs="*", metavar="NAME", help="instances, or INSTANCE.SNAPSHOT")
    sp.add_argument("--all", action="store_true", help="every instance")
    sp.add_argument(
        "-p", "--purge", action="store_true", help="remove at once; cannot be recovered"
    )
    names(cmd("recover", "verbs_instances"))
    cmd("purge", "verbs_instances")

    sp = cmd("snapshot", "verbs_snapshots")
    sp.add_argument("instance", metavar="NAME", help="a stopped instance")
    sp.add_argument("-n", "--name", help="snapshot name (default: snapshotN)")
    sp.add_argument(
        "-c", "--comment", "-m", "--message", dest="comment", default="", help="a comment"
    )
    sp = cmd("restore", "verbs_snapshots")
    sp.add_argument("snapshot", metavar="NAME.SNAPSHOT", help="the snapshot to restore")
    sp.add_argument(
        "-d",
        "--destructive",
        action="store_true",
        help="discard the current state without asking whether to snapshot it first",
    )
    sp = cmd("clone", "verbs_snapshots")
    sp.add_argument("source", metavar="NAME", help="a stopped instance")
    sp.add_argument("-n", "--name", help="name of the clone (default: NAME-cloneN)")
    sp.add_argument(
        "--mounts", action="store_true", help="also copy the source's mounts (Multipass does not)"
    )
    sp.add_argument(
        "--host", metavar="NAME", help="the clone's host: the source's (the default and only one)"
    )
