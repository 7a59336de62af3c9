"""typing's names for the modules on the CLI's hot paths, without importing ``typing``.

``import typing`` costs a ``ketch`` process about 11 ms of start-up, more than
``ketch exec`` can spare: its budget is half a plain ``ssh true`` (see
docs/benchmarks.md).  The modules ``ketch exec``, ``list`` and ``info`` load
(the CLI's parser, the client, the transport, the route table, the errors,
:mod:`ketch.host.ssh`), and those of the lifecycle verbs (``cli.verbs_instances``,
``cli.progress``), take their typing names from here.  For mypy these are
typing's own (mypy reads ``TYPE_CHECKING`` as true whatever module it comes
from); at run time ``TYPE_CHECKING`` is False, so names used only in
annotations (``Any``, ``NoReturn``, ``IO``, ...) are imported from ``typing``
under ``if TYPE_CHECKING:``, while the two that a module evaluates, ``Generic``
(a base class) and ``TypeVar`` (a module-level call), are stand-ins:
``Generic[...]`` is a plain base class and a type variable its name.
"""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Generic, TypeVar
else:

    class Generic:
        """``typing.Generic`` at run time: subscripting it gives the class itself."""

        __slots__ = ()

        def __class_getitem__(cls, params):
            return cls

    def TypeVar(name, *constraints, **options):  # typing's spelling
        """``typing.TypeVar`` at run time: only its name."""
        return name


__all__ = ["TYPE_CHECKING", "Generic", "TypeVar"]
