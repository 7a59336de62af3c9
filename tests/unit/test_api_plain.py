"""exec's plain decoders (ketch.api.plain) say what msgspec and the models say.

The models (``SshTargetReply``, ``ErrorReply``) are the contract; the plain
decoders exist only so ``ketch exec`` starts without msgspec.  Each document
here, good or bad, is decoded both ways: a good one gives the same values, a
bad one is refused by both, in the same words where msgspec's message is about
a field.  The route's quoting (``segment``) is held to ``urllib.parse.quote``.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import msgspec
import pytest

from ketch.api import models as m
from ketch.api.plain import Malformed, error_reply, ssh_target_reply
from ketch.api.routes import SSH, segment
from ketch.sshtarget import SshTarget

GOOD = {
    "name": "vm1",
    "host": "127.0.0.1",
    "port": 42001,
    "user": "ubuntu",
    "identity": "/root/.ketch/ssh/id_ed25519",
    "known_hosts": "/root/.ketch/instances/vm1/known_hosts",
    "mounts": [{"source": "/home/u/p", "target": "/p"}, {"source": "/a", "target": "/b"}],
    "control_path": "/root/.ketch/instances/vm1/ssh-mux.sock",
}


def without(key: str) -> dict[str, object]:
    return {k: v for k, v in GOOD.items() if k != key}


def both_ssh(doc: object) -> tuple[str | None, str | None]:
    """msgspec's and the plain decoder's error messages (None: accepted, and equal values)."""
    data = json.dumps(doc).encode()
    try:
        model = msgspec.json.decode(data, type=m.SshTargetReply)
    except msgspec.ValidationError as exc:
        theirs: str | None = str(exc)
    else:
        theirs = None
    try:
        plain = ssh_target_reply(data)
    except Malformed as exc:
        return theirs, str(exc)
    assert theirs is None, f"msgspec refused what the plain decoder took: {theirs}"
    expected = SshTarget(
        model.name,
        model.host,
        model.port,
        model.user,
        model.identity,
        model.known_hosts,
        model.control_path,
    )
    assert plain.target == expected
    assert plain.mounts == [(p.source, p.target) for p in model.mounts]
    return None, None


def test_the_plain_decoder_reads_every_field_of_the_model() -> None:
    """A field added to SshTargetReply must be added here too: this test names it."""
    model_fields = {f.name for f in msgspec.structs.fields(m.SshTargetReply)}
    assert model_fields == set(GOOD)
    assert set(SshTarget.__slots__) == model_fields - {"mounts"}
    assert SSH.reply is m.SshTargetReply


@pytest.mark.parametrize(
    "doc",
    [
        GOOD,
        without("control_path"),  # a default in the model
        {**GOOD, "mounts": []},
        {**GOOD, "extra": [1, {"x": None}]},  # unknown fields are ignored (a newer daemon)
        {**GOOD, "mounts": [{"source": "/a", "target": "/b", "type": "classic"}]},
        {**GOOD, "name": "é ünïcode"},
    ],
)
def test_good_replies_decode_to_the_same_values(doc: dict[str, object]) -> None:
    assert both_ssh(doc) == (None, None)


@pytest.mark.parametrize(
    "doc",
    [
        *(without(k) for k in GOOD if k != "control_path"),
        {**GOOD, "port": "22"},
        {**GOOD, "port": True},  # a bool is not an int
        {**GOOD, "port": 22.0},
        {**GOOD, "port": None},
        {**GOOD, "host": 1},
        {**GOOD, "control_path": None},
        {**GOOD, "mounts": {}},
        {**GOOD, "mounts": [["/a", "/b"]]},
        {**GOOD, "mounts": [{"source": "/a"}]},
        {**GOOD, "mounts": [{"source": "/a", "target": 2}]},
        [GOOD],
        "a string",
        None,
    ],
)
def test_bad_replies_are_refused_in_msgspecs_words(doc: object) -> None:
    theirs, mine = both_ssh(doc)
    assert theirs is not None and mine is not None
    assert mine == theirs


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"name": "a"', b"\xff\xfe"])
def test_bytes_that_are_not_json_are_refused_by_both(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(data, type=m.SshTargetReply)
    with pytest.raises(Malformed, match="JSON is malformed"):
        ssh_target_reply(data)


@pytest.mark.parametrize(
    "doc",
    [
        {"error": {"code": "not-found", "message": 'instance "x" does not exist'}},
        {"error": {"code": "c", "message": "m", "hint": "do this", "exit_code": 3}},
        {"error": {"code": "c", "message": "m", "hint": None, "exit_code": 2, "more": 1}},
    ],
)
def test_error_replies_decode_to_the_same_error(doc: dict[str, object]) -> None:
    data = json.dumps(doc).encode()
    detail = msgspec.json.decode(data, type=m.ErrorReply).error
    err = error_reply(data)
    assert (err.code, err.message, err.hint, err.exit_code) == (
        detail.code,
        detail.message,
        detail.hint,
        detail.exit_code,
    )


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"error": "boom"},
        {"error": {"message": "m"}},
        {"error": {"code": "c", "message": "m", "hint": 5}},
        {"error": {"code": "c", "message": "m", "exit_code": "2"}},
        {"error": {"code": "c", "message": "m", "exit_code": False}},
    ],
)
def test_bad_error_replies_are_refused_in_msgspecs_words(doc: dict[str, object]) -> None:
    data = json.dumps(doc).encode()
    with pytest.raises(msgspec.ValidationError) as theirs:
        msgspec.json.decode(data, type=m.ErrorReply)
    with pytest.raises(Malformed) as mine:
        error_reply(data)
    assert str(mine.value) == str(theirs.value)


@pytest.mark.parametrize(
    "text",
    ["vm1", "a b", "a/b", "..", "%", "é", "名前", "~_.-", "a?b#c&d=e", "+", "\x00", "'\""],
)
def test_a_segment_is_quoted_as_urllib_quotes_it(text: str) -> None:
    assert segment(text) == quote(text, safe="")


def test_a_target_is_immutable_and_replace_makes_a_copy() -> None:
    t = SshTarget("vm1", "127.0.0.1", 22, "u", "/k", "/kh")
    with pytest.raises(AttributeError):
        t.host = "10.0.0.1"
    moved = t.replace(host="10.0.0.1", port=2222, control_path="/s")
    assert (moved.host, moved.port, moved.control_path, moved.name) == (
        "10.0.0.1",
        2222,
        "/s",
        "vm1",
    )
    assert t == SshTarget("vm1", "127.0.0.1", 22, "u", "/k", "/kh", "")
    assert hash(t) == hash(SshTarget("vm1", "127.0.0.1", 22, "u", "/k", "/kh"))
    assert t != moved and "port=22" in repr(t)
