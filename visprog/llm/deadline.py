"""A deadline for a whole request to an LLM server, retries included, however slowly the answer arrives.

The HTTP client's timeout bounds each wait for bytes, not the whole answer: a
server that sends one byte a second never trips it. :func:`deadline` sets the
moment by which the calls inside its block must end; :func:`deadline_http_client`
is the ``openai`` client's HTTP client, which ends an answer whose body is still
arriving at that moment: a watchdog shuts the connection's socket down (waking
the read that waits), and the body's stream turns that into a read timeout (the
``openai`` client's ``APITimeoutError``). Each request's own timeout is
:func:`remaining`, so a server that stays silent (before or after its headers)
ends at the deadline too.

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

__all__ = ["deadline", "deadline_http_client", "remaining"]

_DEADLINE: ContextVar[float | None] = ContextVar("visprog_llm_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Requests made inside the block end within ``seconds`` from now, all together."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline (0 when it has passed), or None outside :func:`deadline`."""
    end = _DEADLINE.get()
    return None if end is None else max(0.0, end - time.monotonic())


def deadline_http_client() -> Any:
    """The ``openai`` client's default HTTP client, which ends an answer whose body is still arriving at the
    deadline (a read timeout)."""
    import openai

    return openai.DefaultHttpxClient(event_hooks={"response": [_bound_body]})


def _bound_body(response: Any) -> None:
    """Response hook: read the body through a stream that stops at the deadline (if one is set)."""
    end = _DEADLINE.get()
    if end is not None:
        watchdog = threading.Timer(
            max(0.0, end - time.monotonic()), _shut, (response.extensions.get("network_stream"),)
        )
        watchdog.daemon = True
        watchdog.start()
        response.stream = _stream_type()(response.stream, end, response.request, watchdog)


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
            self, stream: httpx2.SyncByteStream, end: float, request: httpx2.Request, watchdog: threading.Timer
        ) -> None:
            self._stream = stream
            self._end = end
            self._request = request
            self._watchdog = watchdog

        def _late(self) -> httpx2.ReadTimeout:
            return httpx2.ReadTimeout("the deadline passed while the answer arrived", request=self._request)

        def __iter__(self) -> Iterator[bytes]:
            try:
                for chunk in self._stream:
                    if time.monotonic() >= self._end:
                        raise self._late()
                    yield chunk
            except httpx2.HTTPError as e:  # the watchdog shut the socket down: a timeout, not a lost connection
                if time.monotonic() >= self._end and not isinstance(e, httpx2.TimeoutException):
                    raise self._late() from e
                raise

        def close(self) -> None:
            self._watchdog.cancel()
            self._stream.close()

    return DeadlineStream
