"""Loopback HTTP servers and a clean LLM environment, shared by the tests.

:func:`serve` runs any request handler on an ephemeral port of 127.0.0.1 for
the length of a ``with`` block; :func:`serve_keyed` is an OpenAI-compatible
chat server that answers by which known text the request contains (so that
requests may come in any order, from threads or Ray actors);
:func:`clean_llm_env` keeps OpenAI settings and proxies of the environment
out of a test.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

#: OpenAI client settings and proxies that must not reach a test's loopback server.
LLM_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_ADMIN_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_CUSTOM_HEADERS",
    "VISPROG_LLM_MODEL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
)


def clean_llm_env(monkeypatch: pytest.MonkeyPatch, cache_dir: Path | None = None) -> None:
    """No OpenAI settings or proxies from the environment; loopback bypasses proxies; the plan cache
    (when ``cache_dir`` is given) lives there."""
    for name in LLM_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    if cache_dir is not None:
        monkeypatch.setenv("VISPROG_CACHE_DIR", str(cache_dir))


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(handler: type[BaseHTTPRequestHandler], on_stop: Callable[[], None] | None = None) -> Iterator[str]:
    """Serve ``handler`` on an ephemeral port of 127.0.0.1 while the block runs; yields ``http://127.0.0.1:PORT``.

    ``on_stop`` runs first when the block ends (to wake handlers that are waiting).
    """
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        if on_stop is not None:
            on_stop()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def dribbling(every: float, seconds: float, *, in_headers: bool = False) -> Iterator[tuple[str, list[float]]]:
    """A server that answers 200 with a long Content-Length, then one space (valid JSON padding) every ``every``
    seconds, for ``seconds`` at most (so that a client without a deadline fails, not hangs); ``in_headers``: it
    sends its status line, then one byte of a header every ``every`` seconds (the headers never end). Yields its
    ``/v1`` URL and the times its requests arrived."""
    arrived: list[float] = []
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        timeout = 5.0

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            arrived.append(time.monotonic())
            end = time.monotonic() + seconds
            try:
                if in_headers:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                self.wfile.flush()
                while time.monotonic() < end and not stop.wait(every):
                    self.wfile.write(b"a" if in_headers else b" ")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up
                pass
            self.close_connection = True

    with serve(Handler, on_stop=stop.set) as url:
        yield f"{url}/v1", arrived


def _json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextlib.contextmanager
def serve_keyed(
    replies: Mapping[str, str],
    *,
    failing: Mapping[str, int] | None = None,
    slow: Mapping[str, float] | None = None,
    in_flight: dict[str, int] | None = None,
) -> Iterator[tuple[str, list[str]]]:
    """An OpenAI-compatible chat server that answers by which key of ``replies`` the last message
    contains (the longest one); yields its ``/v1`` URL and the list of keys asked, in arrival order.

    The mappings are read at each request, so a test may change them between runs: ``failing``
    (key → HTTP status to answer instead), ``slow["seconds"]`` (a delay per reply) and
    ``in_flight`` (``now`` and ``most``: requests being answered at once, updated here).
    """
    asked: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        timeout = 5.0

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)) or b"{}")
            last = str(body.get("messages", [{}])[-1].get("content", ""))
            status = next((code for text, code in (failing or {}).items() if text in last), None)
            if status is not None:
                error = {"message": f"scripted HTTP {status}", "type": "x", "code": None}
                _json(self, status, {"error": error})
                return
            keys = [k for k in replies if k in last]
            with lock:
                asked.extend(keys)
                if in_flight is not None:
                    in_flight["now"] = in_flight.get("now", 0) + 1
                    in_flight["most"] = max(in_flight.get("most", 0), in_flight["now"])
            time.sleep((slow or {}).get("seconds", 0.0))
            if in_flight is not None:
                with lock:
                    in_flight["now"] -= 1
            content = replies[max(keys, key=len)] if keys else "no scripted reply"
            choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            payload = {"id": "c", "object": "chat.completion", "created": 0, "model": body.get("model", "")}
            _json(self, 200, {**payload, "choices": [choice], "usage": usage})

    with serve(Handler) as url:
        yield f"{url}/v1", asked
