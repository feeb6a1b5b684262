"""The LLM timeout is a deadline for the whole request, retries and waits included.

A server that sends its headers and then one byte every half second never trips a per-read timeout; a server
that asks to wait longer than the deadline must not be waited for. Both once held a plan request for minutes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import openai  # noqa: F401  (loaded before any timing: the deadline bounds the requests, not this import)
import pytest

from tests import servers
from tests.llm_server import Reply, ScriptedServer, llm_server
from tests.servers import clean_llm_env, serve
from visprog.errors import ServiceError
from visprog.llm import OpenAIClient
from visprog.llm.server import LLMConfig

__all__ = ["llm_server"]

MESSAGES = [{"role": "user", "content": "plan"}]
#: How long the dribbling server goes on at most (so that a client without a deadline fails, not hangs).
DRIBBLE_SECONDS = 10.0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")


@pytest.fixture
def dribbling() -> Iterator[tuple[str, list[float]]]:
    """A server that answers 200 with a long Content-Length, then one space every 0.5 s."""
    with servers.dribbling(0.5, DRIBBLE_SECONDS) as (url, arrived):
        yield url, arrived


def client(base_url: str, **options: Any) -> OpenAIClient:
    return OpenAIClient(LLMConfig(base_url=base_url, model="tiny-llm", **options))


def test_a_dribbling_server_ends_at_the_deadline(dribbling: tuple[str, list[float]]) -> None:
    url, arrived = dribbling
    llm = client(url, timeout=2, max_retries=3)
    start = time.monotonic()
    with pytest.raises(ServiceError) as err:
        llm.complete(MESSAGES)
    took = time.monotonic() - start
    assert 1.9 < took < 3.0
    message = str(err.value)
    assert message.startswith(f"planner: the LLM server at {url} (model 'tiny-llm') did not answer within 2 s")
    assert "(option timeout)" in message
    assert f"; {len(arrived)} request{'s' if len(arrived) != 1 else ''} made" in message
    assert all(t - start < 2.1 for t in arrived)  # no try starts after the deadline


def test_the_deadline_covers_every_request_of_one_call(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.slow(0.8, "a")] * 5)  # one choice each: one request per reply
    llm = client(llm_server.url, timeout=2, max_retries=0)
    start = time.monotonic()
    with pytest.raises(ServiceError, match=r"did not answer within 2 s \(option timeout\); 3 requests made$"):
        llm.complete(MESSAGES, n=5)
    assert time.monotonic() - start < 2.6
    assert len(llm_server.requests) == 3


@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_past_the_deadline_ends_at_once(llm_server: ScriptedServer, status: int) -> None:
    llm_server.script([Reply(status=status, headers=(("Retry-After", "30"),), message="busy")])
    llm = client(llm_server.url, timeout=2, max_retries=2)
    start = time.monotonic()
    with pytest.raises(ServiceError) as err:
        llm.complete(MESSAGES)
    assert time.monotonic() - start < 1.0
    assert len(llm_server.requests) == 1
    assert str(err.value) == (
        f"planner: the LLM server at {llm_server.url} (model 'tiny-llm') answered HTTP {status}: "
        f"Error code: {status} - busy; it asked to wait 30 s before trying again (Retry-After), "
        "past the 2 s deadline (option timeout): gave up at once after 1 request made"
    )


def test_retry_messages_count_the_requests_made(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.rate_limited()] * 3)
    with pytest.raises(ServiceError) as err:
        client(llm_server.url, max_retries=2).complete(MESSAGES)
    assert len(llm_server.requests) == 3
    assert "is rate limiting requests (HTTP 429) after 2 retries (3 requests made): " in str(err.value)
    llm_server.script([Reply.server_error()] * 2)
    with pytest.raises(ServiceError) as err:
        client(llm_server.url, max_retries=1).complete(MESSAGES)
    assert len(llm_server.requests) == 5
    assert str(err.value).endswith("answered HTTP 500: Error code: 500 - internal server error (2 requests made)")


def test_a_retry_within_the_deadline_still_succeeds(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply(status=503, headers=(("Retry-After", "0.3"),), message="busy"), "ok"])
    assert client(llm_server.url, timeout=5, max_retries=1).complete(MESSAGES) == ["ok"]
    assert len(llm_server.requests) == 2


@pytest.fixture
def slow_headers() -> Iterator[tuple[str, list[float]]]:
    """A server that sends its status line, then one byte of a header every 0.3 s (headers never end in time)."""
    with servers.dribbling(0.3, DRIBBLE_SECONDS, in_headers=True) as (url, arrived):
        yield url, arrived


def test_headers_sent_a_byte_at_a_time_end_at_the_deadline(slow_headers: tuple[str, list[float]]) -> None:
    url, arrived = slow_headers
    llm = client(url, timeout=2, max_retries=3)
    start = time.monotonic()
    with pytest.raises(ServiceError, match=r"did not answer within 2 s \(option timeout\)"):
        llm.complete(MESSAGES)
    assert 1.9 < time.monotonic() - start < 3.0
    assert all(t - start < 2.1 for t in arrived)


@pytest.fixture
def huge_answer() -> Iterator[tuple[str, list[float]]]:
    """A server that answers 200 with a 5 MB body (a JSON completion padded with spaces)."""
    arrived: list[float] = []
    body = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}' + b" " * 5_000_000

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            arrived.append(time.monotonic())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    with serve(Handler) as url:
        yield f"{url}/v1", arrived


def test_an_answer_over_max_reply_bytes_is_not_read_nor_tried_again(huge_answer: tuple[str, list[float]]) -> None:
    url, arrived = huge_answer
    llm = client(url, max_reply_bytes=100_000, max_retries=3)
    with pytest.raises(ServiceError) as err:
        llm.complete(MESSAGES)
    assert str(err.value) == (
        f"planner: the LLM server at {url} (model 'tiny-llm') sent an answer longer than 100,000 bytes; "
        "it was not read further (option max_reply_bytes)"
    )
    assert len(arrived) == 1
    assert client(url, max_reply_bytes=6_000_000).complete(MESSAGES) == ["x"]  # the same answer, under the limit


def test_max_reply_bytes_is_a_setting_with_a_checked_value(tmp_path: Path) -> None:
    from visprog.errors import ConfigError
    from visprog.running.runtime import read_config
    from visprog.solving import create_planner

    with pytest.raises(ConfigError, match="max_reply_bytes must be at least 1, got 0"):
        LLMConfig(max_reply_bytes=0)
    config = tmp_path / "config.toml"
    config.write_text('[llm]\nmax_reply_bytes = "big"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[llm\] max_reply_bytes must be a whole number, got 'big'"):
        read_config(config)
    planner = create_planner(base_url="http://127.0.0.1:9/v1", max_reply_bytes=5000)
    assert planner.max_reply_bytes == 5000
    assert planner.backend.config.max_reply_bytes == 5000  # type: ignore[attr-defined]


def test_a_sooner_deadline_around_the_call_stays(dribbling: tuple[str, list[float]]) -> None:
    """A request's own time limit (the web app's) bounds the LLM call inside it, though the client's is longer."""
    from visprog.llm.deadline import deadline, remaining

    url, _ = dribbling
    start = time.monotonic()
    with deadline(1.0), pytest.raises(ServiceError, match="did not answer within 30 s"):
        client(url, timeout=30, max_retries=0).complete(MESSAGES)
    assert time.monotonic() - start < 2.0
    with deadline(5.0), deadline(50.0):
        left = remaining()
        assert left is not None and left <= 5.0
