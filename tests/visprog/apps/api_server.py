"""The HTTP API on an ephemeral port of 127.0.0.1 (uvicorn in a thread), for tests over real HTTP."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from PIL import Image as PILImage

__all__ = ["png_base64", "png_bytes", "serve_api", "sse_events"]


@contextlib.contextmanager
def serve_api(app: Any) -> Iterator[str]:
    """Serve ``app`` while the block runs; yields its base URL. The server and its batcher stop after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def png_bytes(size: tuple[int, int] = (64, 48), colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def png_base64(size: tuple[int, int] = (64, 48), colour: str = "red") -> str:
    return base64.b64encode(png_bytes(size, colour)).decode("ascii")


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event name, data) of each event of a ``text/event-stream`` body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((fields.get("event", "message"), fields.get("data", "")))
    return out
