"""Pictures embedded in a page: each as a ``data:`` URI, in the format that suits it.

With ``auto`` (the default) photographs are JPEG (quality :data:`JPEG_QUALITY`)
and PNG is used for what JPEG would spoil or not shrink: transparency, masks
(1-bit images), palette images, and small or flat pictures whose PNG is the
smaller. ``png`` embeds every picture losslessly, ``jpeg`` every picture
without transparency as JPEG.
"""

from __future__ import annotations

import base64
import io
from typing import Literal, NamedTuple

from PIL import Image as PILImage

from visprog.presentation.drawing import displayable

__all__ = ["FORMATS", "IMAGE_FORMAT", "JPEG_QUALITY", "ImageFormat", "Picture", "encode", "picture"]

#: How pictures are embedded: ``auto`` (JPEG or PNG, per picture), ``jpeg`` or ``png``.
ImageFormat = Literal["auto", "jpeg", "png"]
#: The default :data:`ImageFormat`.
IMAGE_FORMAT: ImageFormat = "auto"
#: JPEG quality of embedded photographs.
JPEG_QUALITY = 85
#: With ``auto``, a picture of at most this many pixels is encoded both ways and the smaller kept.
_SMALL_PIXELS = 256 * 256
#: With ``auto``, a picture of at most this many colours (a mask, a diagram) is also tried as PNG.
_FEW_COLOURS = 256
FORMATS = ("auto", "jpeg", "png")


def _png_bytes(image: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(image: PILImage.Image, *, annotated: bool) -> bytes:
    """JPEG at :data:`JPEG_QUALITY`; ``annotated`` pictures keep full colour resolution (4:4:4).

    Halving the colour resolution (4:2:0, the usual for photographs) smears the
    colour of thin boxes and labels, which is what tells the objects apart.
    """
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True, subsampling=0 if annotated else 2)
    return buf.getvalue()


def encode(image: PILImage.Image, image_format: ImageFormat, *, source_mode: str, annotated: bool) -> tuple[str, bytes]:
    """(MIME type, bytes) of ``image`` (a picture as shown) as it is embedded.

    ``auto``: PNG for transparency, 1-bit images (masks, also when resized)
    and palette images shown at their own size; JPEG for other pictures,
    except that small pictures, flat ones (at most :data:`_FEW_COLOURS`
    colours: masks, graphics) and resized palette images (``source_mode``) are
    encoded both ways and the smaller kept. ``annotated``: boxes and labels are
    drawn on it.
    """
    if image_format == "png":
        return "image/png", _png_bytes(image)
    if image_format == "jpeg" and image.mode in ("1", "P"):
        image = displayable(image)
    if image.mode not in ("RGB", "L") or (image_format == "auto" and source_mode == "1"):
        # transparency (JPEG would lose it), a palette image, a mask
        return "image/png", _png_bytes(image)
    jpeg = _jpeg_bytes(image, annotated=annotated)
    if image_format == "auto" and (
        image.width * image.height <= _SMALL_PIXELS or source_mode == "P" or image.getcolors(_FEW_COLOURS) is not None
    ):
        png = _png_bytes(image)
        if len(png) <= len(jpeg):
            return "image/png", png
    return "image/jpeg", jpeg


class Picture(NamedTuple):
    """An embedded picture: its ``data:`` URI, its size on the page and the size it was drawn from."""

    src: str
    width: int
    height: int
    source_width: int
    source_height: int

    @property
    def downscaled(self) -> bool:
        return (self.width, self.height) != (self.source_width, self.source_height)


def picture(
    shown: PILImage.Image, source: PILImage.Image, image_format: ImageFormat, *, annotated: bool = False
) -> Picture:
    mime, raw = encode(shown, image_format, source_mode=source.mode, annotated=annotated)
    src = f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")
    return Picture(src, shown.width, shown.height, source.width, source.height)
