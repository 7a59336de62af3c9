"""ketch's wire contract: the typed requests, replies and events of ketchd's HTTP API.

Both sides import it: the daemon decodes every request through these models
(a wrong type, an unknown field or an out-of-range value is an HTTP 400 that
names the field) and encodes every reply through them; the client decodes
every reply through them (a malformed reply is a clear exit-3 error).  The
route table (:mod:`ketch.api.routes`) says which model goes with which route,
and the OpenAPI document (:mod:`ketch.api.openapi`) is generated from it.

Light on purpose, since the CLI's hot path (``ketch list``) loads it: the
package and its route table import nothing; :mod:`ketch.api.models` (and
msgspec with it) is imported when a route's model is first used, which the
client does after sending its request, while the daemon works on the answer.
See :mod:`ketch.api.models` for how msgspec itself is imported.
"""
