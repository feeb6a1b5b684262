"""Frames: which pixels an image's coordinates refer to, so objects land where they were found.

Every image a program handles has a frame. An input image is a frame of its
own. A crop of an image is a window into that image's frame at an offset. An
edit of an image (colour pop, blur, emoji, tags) keeps the frame of the image
it edits. Objects are in the frame of the image they were found on.

The checker works out each image's and each object list's :class:`Frame`
from the program alone: its *root* (the input it comes from) and its *path*
(the crop steps between that input and it). Objects used with an image of
another root (the objects of ``LEFT`` drawn on ``RIGHT``) are a check error.
Objects used with an image of the same root but another path (found on a
crop, drawn on the whole image, or the other way round) are mapped between
the two at run time: a crop module returns :class:`Cropped`, the crop with
the position of its top-left corner in the image it was cut from, and the
interpreter adds these offsets along each path (:func:`origin`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image as _PILImage

from visprog.errors import RegistrationError

__all__ = ["Cropped", "Frame", "frame_param", "origin"]


@dataclass(frozen=True)
class Cropped:
    """What a crop module returns: the crop, and where its top-left corner lies in the image it was cut from.

    Annotate a module's return type with ``Cropped`` to declare it a crop: in a program its
    value is the image (``image``), and objects found on either image can be used on the other.
    ``origin`` is (x, y) in whole pixels of the image given to the module.
    """

    image: _PILImage.Image
    origin: tuple[int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.image, _PILImage.Image):
            raise TypeError(f"Cropped.image must be a PIL image, got {type(self.image).__name__}")
        ox, oy = self.origin
        if not (isinstance(ox, int) and isinstance(oy, int)) or isinstance(ox, bool) or isinstance(oy, bool):
            raise TypeError(f"Cropped.origin is whole pixels (x, y), got {self.origin!r}")


@dataclass(frozen=True)
class Frame:
    """A frame as the checker knows it: the input it comes from and the crop steps since.

    ``root`` is the input's name; ``path`` the indices of the crop steps, outermost first.
    Two frames with the same root are related (objects map between them); others are not.
    """

    root: str
    path: tuple[int, ...] = ()

    def crop(self, step: int) -> Frame:
        """The frame of a crop of this frame's image, made by step ``step``."""
        return Frame(self.root, (*self.path, step))

    def related(self, other: Frame) -> bool:
        return self.root == other.root

    def describe(self, targets: Mapping[int, str]) -> str:
        """``LEFT``, or ``IMAGE0, a crop of LEFT`` (``targets``: step index -> the variable it assigns)."""
        if not self.path:
            return self.root
        return f"{targets.get(self.path[-1], '?')}, a crop of {self.root}"


def origin(path: tuple[int, ...], offsets: Mapping[int, tuple[int, int]]) -> tuple[int, int]:
    """Where the top-left corner of the image at the end of ``path`` lies in its root input,
    from each crop step's offset in the image it cut (``offsets``: step index -> (x, y))."""
    x = y = 0
    for step in path:
        dx, dy = offsets[step]
        x += dx
        y += dy
    return x, y


def frame_param(where: str, images: list[str], frame: str | None, crops: bool) -> str | None:
    """The Image parameter a module works in: ``frame=`` when given (checked against ``images``, its
    Image parameters), else its only Image parameter. ``where`` names the module in errors."""
    if frame is not None:
        if frame not in images:
            raise RegistrationError(
                f"{where}: frame= names {frame!r}, which is not one of its Image parameters "
                f"({', '.join(images) or 'it has none'})"
            )
        return frame
    if len(images) == 1:
        return images[0]
    if crops:
        raise RegistrationError(
            f"{where}: a module that returns Cropped needs one Image parameter, or frame= naming the image it crops"
        )
    return None
