"""Objects between frames at run time: a crop's place, and objects mapped onto the image a step works on.

The checker decides which Objects arguments need mapping (see :mod:`visprog.language.frames`); the
run plan lists them (:class:`~visprog.running.plan.Remap`); these functions do it with the offsets
the crop steps of this run reported, and say what they did in the step's notes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from visprog.language.frames import Cropped, origin
from visprog.language.objects import as_objects
from visprog.language.signatures import ModuleSpec
from visprog.running.plan import Remap

__all__ = ["map_objects", "uncrop"]


def uncrop(
    spec: ModuleSpec | None, output: Any, step: int, offsets: dict[int, tuple[int, int]], notes: list[str]
) -> Any:
    """The image of crop step ``step``'s :class:`Cropped` output; its place goes into ``offsets``.

    Raises ``TypeError`` when the module returned something else.
    """
    name = spec.name if spec is not None else "the module"
    if not isinstance(output, Cropped):
        raise TypeError(
            f"{name} returned {type(output).__name__}, but its return type is Cropped: "
            "return Cropped(crop, (left, top)), the crop and its top-left corner in the image"
        )
    offsets[step] = output.origin
    x, y = output.origin
    cut = spec.frame if spec is not None and spec.frame else "the image"
    notes.append(f"a {output.image.width}x{output.image.height} crop of {cut}, its top-left corner at ({x}, {y})")
    return output.image


def map_objects(
    remaps: Sequence[Remap], arguments: dict[str, Any], offsets: dict[int, tuple[int, int]], notes: list[str]
) -> None:
    """Put the objects of each remapped argument into the frame of the step's image, in place."""
    for m in remaps:
        objects, image = arguments.get(m.arg), arguments.get(m.image)
        if objects is None or not isinstance(image, Image.Image):
            continue
        sx, sy = origin(m.src, offsets)
        dx, dy = origin(m.dst, offsets)
        mapped = as_objects(objects).in_frame((dx - sx, dy - sy), image.size)
        arguments[m.arg] = mapped
        dropped = len(objects) - len(mapped)
        outside = f"; {dropped} of {len(objects)} outside it left out" if dropped else ""
        notes.append(
            f"{m.arg}: the objects of {m.variable}, found on {m.src_name}, mapped onto {m.dst_name} "
            f"(moved by ({sx - dx:+d}, {sy - dy:+d})){outside}"
        )
