"""Limits on a user's cloud-init, checked before anything big is built (issue 12, item 4).

What a ``#cloud-config`` file may cost ketchd, each refused with
:class:`~ketch.errors.InvalidArgument` (exit 1) naming the limit:

* :data:`MAX_USER_DATA` bytes of file (checked by ``cloudinit.parse_user_data``);
* :data:`MAX_NODES` YAML nodes as written, counted while the graph is composed;
* :data:`MAX_EXPANDED` once every alias is expanded (:func:`expanded_size`: a
  node counts 1, a scalar 1 + its length), measured on the composed graph,
  before any Python object is constructed; an alias to a node containing it
  is refused;
* :data:`MAX_DECODED` bytes of ``write_files`` contents after ``b64``/``gzip``/
  ``gz+b64`` decoding (:func:`check_write_files`), every entry counted each
  time it appears; gzip is inflated incrementally, never past the budget.

libyaml's parser is used when present (it also refuses nesting deeper than
1000); the composer is PyYAML's own, in Python, so each node is counted.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import yaml
from yaml.composer import Composer

from ketch.errors import InvalidArgument

MiB = 1024 * 1024
MAX_USER_DATA = 4 * MiB  # bytes of the file; the NoCloud seed has room for it
MAX_NODES = 200_000  # YAML nodes as written (~300 bytes each while parsed: ~60 MB)
MAX_EXPANDED = 16 * MiB  # the document's size with every alias expanded
MAX_DECODED = 16 * MiB  # write_files contents after base64/gzip, all entries together


_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 6x faster, depth-limited


class _Loader(_Base):  # type: ignore[misc]
    """The safe loader, composing in Python so every node is counted as it is made."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.anchors: dict[str, yaml.Node] = {}
        self.nodes = 0

    get_single_node = Composer.get_single_node
    compose_document = Composer.compose_document
    compose_scalar_node = Composer.compose_scalar_node
    compose_sequence_node = Composer.compose_sequence_node
    compose_mapping_node = Composer.compose_mapping_node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise InvalidArgument(
                f"cloud-init file has more than {MAX_NODES} YAML nodes (ketch's limit)",
                hint="a cloud-config this large is better split: move data into files "
                "sent with 'ketch transfer'",
            )
        node: yaml.Node | None = Composer.compose_node(self, parent, index)
        return node


def load(body: str) -> Any:
    """``body`` as YAML with the safe loader, within the limits above."""
    loader = _Loader(body)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node)
        return loader.construct_document(node)
    except RecursionError as exc:
        raise InvalidArgument("cloud-init file is nested too deeply") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise InvalidArgument(
            f"cloud-init file is not valid YAML: {where}{problem}",
            hint="check the indentation and quoting around that spot",
        ) from exc
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"cloud-init file is not valid YAML: {exc}") from exc
    finally:
        loader.dispose()


def expanded_size(root: yaml.Node, limit: int = MAX_EXPANDED) -> int:
    """The size of the composed graph with every alias expanded, refused past ``limit``.

    A node counts 1, a scalar also its length.  Iterative, each node once
    (shared nodes are memoised), so a bomb is measured without being expanded.
    """
    done: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        if key in done:
            stack.pop()
            continue
        children = _children(node)
        if key not in open_:
            open_.add(key)
            for child in children:
                if id(child) in open_ and id(child) not in done:
                    raise InvalidArgument(
                        "cloud-init file has an alias to a node that contains it "
                        "(a structure without end)",
                        hint="YAML aliases (*name) must refer to a complete, earlier node",
                    )
                if id(child) not in done:
                    stack.append(child)
            continue
        size = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
        size += sum(done[id(child)] for child in children)
        if size > limit:
            raise InvalidArgument(
                f"cloud-init file expands to more than {limit} bytes through YAML aliases "
                f"(ketch's limit is {limit // MiB} MiB expanded)",
                hint="repeat less through aliases (*name); each one is a full copy",
            )
        done[key] = size
        stack.pop()
    return done[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


_GZIP_ENCODINGS = ("gz", "gzip")
_B64_ENCODINGS = ("b64", "base64")
_GZ_B64_ENCODINGS = ("gz+base64", "gzip+base64", "gz+b64", "gzip+b64")


def check_write_files(cfg: dict[str, Any], limit: int = MAX_DECODED) -> int:
    """The total decoded size of ``write_files`` contents, refused past ``limit``.

    Every entry counts each time it appears (an alias repeats the file in the
    guest); gzip is inflated incrementally and stops at the remaining budget.
    Malformed entries are left to the renderer, which names them.
    """
    entries = cfg.get("write_files")
    if not isinstance(entries, list):
        return 0
    total = 0
    sizes: dict[int, int] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        size = sizes.get(id(entry))
        if size is None:
            size = sizes[id(entry)] = _decoded_size(entry, limit - total)
        total += size
        if total > limit:
            raise _over_decoded(limit)
    return total


def _over_decoded(limit: int) -> InvalidArgument:
    return InvalidArgument(
        f"cloud-init write_files contents decode to more than {limit} bytes "
        f"(ketch's limit is {limit // MiB} MiB, after base64 and gzip, repeats counted)",
        hint="send large files with 'ketch transfer' once the instance runs",
    )


def _decoded_size(entry: dict[str, Any], budget: int) -> int:
    content = entry.get("content")
    data = content.encode() if isinstance(content, str) else content
    if not isinstance(data, bytes):
        return 0
    encoding = str(entry.get("encoding", "")).strip().lower()
    try:
        if encoding in _B64_ENCODINGS:
            return len(base64.b64decode(data))
        if encoding in _GZIP_ENCODINGS:
            return _gunzip_size(data, budget)
        if encoding in _GZ_B64_ENCODINGS:
            return _gunzip_size(base64.b64decode(data), budget)
    except (binascii.Error, zlib.error, EOFError):
        return 0  # not valid: the renderer refuses it with the entry's path
    return len(data)


def _gunzip_size(data: bytes, budget: int) -> int:
    """The size of gzip ``data`` inflated (all members), never inflating past ``budget``."""
    total = 0
    inflate = zlib.decompressobj(wbits=31)
    pending = data
    while True:
        out = inflate.decompress(pending, max(budget - total, 0) + 1)
        total += len(out)
        if total > budget:
            return total  # over: the caller refuses it
        pending = inflate.unconsumed_tail
        if inflate.eof:
            pending = inflate.unused_data.lstrip(b"\0")  # members may follow, as in gzip
            if not pending:
                return total
            inflate = zlib.decompressobj(wbits=31)
        elif not pending and not out:
            raise EOFError("compressed data ended before the end-of-stream marker")
