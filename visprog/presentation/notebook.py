"""Images in a notebook: :func:`show` puts several side by side as one small PNG."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["contact_sheet", "show"]


def contact_sheet(*images: Any, height: int = 256, gap: int = 8) -> Any:
    """Images side by side on white, each scaled to ``height`` pixels, ``gap`` pixels apart, as one PIL image.

    Accepts PIL images and numpy arrays (a boolean array, such as a mask, is white where it is True).
    """
    from PIL import Image as PILImage

    if not images:
        raise ValueError("contact_sheet: give at least one image")
    if height < 1 or gap < 0:
        raise ValueError(f"contact_sheet: height must be at least 1 and gap 0 or more, got {height} and {gap}")
    pictures = [_picture(im) for im in images]
    pictures = [p.convert("RGB").resize((max(1, round(p.width * height / p.height)), height)) for p in pictures]
    sheet = PILImage.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1), height), "white")
    x = 0
    for p in pictures:
        sheet.paste(p, (x, 0))
        x += p.width + gap
    return sheet


def show(*images: Any, height: int = 256, gap: int = 8) -> Any:
    """Images side by side, scaled to one height, as a single PNG (small, so saved notebooks stay light).

    Accepts PIL images and numpy arrays (a boolean array, such as a mask, shows white where it is
    True); returns an ``IPython.display.Image`` (IPython comes with Jupyter).
    """
    from IPython.display import Image as DisplayImage

    buffer = io.BytesIO()
    contact_sheet(*images, height=height, gap=gap).save(buffer, format="PNG", optimize=True)
    return DisplayImage(data=buffer.getvalue(), format="png")


def _picture(image: Any) -> Any:
    import numpy as np
    from PIL import Image as PILImage

    if isinstance(image, PILImage.Image):
        return image
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return PILImage.fromarray(array)
