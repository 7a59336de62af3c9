"""Thin wrappers over host programs: qemu-img, QEMU, the seed ISO, ssh.

Each wrapper has three parts: build the argv (pure), run it, parse the
output (pure).  Parsers are tested against recorded output.
"""
