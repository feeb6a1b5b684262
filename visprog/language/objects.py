"""The language's vision data: a :class:`Detection` and :class:`Objects`, a list of them with its operations.

Every operation on found objects lives here, once: non-maximum suppression
(:meth:`Objects.nms`), the union of their regions (:meth:`Objects.union_mask`),
best-first order (:meth:`Objects.best_first`), clipping to an image
(:meth:`Objects.clipped`) and mapping into another frame, such as a crop
(:meth:`Objects.in_frame`). Boxes are (x0, y0, x1, y1) in pixels with
exclusive ends; masks are boolean (height, width) arrays of the image.

numpy is imported inside the functions that need it: checking a program never does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Detection", "Objects", "as_objects", "nms_indices"]

#: A size in pixels: (width, height).
Size = tuple[int, int]


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected object: a box in pixels (x0, y0, x1, y1), a score, a label, an optional mask.

    ``mask`` is a boolean array of the image's height and width.
    """

    box: tuple[float, float, float, float]
    score: float = 1.0
    label: str = ""
    mask: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.box) != 4:
            raise ValueError(f"Detection box needs 4 numbers (x0, y0, x1, y1), got {self.box!r}")
        x0, y0, x1, y1 = (float(v) for v in self.box)
        if not (x1 >= x0 and y1 >= y0):
            raise ValueError(f"Detection box must have x1 >= x0 and y1 >= y0, got {self.box!r}")
        object.__setattr__(self, "box", (x0, y0, x1, y1))
        object.__setattr__(self, "score", float(self.score))
        if self.mask is not None:
            import numpy as np

            mask = np.asarray(self.mask)
            if mask.ndim != 2:
                raise ValueError(f"Detection mask must be 2-D (height, width), got shape {mask.shape}")
            object.__setattr__(self, "mask", mask.astype(bool, copy=False))

    @classmethod
    def from_mask(cls, mask: np.ndarray, score: float = 1.0, label: str = "") -> Detection:
        """The object a mask covers, boxed by the mask's bounding box (exclusive ends).

        Raises ``ValueError`` for a mask with no pixel set.
        """
        import numpy as np

        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"Detection mask must be 2-D (height, width), got shape {mask.shape}")
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            raise ValueError("an empty mask has no box")
        cols = np.flatnonzero(mask.any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        return cls(box, score, label, mask)

    @property
    def area(self) -> float:
        """The box's area in square pixels."""
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def size(self) -> float:
        """How large the object is: its mask's pixel count, else its box's area."""
        return float(self.mask.sum()) if self.mask is not None else self.area

    def int_box(self, size: Size | None = None) -> tuple[int, int, int, int]:
        """The box rounded to whole pixels, clipped to ``size`` (width, height) when given."""
        x0, y0, x1, y1 = (round(v) for v in self.box)
        if size is not None:
            w, h = size
            x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
            y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
        return (x0, y0, x1, y1)

    def region(self, size: Size) -> np.ndarray:
        """The object's pixels as a boolean (height, width) array: its mask, else its box."""
        w, h = size
        if self.mask is not None:
            if self.mask.shape != (h, w):
                raise ValueError(f"mask of shape {self.mask.shape} does not match an image of {w}x{h}")
            return self.mask
        import numpy as np

        out = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = self.int_box(size)
        out[y0:y1, x0:x1] = True
        return out

    def with_label(self, label: str, score: float | None = None) -> Detection:
        return Detection(self.box, self.score if score is None else score, label, self.mask)


def nms_indices(boxes: Any, scores: Any, iou: float) -> list[int]:
    """Indices of the boxes greedy non-maximum suppression keeps, best score first.

    ``boxes`` is anything numpy reads as (N, 4) xyxy, ``scores`` as (N,).
    Boxes are visited by score, highest first (equal scores in the given
    order); a box is dropped when its IoU with a kept box is greater than
    ``iou``, so ``iou >= 1`` keeps every box. Computed in float32, like
    ``torchvision.ops.nms``, whose contract this is.
    """
    import numpy as np

    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"nms needs one score per box, got {len(b)} boxes and {len(s)} scores")
    order = np.argsort(-s, kind="stable")
    b = b[order]
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    eps = np.finfo(np.float32).eps
    suppressed = np.zeros(len(b), dtype=bool)
    keep: list[int] = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        wh = np.clip(np.minimum(b[i, 2:], b[:, 2:]) - np.maximum(b[i, :2], b[:, :2]), 0, None)
        inter = wh[:, 0] * wh[:, 1]
        suppressed |= inter / np.maximum(area[i] + area - inter, eps) > iou
    return [int(k) for k in order[keep]]


class Objects(list[Detection]):
    """The language's object list: detections, best first, with the operations programs need.

    A ``list`` of :class:`Detection`, so indexing, ``len`` and iteration work
    as on any list; the operations return new ``Objects`` and never change
    this one or its detections.
    """

    __slots__ = ()

    def best_first(self) -> Objects:
        """The objects by score, highest first; among equal scores the larger first
        (:attr:`Detection.size`: mask pixels, else box area); otherwise in their order."""
        scores = [d.score for d in self]
        if len(set(scores)) == len(scores):
            return Objects(sorted(self, key=lambda d: -d.score))
        return Objects(sorted(self, key=lambda d: (-d.score, -d.size)))

    def nms(self, iou: float) -> Objects:
        """The objects left by non-maximum suppression on their boxes, best first.

        Objects are visited best first (:meth:`best_first`); one is dropped when
        its box overlaps a kept object's box with an IoU greater than ``iou``
        (labels are not looked at). ``iou >= 1`` keeps every object.
        """
        ordered = self.best_first()
        keep = nms_indices([d.box for d in ordered], [d.score for d in ordered], iou)
        return Objects(ordered[i] for i in keep)

    def union_mask(self, size: Size) -> np.ndarray:
        """The union of the objects' regions (masks, else boxes) on an image of ``size`` (width, height).

        A boolean (height, width) array; all False when there are no objects.
        """
        import numpy as np

        w, h = size
        mask = np.zeros((h, w), dtype=bool)
        for obj in self:
            mask |= obj.region(size)
        return mask

    def clipped(self, size: Size) -> Objects:
        """The objects with their boxes clipped to an image of ``size`` (width, height).

        Objects whose clipped box has no area (outside the image, or no wider
        or higher than a line) are dropped. Masks are kept as they are.
        """
        w, h = size
        out = Objects()
        for d in self:
            x0, y0, x1, y1 = d.box
            box = (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))
            if box[2] > box[0] and box[3] > box[1]:
                out.append(d if box == d.box else replace(d, box=box))
        return out

    def in_frame(self, origin: tuple[int, int], size: Size) -> Objects:
        """The objects in another frame: one whose top-left corner is at ``origin`` (x, y) in this one,
        ``size`` (width, height) large.

        Onto a crop taken at (left, top): ``objects.in_frame((left, top), crop.size)``; from the crop
        back onto the image: ``objects.in_frame((-left, -top), image.size)``. Boxes move and are
        clipped to the new frame (objects left with no area are dropped); masks move with them,
        cut or padded to the new frame's size.
        """
        dx, dy = origin
        if not (isinstance(dx, int) and isinstance(dy, int)):
            raise TypeError(f"a frame's origin is whole pixels (x, y), got {origin!r}")
        w, h = size
        moved = Objects()
        for d in self:
            x0, y0, x1, y1 = d.box
            box = (x0 - dx, y0 - dy, x1 - dx, y1 - dy)
            moved.append(Detection(box, d.score, d.label, _moved_mask(d.mask, dx, dy, w, h)))
        return moved.clipped(size)


def _moved_mask(mask: np.ndarray | None, dx: int, dy: int, w: int, h: int) -> np.ndarray | None:
    """``mask`` seen from a frame of (w, h) whose corner is at (dx, dy) in the mask's frame."""
    if mask is None:
        return None
    import numpy as np

    out = np.zeros((h, w), dtype=bool)
    mh, mw = mask.shape
    sx0, sy0 = max(dx, 0), max(dy, 0)
    sx1, sy1 = min(dx + w, mw), min(dy + h, mh)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - dy : sy1 - dy, sx0 - dx : sx1 - dx] = mask[sy0:sy1, sx0:sx1]
    return out


def as_objects(values: Iterable[Detection]) -> Objects:
    """``values`` as :class:`Objects`: the same object when it is one, else a new list of its detections."""
    return values if isinstance(values, Objects) else Objects(values)
