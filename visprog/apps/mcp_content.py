"""What the MCP server's tools take and give: images as file paths or base64 in, MCP content out.

An image argument is a string: the path of an image file (when the server reads paths: a local agent's files),
a ``data:image/...;base64,...`` URL, or the bare base64 of an image file. Paths are read with the CLI's image
loader (:func:`visprog.running.images.load_image`) after a check that they name a regular file: a FIFO, a
device or a socket is refused before anything reads from it. A tool's answer is a ``CallToolResult``: text for
the model to read, the same facts as structured content, and an image result as MCP image content (PNG). An
error is a result with ``isError`` set and visprog's own message, never an exception out of the server.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent

from visprog.apps.console import diagnostic_data
from visprog.apps.run_output import json_value
from visprog.errors import ImageError, ProgramError, StepError, VisprogError
from visprog.language.values import Image
from visprog.llm.masking import mask_secrets

if TYPE_CHECKING:
    from visprog.running.tracing import Trace

__all__ = [
    "IMAGE_HELP",
    "error_result",
    "image_content",
    "read_image",
    "trace_result",
    "trace_steps",
]

#: What an image argument may be (the tools' schemas say it).
IMAGE_HELP = (
    "the image: the path of an image file on the server's machine (absolute, or relative to the server's "
    "working folder), a data:image/...;base64,... URL, or the base64 of an image file (PNG, JPEG, WebP, ...)"
)

#: a bare base64 text: the standard or URL-safe alphabet, padded or not
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)", re.S)
#: shorter than this, a text is taken for a path (the smallest PNG is 67 bytes, 92 characters of base64)
_MIN_BASE64 = 64
_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_image(value: str, name: str, *, allow_paths: bool = True, max_pixels: int | None = None) -> Image:
    """The image an argument names (a path, a data URL or base64) as an RGB image.

    ``name`` is the argument's name, for messages. Raises :class:`~visprog.errors.ImageError` saying what is
    wrong: no such file, not a regular file, not an image, not valid base64, over the pixel limit.
    """
    text = value.strip()
    if not text:
        raise ImageError(f"{name}: no image given (an empty text); {_FORMS}")
    if text.startswith("data:"):
        match = _DATA_URL.fullmatch(text)
        if match is None:
            raise ImageError(f"{name}: a data URL must be data:image/TYPE;base64,DATA (base64 only)")
        return _from_base64(match["data"], name, max_pixels, maybe_path=False)
    compact = "".join(text.split())
    exists = allow_paths and len(text) < 4096 and os.path.lexists(os.path.expanduser(text))
    if not exists and len(compact) >= _MIN_BASE64 and _BASE64.fullmatch(compact):
        return _from_base64(compact, name, max_pixels, maybe_path=allow_paths and "/" in text)
    if not allow_paths:
        raise ImageError(
            f"{name}: this server reads no files (it listens on a network address); send the image as base64 "
            "or as a data:image/...;base64,... URL"
        )
    return _from_path(Path(text).expanduser(), max_pixels)


_FORMS = "give an image file's path, a data:image/...;base64,... URL or the image's base64"


def _from_base64(data: str, name: str, max_pixels: int | None, *, maybe_path: bool) -> Image:
    from visprog.running.images import load_image  # numpy and Pillow: only when an image comes in

    compact = "".join(data.split()).translate(str.maketrans("-_", "+/"))
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        what = "not a file that exists, and not valid base64" if maybe_path else "not valid base64"
        raise ImageError(f"{name}: {what} ({e})") from None
    try:
        return load_image(raw, max_pixels=max_pixels, name=f"{name} (base64)")
    except ImageError as e:
        if maybe_path:  # a long path-like text that decodes as base64 by chance: say both
            raise ImageError(f"{name}: not a file that exists, and its base64 is not an image ({e})") from None
        raise


def _from_path(path: Path, max_pixels: int | None) -> Image:
    """A regular file, opened without blocking (a FIFO with no writer would hang a plain open) and checked
    again once open, so that nothing swapped in between is read."""
    from visprog.running.images import load_image

    label = str(path)
    try:
        _refuse_special(os.stat(path).st_mode, label)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except OSError as e:
        raise ImageError(f"{label}: cannot read file ({e.strerror or e})") from None
    except ValueError as e:  # a NUL character
        raise ImageError(f"{label!r}: not a file path ({e})") from None
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        _refuse_special(info.st_mode, label)
        if info.st_size == 0:
            raise ImageError(f"{label}: not an image Pillow can read (empty file)")
        return load_image(stream, max_pixels=max_pixels, name=label)


def _refuse_special(mode: int, label: str) -> None:
    if stat.S_ISDIR(mode):
        raise ImageError(f"{label}: is a directory, not an image file")
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
        raise ImageError(f"{label}: is {kind}, not an image file; {_FORMS}")


def image_content(image: Image) -> ImageContent:
    """``image`` as MCP image content: PNG, every pixel kept."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ImageContent(type="image", data=base64.b64encode(buffer.getvalue()).decode("ascii"), mime_type="image/png")


def trace_steps(trace: Trace) -> list[dict[str, Any]]:
    """Each step that ran, in program order: its line, variable, module, output (described), time, error."""
    return [
        {
            "line": r.line,
            "target": r.target,
            "module": r.module,
            "output": json_value(r.output) if r.ok else None,
            "seconds": round(r.seconds, 6),
            "batch": r.batch,
            "error": r.error,
        }
        for r in sorted(trace.records, key=lambda r: r.index)
    ]


def trace_result(trace: Trace, *, program: str, extra: Mapping[str, Any] | None = None) -> CallToolResult:
    """A run that ended: the answer (an image as image content), the program and its trace, as text and as
    structured content (``ok``, ``program``, ``result``, ``result_type``, ``steps``, ``seconds`` and ``extra``)."""
    result = trace.result
    is_image = isinstance(result, Image)
    shown = json_value(result)
    data: dict[str, Any] = {
        "ok": True,
        **(extra or {}),
        "program": program.strip(),
        "result": shown,
        "result_type": "image" if is_image else type(result).__name__,
        "steps": trace_steps(trace),
        "seconds": round(trace.seconds, 6),
    }
    lines = [f"result: {shown}" + (" (the image follows)" if is_image else "")]
    if "agreement" in data and data.get("samples", 1) > 1:
        lines.append(f"agreement: {data['agreement']:.0%} of the programs that ran")
    lines += ["", "program:", program.strip(), "", "trace:", trace.to_text()]
    content: list[ContentBlock] = [TextContent(type="text", text="\n".join(lines))]
    if is_image:
        content.append(image_content(result))
    return CallToolResult(content=content, structured_content=data)


def error_result(error: VisprogError, *, program: str | None = None) -> CallToolResult:
    """A tool error (``isError``) with visprog's message: for a program, every diagnostic with its line and
    column; for a failed step, the step and the trace up to it."""
    message = mask_secrets(str(error))
    data: dict[str, Any] = {"ok": False, "error": {"type": type(error).__name__, "message": message}}
    text = f"error: {message}"
    if isinstance(error, ProgramError):
        data["error"]["diagnostics"] = [diagnostic_data(d, "error") for d in error.diagnostics]
        count = len(error.diagnostics)
        text = f"{count} {error.kind}{'s' if count > 1 else ''}:\n{message}"
    trace = error.trace if isinstance(error, StepError) else None
    if isinstance(error, StepError):
        data["error"].update(line=error.line, module=error.module, target=error.target, reason=error.reason)
    if trace is not None:
        data["steps"] = trace_steps(trace)
        text += f"\n\ntrace:\n{trace.to_text()}"
        program = program or trace.source
    if program:
        data["program"] = program.strip()
        text += f"\n\nprogram:\n{program.strip()}"
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data, is_error=True)
