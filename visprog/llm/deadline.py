"""A deadline for a whole request to an LLM server, retries included, however slowly the answer arrives.

The HTTP client's timeout bounds each wait for bytes, not the whole answer: a
server that sends one byte a second never trips it. :func:`deadline` sets the
moment by which the calls inside its block must end; :func:`deadline_http_client`
is the ``openai`` client's HTTP client, which holds every request to it:

- each read and write on its connections waits at most until the deadline, and
  one that starts after it fails at once: headers sent a byte at a time end
  there too (a network backend around httpcore's own);
- an answer whose body is still arriving at the deadline is ended: a watchdog
  shuts the connection's socket down (waking the read that waits), and the
  body's stream turns that into a read timeout (the ``openai`` client's
  ``APITimeoutError``);
- a body longer than ``max_body_bytes`` is not read further: the stream raises
  :class:`ReplyTooLarge` (the ``openai`` client's ``APIConnectionError`` with it
  as its cause; it is not tried again).

The deadline lives in a context variable: each thread keeps its own, so one
client may serve several threads. Nothing here imports ``openai`` or ``httpx2``
at import time.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["ReplyTooLarge", "deadline", "deadline_http_client", "remaining"]

_DEADLINE: ContextVar[float | None] = ContextVar("visprog_llm_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Requests made inside the block end within ``seconds`` from now, all together; a deadline already set
    around the block that comes sooner stays (a request's own time limit bounds its LLM calls too)."""
    end = time.monotonic() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(end if outer is None else min(outer, end))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline (0 when it has passed), or None outside :func:`deadline`."""
    end = _DEADLINE.get()
    return None if end is None else max(0.0, end - time.monotonic())


class ReplyTooLarge(Exception):
    """An answer's body is longer than the client takes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is longer than {limit:,} bytes")
        self.limit = limit


def deadline_http_client(max_body_bytes: int | None = None) -> Any:
    """The ``openai`` client's default HTTP client (its connection limits), whose reads, writes and bodies end
    at the deadline (a read or write timeout), and which reads at most ``max_body_bytes`` of a body."""
    import httpx2
    import openai

    transport = httpx2.HTTPTransport(limits=openai.DEFAULT_CONNECTION_LIMITS)
    pool = getattr(transport, "_pool", None)  # httpx builds its pool without a way to pass a network backend
    if pool is not None and hasattr(pool, "_network_backend"):
        pool._network_backend = _backend_type()(pool._network_backend)

    def bound_body(response: Any) -> None:
        _bound_body(response, max_body_bytes)

    return openai.DefaultHttpxClient(transport=transport, event_hooks={"response": [bound_body]})


def _bound_body(response: Any, max_bytes: int | None) -> None:
    """Response hook: read the body through a stream that stops at the deadline (if one is set) and after
    ``max_bytes``."""
    end = _DEADLINE.get()
    watchdog = None
    if end is not None:
        watchdog = threading.Timer(
            max(0.0, end - time.monotonic()), _shut, (response.extensions.get("network_stream"),)
        )
        watchdog.daemon = True
        watchdog.start()
    if watchdog is not None or max_bytes is not None:
        response.stream = _stream_type()(response.stream, end, response.request, watchdog, max_bytes)


def _shut(stream: Any) -> None:
    """Shut the socket of a connection down, so that a read waiting on it ends now."""
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@functools.cache
def _stream_type() -> type:
    import httpx2

    class DeadlineStream(httpx2.SyncByteStream):
        """The body of an answer, piece by piece, until the deadline; then a :class:`httpx2.ReadTimeout`."""

        def __init__(
            self,
            stream: httpx2.SyncByteStream,
            end: float | None,
            request: httpx2.Request,
            watchdog: threading.Timer | None,
            max_bytes: int | None,
        ) -> None:
            self._stream = stream
            self._end = end if end is not None else float("inf")
            self._request = request
            self._watchdog = watchdog
            self._max_bytes = max_bytes

        def _late(self) -> httpx2.ReadTimeout:
            return httpx2.ReadTimeout("the deadline passed while the answer arrived", request=self._request)

        def __iter__(self) -> Iterator[bytes]:
            read = 0
            try:
                for chunk in self._stream:
                    if time.monotonic() >= self._end:
                        raise self._late()
                    read += len(chunk)
                    if self._max_bytes is not None and read > self._max_bytes:
                        raise ReplyTooLarge(self._max_bytes)
                    yield chunk
            except httpx2.HTTPError as e:  # the watchdog shut the socket down: a timeout, not a lost connection
                if time.monotonic() >= self._end and not isinstance(e, httpx2.TimeoutException):
                    raise self._late() from e
                raise

        def close(self) -> None:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._stream.close()

    return DeadlineStream


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the deadline; ``error`` when none is left."""
    left = remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise error("the deadline passed")
    return left if timeout is None else min(timeout, left)


@functools.cache
def _backend_type() -> type:
    import httpcore2

    class DeadlineNetworkStream(httpcore2.NetworkStream):
        """A connection whose reads and writes wait at most until the deadline of the request using it."""

        def __init__(self, stream: Any) -> None:
            self._stream = stream

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return bytes(self._stream.read(max_bytes, _bounded(timeout, httpcore2.ReadTimeout)))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self._stream.write(buffer, _bounded(timeout, httpcore2.WriteTimeout))

        def close(self) -> None:
            self._stream.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
            bounded = _bounded(timeout, httpcore2.ConnectTimeout)
            return DeadlineNetworkStream(self._stream.start_tls(ssl_context, server_hostname, bounded))

        def get_extra_info(self, info: str) -> Any:
            return self._stream.get_extra_info(info)

    class DeadlineBackend(httpcore2.NetworkBackend):
        """httpcore's network backend, its connections bounded by the deadline."""

        def __init__(self, backend: Any) -> None:
            self._backend = backend

        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Any = None,
        ) -> Any:
            bounded = _bounded(timeout, httpcore2.ConnectTimeout)
            return DeadlineNetworkStream(self._backend.connect_tcp(host, port, bounded, local_address, socket_options))

        def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
            bounded = _bounded(timeout, httpcore2.ConnectTimeout)
            return DeadlineNetworkStream(self._backend.connect_unix_socket(path, bounded, socket_options))

        def sleep(self, seconds: float) -> None:
            self._backend.sleep(seconds)

    return DeadlineBackend
