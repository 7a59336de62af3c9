"""ketch's wire contract: the typed requests, replies and events of ketchd's HTTP API.

Both sides import it: the daemon decodes every request through these models
(a wrong type, an unknown field or an out-of-range value is an HTTP 400 that
names the field) and encodes every reply through them; the client decodes
every reply through them (a malformed reply is a clear exit-3 error).  The
route table (:mod:`ketch.api.routes`) says which model goes with which route,
and the OpenAPI document (:mod:`ketch.api.openapi`) is generated from it.

Light on purpose: it imports msgspec and the standard library only, since the
CLI's hot path (``ketch list``) loads it.
"""
