"""FaceDet: find faces, with boxes and elliptical masks.

Backends (``--backend FaceDet=NAME``):

- ``cascade``: the LBP frontal-face cascade that scikit-image ships. Fully
  offline, no download, fast on a CPU; frontal faces only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from visprog.registry import module
from visprog.runtime import Context
from visprog.types import Detection, Image, Objects


def _ellipse_mask(box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    w, h = size
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    yy, xx = np.ogrid[:h, :w]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


def _cascade_detector() -> Any:
    from skimage import data, feature

    return feature.Cascade(data.lbp_frontal_face_cascade_filename())


def _cascade(image: Image, ctx: Context) -> list[Detection]:
    detector = ctx.pool.get(("skimage-lbp-frontal-face",), _cascade_detector)
    rgb = np.asarray(image.convert("RGB"))
    w, h = image.size
    short = min(w, h)
    smallest = int(ctx.options.get("min_size", max(24, short // 16)))
    found = detector.detect_multi_scale(
        img=rgb,
        scale_factor=1.2,
        step_ratio=1,
        min_size=(smallest, smallest),
        max_size=(short, short),
        min_neighbor_number=int(ctx.options.get("min_neighbors", 4)),
    )
    out = []
    for d in found:
        x0, y0 = int(d["c"]), int(d["r"])
        x1, y1 = min(x0 + int(d["width"]), w), min(y0 + int(d["height"]), h)
        box = (x0, y0, x1, y1)
        out.append(Detection(box, 1.0, "face", _ellipse_mask(box, (w, h))))
    return sorted(out, key=lambda d: -d.area)


BACKENDS: dict[str, Callable[[Image, Context], list[Detection]]] = {"cascade": _cascade}


@module(aliases=["FACEDET", "FaceDetect", "Faces"], backends={"cascade": None})
def FaceDet(image: Image, ctx: Context) -> Objects:
    """Find the faces in an image, with a box and an elliptical mask for each.

    Args:
        image: the image to search.
    """
    return BACKENDS[ctx.backend](image, ctx)
