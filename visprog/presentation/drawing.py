"""Pictures visprog draws: the packaged font, the label colours, and the one drawing of objects.

:func:`draw_objects` draws boxes, tags and masks for both the ``Tag`` module
and the trace page.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from visprog.language.objects import Detection

__all__ = [
    "FONT_FILE",
    "PALETTE",
    "colour",
    "displayable",
    "draw_objects",
    "font",
    "object_colours",
    "scaled",
    "tag_text",
    "text_colour",
]

#: How objects get their colours: one per object in order, or one per distinct label.
ColourBy = Literal["index", "label"]

#: DejaVu Sans, shipped inside the package (never a system font path).
FONT_FILE = importlib.resources.files("visprog.presentation") / "fonts" / "DejaVuSans.ttf"

#: Distinct colours (Tableau 10), handed out to labels or objects in order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


@functools.lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont:
    """The packaged DejaVu Sans at ``size`` pixels."""
    return ImageFont.truetype(io.BytesIO(FONT_FILE.read_bytes()), size)


def colour(i: int) -> tuple[int, int, int]:
    """The ``i``-th palette colour (the palette repeats)."""
    return PALETTE[i % len(PALETTE)]


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background``."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def tag_text(i: int, obj: Detection) -> str:
    """The tag of the ``i``-th object: its label (``#i+1`` when it has none), with its score when below 1."""
    parts = [obj.label] if obj.label else [f"#{i + 1}"]
    if obj.score < 1:
        parts.append(f"{obj.score:.2f}")
    return " ".join(parts)


def object_colours(objects: Sequence[Detection], by: ColourBy = "index") -> list[tuple[int, int, int]]:
    """Each object's colour: palette colours in order (``by="index"``), or one per distinct label (``"label"``)."""
    if by == "index":
        return [colour(i) for i in range(len(objects))]
    labels: dict[str, int] = {}
    return [colour(labels.setdefault(obj.label, len(labels))) for obj in objects]


def displayable(image: Image.Image) -> Image.Image:
    """The image in a mode that resizes smoothly: RGB, L (grey, 1-bit), or RGBA when it has transparency."""
    if image.mode in ("RGB", "RGBA", "L"):
        return image
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("LA", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    return image.convert("RGB")


def scaled(image: Image.Image, max_side: int | None) -> Image.Image:
    """A copy no larger than ``max_side`` on its longest side (never enlarged; ``None``: full size).

    A palette or 1-bit image that needs no resizing keeps its mode, so PNG stores it exactly.
    """
    if image.mode in ("1", "P") and (max_side is None or max(image.size) <= max_side):
        return image.copy()
    out = displayable(image).copy()
    if max_side is not None:
        out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out


def draw_objects(
    image: Image.Image,
    objects: Sequence[Detection],
    max_side: int | None = None,
    *,
    colour_by: ColourBy = "index",
    masks: bool = True,
) -> Image.Image:
    """A new RGB picture of the image (downscaled to ``max_side``) with each object's box and tag drawn.

    The one drawing of objects, for Tag and the trace page. Colours come from
    :func:`object_colours`; the tag is :func:`tag_text`, above the box when
    there is room, else just inside its top edge. With ``masks``, each
    object's mask is tinted in its colour with its outline drawn (a mask whose
    shape does not match the image is left out). The first (best) object is
    drawn last, on top.
    """
    import numpy as np

    base = scaled(image, max_side).convert("RGB")
    colours = object_colours(objects, colour_by)
    if masks and any(obj.mask is not None for obj in objects):
        overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
        for obj, rgb in zip(objects, colours, strict=True):
            if obj.mask is None or obj.mask.shape != (image.height, image.width):
                continue
            mask = Image.fromarray(obj.mask.astype(np.uint8) * 255, "L")
            mask = mask.resize(base.size, Image.Resampling.BILINEAR)
            overlay.paste(Image.new("RGBA", base.size, (*rgb, 110)), (0, 0), mask)
            edge = mask.point(lambda v: 255 if v >= 128 else 0).filter(ImageFilter.FIND_EDGES)
            overlay.paste(Image.new("RGBA", base.size, (*rgb, 255)), (0, 0), edge)
        out = Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")
    else:
        out = base
    sx, sy = out.width / image.width, out.height / image.height
    draw = ImageDraw.Draw(out)
    short = min(out.size)
    width = max(2, round(short / 170))
    tag_font = font(max(11, round(short / 34)))
    pad = 3
    for i in reversed(range(len(objects))):
        obj, rgb = objects[i], colours[i]
        x0, y0, x1, y1 = obj.box
        bx0 = min(max(round(x0 * sx), 0), out.width - 1)
        by0 = min(max(round(y0 * sy), 0), out.height - 1)
        bx1 = min(max(round(x1 * sx) - 1, bx0), out.width - 1)
        by1 = min(max(round(y1 * sy) - 1, by0), out.height - 1)
        draw.rectangle((bx0, by0, bx1, by1), outline=rgb, width=width)
        text = tag_text(i, obj)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=tag_font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        ty = by0 - th if by0 >= th else by0
        tx = min(bx0, max(0, out.width - tw))
        draw.rectangle((tx, ty, tx + tw - 1, ty + th - 1), fill=rgb)
        draw.text((tx + pad - left, ty + pad - top), text, font=tag_font, fill=text_colour(rgb))
    return out
