"""ketch's wire contract: the typed requests, replies and events of ketchd's HTTP API.

Both sides import it: the daemon decodes every request through these models
(a wrong type, an unknown field or an out-of-range value is an HTTP 400 that
names the field) and encodes every reply through them; the client decodes
every reply through them (a malformed reply is a clear exit-3 error).  The
route table (:mod:`ketch.api.routes`) says which model goes with which route,
and the OpenAPI document (:mod:`ketch.api.openapi`) is generated from it.

Light on purpose: it imports msgspec and the standard library only, since the
CLI's hot path (``ketch list``) loads it.  msgspec imports ``typing_extensions``
when it is installed, only for ``get_type_hints`` (and TypedDict's
``Required``), which Python 3.11's own :mod:`typing` has; that import (with
:mod:`inspect`, :mod:`ast`, :mod:`dis` behind it) costs ``ketch list`` about
8 ms, a sixth of its budget.  So msgspec is first imported here with
``typing_extensions`` hidden, and falls back to :mod:`typing` as it is written
to; the module stays importable for everyone else afterwards.
"""

import sys

if "msgspec" not in sys.modules and "typing_extensions" not in sys.modules:
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # "not installed"
    try:
        import msgspec  # noqa: F401
    finally:
        del sys.modules["typing_extensions"]
