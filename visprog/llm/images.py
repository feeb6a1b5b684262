"""Images a multimodal chat model sees: downscaled, JPEG-encoded, sent as OpenAI ``image_url`` content parts.

A chat message's ``content`` is a string, or a list of parts::

    [{"type": "text", "text": "Question: ..."},
     {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}]

:func:`image_part` makes the second kind from an image whose longer side is
cut to at most ``side`` pixels (never enlarged); :func:`pixels_digest` names
what was sent, for plan-cache keys; :func:`has_images` tells a client that a
request carries images. The settings ``see_image`` and ``see_image_side`` are
checked by :func:`check_see_image` and :func:`check_side`.

Nothing here imports Pillow at import time.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from visprog.errors import ConfigError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "DEFAULT_SIDE",
    "JPEG_QUALITY",
    "MIN_SIDE",
    "SEE_IMAGE_HINT",
    "check_see_image",
    "check_side",
    "downscale",
    "has_images",
    "image_part",
    "jpeg_data_url",
    "pixels_digest",
]

#: The longest side, in pixels, of an image sent to the model when none is set.
DEFAULT_SIDE = 512
#: The smallest ``see_image_side`` accepted: below it nothing in a photo can be told apart.
MIN_SIDE = 16
#: The JPEG quality of images sent to the model.
JPEG_QUALITY = 90
#: How the settings that send images are spelled, as errors name them.
SEE_IMAGE_HINT = "--see-image, [llm] see_image"
_SIDE_HINT = "--see-image-side, [llm] see_image_side"


def check_see_image(value: Any, source: str = "planner") -> bool:
    """``value`` if it is a bool; else a :class:`ConfigError` naming the setting and ``source``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: see_image ({SEE_IMAGE_HINT}) must be true or false, got {value!r}")
    return value


def check_side(value: Any, source: str = "planner") -> int:
    """``value`` if it is a whole number of pixels, at least :data:`MIN_SIDE`; else a :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_SIDE:
        raise ConfigError(
            f"{source}: see_image_side ({_SIDE_HINT}) must be a whole number of pixels, at least {MIN_SIDE} "
            f"(the longer side of an image sent to the model), got {value!r}"
        )
    return value


def downscale(image: Image, side: int) -> Image:
    """``image`` as 8-bit RGB with its longer side at most ``side`` pixels (aspect kept; never enlarged)."""
    from PIL import Image as PILImage

    from visprog.running.images import to_rgb

    if not isinstance(image, PILImage.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    rgb = to_rgb(image)
    if max(rgb.size) > side:
        rgb.thumbnail((side, side), PILImage.Resampling.LANCZOS)
    return rgb


def jpeg_data_url(image: Image) -> str:
    """``image`` (RGB) as a ``data:image/jpeg;base64,...`` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_part(image: Image) -> dict[str, Any]:
    """An OpenAI ``image_url`` content part holding ``image`` (already downscaled) as a JPEG data URL."""
    return {"type": "image_url", "image_url": {"url": jpeg_data_url(image)}}


def pixels_digest(images: Iterable[tuple[str, Image]]) -> str:
    """A hex SHA-256 over each (name, image) pair: the name, the size and the RGB pixels, in order."""
    digest = hashlib.sha256()
    for name, image in images:
        for part in (name.encode("utf-8"), f"{image.width}x{image.height}:{image.mode}".encode(), image.tobytes()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def has_images(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any message's content holds a part that is not text (an image)."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            not (isinstance(part, Mapping) and part.get("type") == "text") for part in content
        ):
            return True
    return False
