"""What every picture visprog draws shares: the packaged font and the label colours."""

from __future__ import annotations

import functools
import importlib.resources
import io

from PIL import ImageFont

__all__ = ["FONT_FILE", "PALETTE", "font"]

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
