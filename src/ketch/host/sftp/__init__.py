"""ketch's own confined SFTP server, the host side of a classic (reverse SSHFS) mount.

The guest runs ``sshfs`` in slave mode; its SFTP requests travel over ketch's
SSH connection to a server process that sees SOURCE and nothing else: it is
forked from a supervisor, moved into a mount namespace of its own whose only
filesystem is SOURCE (bind mount, ``pivot_root``, the old root detached), then
drops to the mapped host user (see ``confine``).  The protocol is SFTP v3 with
the OpenSSH extensions sshfs uses (``protocol``, ``server``).  The entry point
``python -m ketch.host.sftp`` is the supervisor (``__main__``).
"""
