"""The command line's argparse: exit 1 on bad usage, and no ``shutil`` on the hot path."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from ketch.errors import EXIT_USAGE

FORMATS = ("table", "json", "csv", "yaml")  # --format of list, info, find, ...


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` says it, without importing shutil.

    argparse makes a help formatter for every parser and argument, and its
    default asks shutil, whose import (with bz2, lzma, zlib behind it) costs
    every ``ketch`` command about 2.4 ms.
    """
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class Formatter(argparse.HelpFormatter):
    """argparse's help formatter, its width found without shutil."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, width if width else _columns() - 2
        )


class Parser(argparse.ArgumentParser):
    """argparse that exits 1 on bad usage, as Multipass does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
