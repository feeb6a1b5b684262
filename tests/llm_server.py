"""A scripted OpenAI-compatible server on 127.0.0.1, for the planner's tests.

Use the ``llm_server`` fixture::

    def test_something(llm_server: ScriptedServer) -> None:
        llm_server.script(["BOX0=Loc(image=IMAGE, object='cat')", Reply.rate_limited(), ["a", "b"]])
        client = OpenAIClient(LLMConfig(base_url=llm_server.url, model="tiny"))
        ...
        assert llm_server.requests[0].body["model"] == "tiny"

Each request to ``/v1/chat/completions`` or ``/v1/completions`` takes the next
item of the script:

- a ``str``: one choice with that content (like a server that ignores ``n``);
- a ``list[str]``: one choice per item (the answer to ``n=len(list)``);
- a :class:`Reply`: anything else: ``Reply.rate_limited()`` (HTTP 429 with
  ``Retry-After: 0``), ``Reply.server_error()`` (HTTP 500), ``Reply.garbage()``
  (a body that is not JSON), ``Reply.slow(seconds, content)``,
  ``Reply.error(status, message)``.

A request with no script item left gets HTTP 400 "no scripted reply left"
(not retried by clients), so a test that asks more than it scripted fails
quickly and says why. Every request is recorded in ``llm_server.requests``
(path, lower-cased headers, JSON body). Nothing can hang: handler sockets time
out, delays end when the fixture shuts the server down, and shutdown is bounded.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.servers import clean_llm_env, serve

__all__ = ["RecordedRequest", "Reply", "ScriptedServer", "serve_scripted"]

#: Seconds a handler waits for a request's bytes before giving up.
_SOCKET_TIMEOUT = 5.0


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    contents: tuple[str, ...] = ("",)
    status: int = 200
    delay: float = 0.0
    #: sent as the body instead of a completion (for bodies that are not JSON)
    raw: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    message: str = "scripted error"

    @classmethod
    def text(cls, *contents: str) -> Reply:
        return cls(contents=contents or ("",))

    @classmethod
    def rate_limited(cls, retry_after: str = "0") -> Reply:
        return cls(status=429, headers=(("Retry-After", retry_after),), message="Rate limit reached, slow down")

    @classmethod
    def server_error(cls) -> Reply:
        return cls(status=500, message="internal server error")

    @classmethod
    def error(cls, status: int, message: str) -> Reply:
        return cls(status=status, message=message)

    @classmethod
    def garbage(cls) -> Reply:
        return cls(raw=b'{"choices": [ this is not json')

    @classmethod
    def slow(cls, seconds: float, *contents: str) -> Reply:
        return cls(contents=contents or ("",), delay=seconds)


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    #: header names lower-cased
    headers: dict[str, str]
    body: dict[str, Any]


def _as_reply(item: str | Sequence[str] | Reply) -> Reply:
    if isinstance(item, Reply):
        return item
    if isinstance(item, str):
        return Reply.text(item)
    return Reply.text(*item)


@dataclass
class ScriptedServer:
    """State shared by the HTTP handler threads and the test."""

    url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    _replies: list[Reply] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def script(self, replies: Sequence[str | Sequence[str] | Reply]) -> None:
        """Append replies, answered in order, one per request."""
        with self._lock:
            self._replies.extend(_as_reply(r) for r in replies)

    @property
    def pending(self) -> int:
        """Scripted replies not used yet."""
        with self._lock:
            return len(self._replies)

    def _next(self, request: RecordedRequest) -> Reply | None:
        with self._lock:
            self.requests.append(request)
            return self._replies.pop(0) if self._replies else None


def _completion(path: str, body: dict[str, Any], contents: Sequence[str], number: int) -> dict[str, Any]:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    if path.endswith("/chat/completions"):
        return {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
                for i, c in enumerate(contents)
            ],
            "usage": usage,
        }
    return {
        "id": f"cmpl-{number}",
        "object": "text_completion",
        "created": 0,
        "model": body.get("model", ""),
        "choices": [{"index": i, "text": c, "finish_reason": "stop", "logprobs": None} for i, c in enumerate(contents)],
        "usage": usage,
    }


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = _SOCKET_TIMEOUT

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, data: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                pass

        def _error(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
            payload = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
            self._send(status, json.dumps(payload).encode(), headers)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"_unparsed": raw.decode("utf-8", "replace")}
            path = self.path.split("?", 1)[0]
            request = RecordedRequest(path, {k.lower(): v for k, v in self.headers.items()}, body)
            if not path.endswith(("/chat/completions", "/completions")):
                with server._lock:
                    server.requests.append(request)
                self._error(404, f"no route {path}")
                return
            reply = server._next(request)
            if reply is None:
                self._error(400, f"scripted server: no scripted reply left for request {len(server.requests)}")
                return
            if reply.delay and server._stopping.wait(reply.delay):
                return  # shutting down
            if reply.raw is not None:
                self._send(reply.status, reply.raw, reply.headers)
            elif reply.status != 200:
                self._error(reply.status, reply.message, reply.headers)
            else:
                payload = _completion(path, body, reply.contents, len(server.requests))
                self._send(200, json.dumps(payload).encode(), reply.headers)

    return Handler


@contextlib.contextmanager
def serve_scripted() -> Iterator[ScriptedServer]:
    """A scripted OpenAI-compatible server on an ephemeral port of 127.0.0.1, while the block runs."""
    server = ScriptedServer()
    with serve(_handler(server), on_stop=server._stopping.set) as url:
        server.url = f"{url}/v1"
        yield server


@pytest.fixture
def llm_server() -> Iterator[ScriptedServer]:
    """A scripted OpenAI-compatible server on an ephemeral port of 127.0.0.1, for one test."""
    with serve_scripted() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_llm_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No OpenAI settings or proxies leak in from the environment; the plan cache lives in ``tmp_path``."""
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")
