"""Mask: the pixel mask of each object's box, with SAM (Grounded-SAM is ``Loc`` followed by ``Mask``).

Loc, FaceDet or any module that finds objects gives boxes; Mask prompts
Segment Anything with each box and gives the object SAM's mask for it, so
Replace, ColorPop, BgBlur and Select work on the object's outline rather
than its box.

Backends (``--backend Mask=NAME``, model with ``--model Mask=ID``):

- ``sam`` (default, ``facebook/sam-vit-base``): transformers' SAM. The boxes
  are prompts for SAM's prompt encoder and mask decoder, on the image
  embedding of :func:`~visprog.modules.segmentation.sam_image_embedding`:
  computed once per image per run and shared with Seg and every other Mask
  step on that image that use the same checkpoint (give Seg and Mask the same
  ``--model`` to share it). All the boxes on one image go through the decoder
  in one call, those of several Mask steps that are ready together included.
- ``segment-anything``: the original package's ``SamPredictor`` on a ``.pth``
  checkpoint (``--model Mask=FILE.pth``), one box prompt per object; it needs a
  real torchvision (``requirements-original.txt``); see
  :mod:`~visprog.modules.sam_original`.

A backend is a function ``(ctx, image, boxes)`` that returns one boolean
(height, width) mask per box, the boxes (x0, y0, x1, y1) in the image's
pixels; :data:`BACKENDS` maps each backend's name to it.

Options (``[modules.Mask]`` in the config file, ``--option Mask.NAME=VALUE``):

- ``multimask`` (false): SAM predicts three masks per box and the one with the
  highest predicted IoU is kept; false takes SAM's single mask for the box, as
  Grounded-SAM does (a box is rarely ambiguous);
- ``mask_threshold`` (0.0): the logit above which a pixel is in the mask.

What comes back: the same objects in the same order, each with its box,
score and label, and SAM's mask for its box (a boolean array of the image's
size) in place of any mask it had. The mask is not cut to the box: SAM may
reach a little past it where the object does. An object whose box has no area
on the image, or for which SAM finds no pixel, comes back as it was, so its
box (or the mask it had) stays its region.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from visprog.language.objects import as_objects
from visprog.language.signatures import Option, module
from visprog.language.values import Detection, Image, Objects
from visprog.running.runtime import Context

from .sam_original import mask_segment_anything
from .segmentation import SAM_DEFAULT, load_sam, sam_image_embedding, sam_input_size

if TYPE_CHECKING:  # numpy is imported by the functions that use it: loading the module stays cheap
    import numpy as np

__all__ = ["BACKENDS", "OPTIONS", "Box", "Mask", "promptable_box"]

#: A box prompt: (x0, y0, x1, y1) in the image's pixels.
Box = tuple[float, float, float, float]

#: Masks upscaled to the image's size at a time (each is a float (height, width) array until binarized).
_UPSCALE_CHUNK = 8


def promptable_box(det: Detection, size: tuple[int, int]) -> Box | None:
    """The object's box clipped to an image of ``size`` (width, height); None when it has no area there."""
    w, h = size
    x0, y0, x1, y1 = det.box
    box = (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))
    return box if box[2] > box[0] and box[3] > box[1] else None


# ---------------------------------------------------------------- SAM (transformers)


def _sam(ctx: Context, image: Image, boxes: Sequence[Box]) -> list[np.ndarray]:
    """SAM's mask for each box: one prompt-encoder and mask-decoder call on the image's cached embedding."""
    import torch

    model, processor = load_sam(ctx)
    embedding = sam_image_embedding(image, ctx)
    w, h = image.size
    new_h, new_w = sam_input_size(processor, (w, h))
    device = model.device
    # Box corners scale to the resized image as SamProcessor scales them, in float64 (mps has none).
    scale = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h], dtype=torch.float64)
    prompts = torch.tensor(boxes, dtype=torch.float64) * scale
    prompts = prompts.to(device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)[None]
    threshold = float(ctx.option("mask_threshold"))
    with torch.inference_mode():
        out = model(image_embeddings=embedding, input_boxes=prompts, multimask_output=bool(ctx.option("multimask")))
        low_res, iou = out.pred_masks[0], out.iou_scores[0]  # (boxes, candidates, 256, 256), (boxes, candidates)
        best = iou.argmax(dim=-1)
        chosen = low_res[torch.arange(len(boxes), device=low_res.device), best][:, None]  # (boxes, 1, 256, 256)
        masks: list[np.ndarray] = []
        for i in range(0, len(boxes), _UPSCALE_CHUNK):
            full = processor.post_process_masks(
                [chosen[i : i + _UPSCALE_CHUNK].float()],
                [(h, w)],
                reshaped_input_sizes=[(new_h, new_w)],
                mask_threshold=threshold,
                binarize=True,
            )[0]
            masks.extend(full[:, 0].cpu().numpy())
    return masks


#: backend name -> its function ``(ctx, image, boxes) -> one boolean (height, width) mask per box``
BACKENDS: dict[str, Callable[[Context, Image, Sequence[Box]], Sequence[np.ndarray]]] = {
    "sam": _sam,
    "segment-anything": mask_segment_anything,
}

#: Mask's options (``[modules.Mask]`` in the config file, ``--option Mask.NAME=VALUE``).
OPTIONS = [
    Option(
        "multimask",
        bool,
        False,
        "three candidate masks per box, the one with the highest predicted IoU kept (false: SAM's single mask)",
    ),
    Option("mask_threshold", float, 0.0, "the logit above which a pixel is in the mask"),
]


# ---------------------------------------------------------------- the module


def _masks_of(ctx: Context, image: Image, boxes: Sequence[Box]) -> Sequence[np.ndarray]:
    """The backend's masks for ``boxes`` on ``image``, checked: one boolean array of the image's size per box."""
    import numpy as np

    masks = BACKENDS[ctx.backend](ctx, image, boxes)
    if len(masks) != len(boxes):
        raise RuntimeError(f"Mask backend '{ctx.backend}' gave {len(masks)} masks for {len(boxes)} boxes")
    w, h = image.size
    out = []
    for mask in masks:
        arr = np.asarray(mask, dtype=bool)
        if arr.shape != (h, w):
            raise RuntimeError(f"Mask backend '{ctx.backend}' gave a mask of shape {arr.shape} for a {w}x{h} image")
        out.append(arr)
    return out


def _mask_batch(calls: Sequence[Mapping[str, Any]], ctx: Context) -> list[Objects]:
    """Mask for several (image, objects) pairs: one backend call per distinct image, with every box on it."""
    images: dict[int, Image] = {}
    #: per image: (call index, object index, box) of each object that can be prompted
    prompts: dict[int, list[tuple[int, int, Box]]] = {}
    outputs = [list(as_objects(call["object"])) for call in calls]
    for c, call in enumerate(calls):
        image = call["image"]
        images.setdefault(id(image), image)
        for k, det in enumerate(outputs[c]):
            box = promptable_box(det, image.size)
            if box is not None:
                prompts.setdefault(id(image), []).append((c, k, box))
    for key, items in prompts.items():
        masks = _masks_of(ctx, images[key], [box for _, _, box in items])
        for (c, k, _), mask in zip(items, masks, strict=True):
            if mask.any():
                outputs[c][k] = replace(outputs[c][k], mask=mask)
    return [Objects(found) for found in outputs]


@module(
    aliases=["SEGMENT_BOXES", "SAM"],
    batch=_mask_batch,
    backends={"sam": SAM_DEFAULT, "segment-anything": None},
    default_backend="sam",
    options=OPTIONS,
)
def Mask(image: Image, object: Objects, ctx: Context) -> Objects:
    """Give each object the exact outline of what its box holds: a pixel mask from SAM, prompted with the box.

    Use it after Loc (or FaceDet) when an edit needs the object's shape and
    not its box: Loc finds 'the red car' by name, Mask outlines it, and
    Replace, ColorPop or BgBlur then change exactly its pixels. The objects
    keep their boxes, labels and scores, and come back in the same order.

    Args:
        image: the image the objects were found on.
        object: the objects to outline, e.g. the output of Loc or FaceDet.

    Returns:
        The same objects, each with a mask of the image's size.
    """
    return _mask_batch([{"image": image, "object": object}], ctx)[0]
