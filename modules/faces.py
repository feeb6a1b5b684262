"""FaceDet: find faces, with boxes and elliptical masks.

Backends (``--backend FaceDet=NAME``):

- ``yunet`` (default): OpenCV's YuNet face detector (``cv2.FaceDetectorYN``,
  in opencv-python-headless), a 230 kB ONNX model from the Hugging Face Hub
  repo ``opencv/face_detection_yunet``. Runs on the CPU through OpenCV; finds
  frontal and turned faces from about 10 pixels up. ``--model FaceDet=...``
  takes another hub repo holding the same file, a YuNet ``.onnx`` file, or a
  folder with one. Options: ``score_threshold`` (0.7), ``nms_threshold``
  (0.3), ``top_k`` (5000).
- ``cascade``: the LBP frontal-face cascade that scikit-image ships. Fully
  offline, no download, fast on a CPU; frontal faces only. Options:
  ``min_size`` (pixels), ``min_neighbors`` (4).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visprog.errors import ModelUnavailableError
from visprog.language.signatures import Option, module
from visprog.language.values import Detection, Image, Objects
from visprog.running.hub import Placement, fetch_command, load_model
from visprog.running.runtime import Context

if TYPE_CHECKING:  # numpy is imported by the functions that use it: loading the module stays cheap
    import numpy as np

#: The Hub repo with OpenCV's YuNet model, and the file in it that the ``yunet`` backend loads.
YUNET_REPO = "opencv/face_detection_yunet"
YUNET_FILE = "face_detection_yunet_2023mar.onnx"


def _ellipse_mask(box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    import numpy as np

    w, h = size
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    yy, xx = np.ogrid[:h, :w]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


def _faces(boxes: Objects, size: tuple[int, int]) -> Objects:
    """Faces of whole-pixel boxes: clipped to the image, each with the ellipse in its box as mask, best first."""
    faces = Objects()
    for d in boxes.clipped(size):
        box = d.int_box()
        faces.append(Detection(box, d.score, d.label, _ellipse_mask(box, size)))
    return faces.best_first()


# --- cascade --------------------------------------------------------------------


def _cascade_detector() -> Any:
    from skimage import data, feature

    return feature.Cascade(data.lbp_frontal_face_cascade_filename())


def _cascade(image: Image, ctx: Context) -> Objects:
    import numpy as np

    detector = ctx.pool.get(("skimage-lbp-frontal-face",), _cascade_detector)
    rgb = np.asarray(image.convert("RGB"))
    w, h = image.size
    short = min(w, h)
    min_size = ctx.option("min_size")
    smallest = max(24, short // 16) if min_size is None else int(min_size)
    found = detector.detect_multi_scale(
        img=rgb,
        scale_factor=1.2,
        step_ratio=1,
        min_size=(smallest, smallest),
        max_size=(short, short),
        min_neighbor_number=int(ctx.option("min_neighbors")),
    )
    boxes = Objects()
    for d in found:
        x0, y0 = int(d["c"]), int(d["r"])
        boxes.append(Detection((x0, y0, x0 + int(d["width"]), y0 + int(d["height"])), 1.0, "face"))
    return _faces(boxes, (w, h))


# --- yunet ----------------------------------------------------------------------


def _looks_like_path(model_id: str) -> bool:
    """Whether ``--model`` names a local file or folder rather than a hub repo ('owner/name')."""
    return (
        model_id.lower().endswith(".onnx")
        or os.path.isabs(model_id)
        or model_id.startswith((".", "~"))
        or model_id.count("/") != 1
        or os.path.exists(model_id)
    )


def yunet_model_file(model_id: str) -> str:
    """The YuNet ``.onnx`` file for a hub repo id (downloaded or cached), a file, or a folder.

    A folder must hold ``face_detection_yunet_2023mar.onnx`` or exactly one
    ``.onnx`` file. Raises :class:`~visprog.errors.ModelUnavailableError` for
    a path that does not exist, ``FileNotFoundError`` for a folder with no
    usable file, and the Hugging Face errors for a repo that cannot be fetched.
    """
    if _looks_like_path(model_id):
        path = Path(model_id).expanduser()
        if path.is_file():
            return str(path)
        if path.is_dir():
            if (path / YUNET_FILE).is_file():
                return str(path / YUNET_FILE)
            found = sorted(path.glob("*.onnx"))
            if len(found) == 1:
                return str(found[0])
            names = ", ".join(p.name for p in found) or "none"
            raise FileNotFoundError(f"expected {YUNET_FILE} or a single .onnx file in {path}, found: {names}")
        raise ModelUnavailableError(
            "FaceDet",
            model_id,
            "no such file or folder; the yunet backend takes a hub repo id, a YuNet .onnx file or a folder with one",
            fetch_command("FaceDet", YUNET_REPO),
        )
    from huggingface_hub import hf_hub_download

    return str(hf_hub_download(repo_id=model_id, filename=YUNET_FILE))


def _yunet_detector(model_id: str, placement: Placement) -> Any:
    import cv2

    # The input size and thresholds are set again before every detection.
    return cv2.FaceDetectorYN.create(yunet_model_file(model_id), "", (320, 320), 0.7, 0.3, 5000)


def _yunet(image: Image, ctx: Context) -> Objects:
    import numpy as np

    detector = load_model(ctx, _yunet_detector, on_device=False)
    w, h = image.size
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    detector.setInputSize((w, h))
    detector.setScoreThreshold(float(ctx.option("score_threshold")))
    detector.setNMSThreshold(float(ctx.option("nms_threshold")))
    detector.setTopK(int(ctx.option("top_k")))
    _, faces = detector.detect(bgr)
    boxes = Objects()
    # Each row: x, y, width, height, five (x, y) landmarks (eyes, nose tip, mouth corners), score.
    for row in [] if faces is None else faces:
        x, y, fw, fh = (float(v) for v in row[:4])
        x0, y0, x1, y1 = round(x), round(y), round(x + fw), round(y + fh)
        boxes.append(Detection((x0, y0, max(x0, x1), max(y0, y1)), min(max(float(row[14]), 0.0), 1.0), "face"))
    return _faces(boxes, (w, h))


BACKENDS: dict[str, Callable[[Image, Context], Objects]] = {"yunet": _yunet, "cascade": _cascade}


#: FaceDet's options (``[modules.FaceDet]`` in the config file, ``--option FaceDet.NAME=VALUE``).
OPTIONS = [
    Option("score_threshold", float, 0.7, "yunet: the score a face needs"),
    Option("nms_threshold", float, 0.3, "yunet: faces overlapping a better one by more than this IoU are dropped"),
    Option("top_k", int, 5000, "yunet: at most this many candidates before suppression"),
    Option("min_size", int, None, "cascade: the smallest face in pixels (default: 1/16 of the shorter side, >= 24)"),
    Option("min_neighbors", int, 4, "cascade: how many overlapping detections a face needs"),
]


@module(
    aliases=["FACEDET", "FaceDetect", "Faces"],
    suggest_for=["FACE_DETECTION", "DETECT_FACE", "DETECT_FACES", "FIND_FACES"],
    backends={"yunet": YUNET_REPO, "cascade": None},
    default_backend="yunet",
    options=OPTIONS,
)
def FaceDet(image: Image, ctx: Context) -> Objects:
    """Find the faces in an image, with a box and an elliptical mask for each.

    Args:
        image: the image to search.
    """
    return BACKENDS[ctx.backend](image, ctx)
