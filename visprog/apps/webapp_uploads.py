"""The web app's uploads: every image, however it arrives, goes through one check before it is decoded.

An image reaches the app as a file Gradio saved (an upload, a dropped or
pasted file, an example, a file sent with ``gradio_client``), or as a
``data:`` URL inside a request. :func:`upload_value` turns what Gradio hands
over into what the handlers take: a file's path, a :class:`Pasted` image's
bytes (a ``data:`` URL's, its size checked from the URL's length before a
byte is decoded), or the :class:`Refused` message when it cannot be used.
:func:`load_uploads` then checks each the same way: its size in bytes
against the upload limit, then its width x height against the pixel limit,
read from the header (:func:`visprog.running.images.load_image`), and only
then decodes it.

The page's script refuses in the browser a file over Gradio's own upload limit
(the same limit): it hands on, in its place, a few bytes that say its size
(:data:`OVER_LIMIT`), and the app answers with its own message rather than
Gradio's.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from visprog.errors import ImageError, VisprogError
from visprog.language.values import Image

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "OVER_LIMIT",
    "ImagePath",
    "Pasted",
    "Refused",
    "data_url_image",
    "load_uploads",
    "upload_value",
]

#: Largest uploaded file accepted, in bytes.
DEFAULT_MAX_UPLOAD_BYTES = 20_000_000

#: What the page's script uploads in place of a file over the upload limit, followed by the file's size.
OVER_LIMIT = b"visprog: over the upload limit: "

_OVER_LIMIT = re.compile(re.escape(OVER_LIMIT) + rb"(\d{1,20})\s*")
_DATA_URL = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),", re.IGNORECASE)


class Refused(VisprogError):
    """A request the app will not run (no image, a file too large, ...): the title and message the user sees.

    ``uploads`` is set when uploading (another) image is the remedy.
    """

    def __init__(self, title: str, message: str = "", *, uploads: bool = False) -> None:
        super().__init__(f"{title}: {message}" if message else title)
        self.title = title
        self.message = message
        self.uploads = uploads


@dataclass(frozen=True)
class Pasted:
    """An image that came as a ``data:`` URL: its bytes (not decoded yet) and what to call it."""

    name: str
    data: bytes = b""

    def __repr__(self) -> str:
        return f"Pasted({self.name!r}, {len(self.data)} bytes)"


#: An upload as the handlers take it: a file's path, a pasted image, a refusal, or nothing.
ImagePath = str | os.PathLike[str] | Pasted | Refused | None


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def _too_large(slot: str, size: int, limit: int, what: str = "file") -> Refused:
    return Refused(
        f"{slot}: the {what} is too large",
        f"The {what} is {_megabytes(size)}; the limit is {_megabytes(limit)} per image.",
        uploads=True,
    )


def data_url_image(url: str, slot: str, *, max_upload_bytes: int, name: str | None = None) -> Pasted:
    """The bytes of the image in the ``data:`` URL ``url``, for the upload ``slot`` (``IMAGE``).

    Raises :class:`Refused` for a URL that is not a base64 ``data:`` URL, and for one whose image would be
    over ``max_upload_bytes``: that is known from the URL's length, before anything is decoded.
    """
    label = name or "pasted image"
    head = _DATA_URL.match(url[:1000])
    if head is None or ";base64" not in head.group(2).lower():
        raise Refused(
            f"{slot}: the image cannot be used",
            f"{label}: a data: URL must hold the image in base64 (data:image/png;base64,...)",
            uploads=True,
        )
    text = url[head.end() :]
    if len(text) * 3 // 4 > max_upload_bytes + 3:
        raise _too_large(slot, len(text) * 3 // 4, max_upload_bytes, "image")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(
            f"{slot}: the image cannot be used", f"{label}: its data: URL is not valid base64", uploads=True
        ) from None
    if len(data) > max_upload_bytes:
        raise _too_large(slot, len(data), max_upload_bytes, "image")
    return Pasted(label, data)


def upload_value(payload: Any, slot: str, *, max_upload_bytes: int) -> ImagePath:
    """What the handlers get for Gradio's image ``payload`` in ``slot``: never decoded here, never raising.

    A file Gradio saved: its path (read by :func:`load_uploads`). A ``data:`` URL: a :class:`Pasted`
    image (:func:`data_url_image`). Nothing: None. Anything else, and a ``data:`` URL that cannot be used:
    the :class:`Refused` message, which :func:`load_uploads` raises.
    """
    if payload is None:
        return None
    url = str(getattr(payload, "url", None) or "")
    if url[:5].lower() == "data:":
        name = getattr(payload, "orig_name", None)
        try:
            return data_url_image(url, slot, max_upload_bytes=max_upload_bytes, name=name if name else None)
        except Refused as e:
            return e
    path = getattr(payload, "path", None)
    if not path:
        return Refused(f"{slot}: the image cannot be used", "the request named no file and held no image")
    return str(path)


#: The longest file that may be the page's note of a file over the limit.
_NOTE_BYTES = len(OVER_LIMIT) + 24


def _claimed_size(path: str | os.PathLike[str]) -> int | None:
    """The size the page's script wrote in place of a file over the limit (:data:`OVER_LIMIT`), if it did."""
    try:
        with open(path, "rb") as f:
            match = _OVER_LIMIT.fullmatch(f.read(_NOTE_BYTES))
    except OSError:
        return None
    return int(match.group(1)) if match else None


def load_uploads(
    images: Mapping[str, ImagePath],
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
) -> dict[str, Image]:
    """Load the uploads (``{"IMAGE": path}``; ``None`` for none) as RGB images.

    Each is a file's path or a :class:`Pasted` image (a :class:`Refused` one is raised). Raises
    :class:`Refused` for one over ``max_upload_bytes``, or one that cannot be read or is over
    ``max_pixels`` (checked from the header, before decoding). A file is read as the CLI reads it
    (:func:`visprog.running.images.load_image`), and the message is the CLI's, naming the file as
    uploaded: ``notes.txt: not an image Pillow can read``.
    """
    from visprog.running.images import load_image

    loaded: dict[str, Image] = {}
    for name, path in images.items():
        if path is None or path == "":
            continue
        if isinstance(path, Refused):
            raise path
        source: bytes | str | os.PathLike[str]
        if isinstance(path, Pasted):
            size, source, label = len(path.data), path.data, path.name
        else:
            try:
                size = os.path.getsize(path)
            except OSError as e:
                raise Refused(f"{name}: the uploaded file cannot be read", e.strerror or str(e), uploads=True) from e
            claimed = _claimed_size(path) if size <= _NOTE_BYTES else None
            if claimed is not None and claimed > max_upload_bytes:
                size = claimed
            source, label = path, os.path.basename(os.fspath(path)) or name
        if size > max_upload_bytes:
            raise _too_large(name, size, max_upload_bytes)
        try:
            loaded[name] = load_image(source, max_pixels=max_pixels, name=label)
        except ImageError as e:
            if "pixels" in str(e) and "limit" in str(e):
                raise Refused(f"{name}: the image has too many pixels", str(e), uploads=True) from e
            raise Refused(f"{name}: the image cannot be used", str(e), uploads=True) from e
    return loaded
