"""The pieces of ketchd's connection guard that need no socket: log rate-limit, limits."""

from __future__ import annotations

import io
import json
import logging
import resource
import time

import pytest

from ketch.daemon import guard


def _logger(stream: io.StringIO, rate: guard.RateLimit) -> logging.Logger:
    logger = logging.getLogger(f"test-guard-{id(stream)}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.addFilter(rate)
    logger.handlers[:] = [handler]
    return logger


def test_a_flood_of_one_message_writes_a_few_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    logger = _logger(out, guard.RateLimit(burst=5, period=60.0))
    for _ in range(100_000):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            logger.exception("accept failed")
    logger.warning("something else")
    lines = out.getvalue().splitlines()
    assert sum(line == "accept failed" for line in lines) == 5
    assert "something else" in lines
    assert len(out.getvalue()) < 10_000  # 100 000 tracebacks would be ~30 MB
    clock[0] += 61
    logger.error("accept failed")
    assert out.getvalue().splitlines()[-1] == "accept failed [99995 more like this left out]"


def test_the_connection_cap_fits_the_fd_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KETCH_MAX_CONNECTIONS", raising=False)
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (256, 256))
    assert guard.Limits.from_env().max_connections == 256 - guard.FD_RESERVE - 3 * guard.BACKLOG
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1 << 20, 1 << 20))
    assert guard.Limits.from_env().max_connections == guard.MAX_CONNECTIONS
    monkeypatch.setenv("KETCH_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("KETCH_HEAD_TIMEOUT", "1.5")
    limits = guard.Limits.from_env()
    assert (limits.max_connections, limits.head_timeout) == (7, 1.5)


def test_the_busy_answer_is_an_error_the_client_understands() -> None:
    answer = guard.busy_response(3)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert f"Content-Length: {len(body)}".encode() in head
    err = json.loads(body)["error"]
    assert err["code"] == "busy" and err["exit_code"] == 3 and "3 connections" in err["message"]
