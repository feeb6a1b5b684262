"""Loc: open-vocabulary object detection, boxes for a named object category.

Backends (``--backend Loc=NAME``, model with ``--model Loc=ID``):

- ``grounding-dino`` (default): Grounding DINO, ``IDEA-Research/grounding-dino-tiny``.
  The query is lower-cased and ends with '.', as the model was trained.
- ``owlv2``: OWLv2, ``google/owlv2-base-patch16-ensemble``. Images are padded
  to a square before resizing; boxes are mapped back to the original image.
- ``groundingdino``: the original ``groundingdino-py`` package on a checkpoint of
  its repository (``--model Loc=FILE.pth``, or a folder with the ``.pth`` and its
  ``.py`` config); options ``config``, ``text_encoder``, ``image_size``. It needs
  a real torchvision (``requirements-original.txt``); see
  :mod:`~visprog.modules.groundingdino_original`.

Options (``[modules.Loc]`` in the config file, ``--option Loc.NAME=VALUE``, or ``Runtime.set_option``):

- ``box_threshold``: the score a box needs (default 0.3 for Grounding DINO, 0.1 for OWLv2);
- ``text_threshold``: Grounding DINO's token threshold (default 0.25; it only
  affects the text labels transformers computes, which Loc does not use);
- ``nms_iou``: boxes overlapping a better one by more than this IoU are dropped
  (default 0.5; 1.0 keeps every box).

Batching: the (image, object) pairs of steps that are ready together go
through the model in one forward pass; region words need no model. OWLv2
resizes every image to the same square, so a batch is always one pass.
Grounding DINO keeps each image's aspect ratio, and padding a smaller image to
a larger one changes what its Swin backbone sees, and so the boxes: it makes
one pass per preprocessed image size (one image queried for several objects,
the usual case, is one pass). Each image is preprocessed once per run and
model (``ctx.cache``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from visprog.language.signatures import Option, module, not_empty
from visprog.language.values import Detection, Image, Objects
from visprog.running.hub import Placement, load_model
from visprog.running.runtime import Context

from .groundingdino_original import BOX_THRESHOLD as GROUNDINGDINO_BOX_THRESHOLD
from .groundingdino_original import OPTIONS as GROUNDINGDINO_OPTIONS
from .groundingdino_original import loc_groundingdino

__all__ = ["BACKENDS", "OPTIONS", "REGION_WORDS", "Loc"]

#: VisProg's region words: Loc answers them with that half of the image, without a model.
REGION_WORDS = ("TOP", "BOTTOM", "LEFT", "RIGHT")

#: Loc's options, with their defaults (per backend where they differ).
OPTIONS = [
    Option(
        "box_threshold",
        float,
        None,
        "the score a box needs",
        backend_defaults={"grounding-dino": 0.3, "owlv2": 0.1, "groundingdino": GROUNDINGDINO_BOX_THRESHOLD},
    ),
    Option("text_threshold", float, 0.25, "Grounding DINO's token threshold (only for the text labels, unused)"),
    Option("nms_iou", float, 0.5, "boxes overlapping a better one by more than this IoU are dropped (1.0 keeps all)"),
    *GROUNDINGDINO_OPTIONS,
]

#: One query: (image, object) as the program gave them.
Query = tuple[Image, str]


def _region(image: Image, obj: str) -> Detection | None:
    """The half of the image a region word names, else None."""
    word = obj.strip().upper()
    if word not in REGION_WORDS:
        return None
    w, h = image.size
    box = {
        "TOP": (0, 0, w, h // 2),
        "BOTTOM": (0, h // 2, w, h),
        "LEFT": (0, 0, w // 2, h),
        "RIGHT": (w // 2, 0, w, h),
    }[word]
    return Detection(box, 1.0, obj.strip())


def _option(ctx: Context, name: str) -> float:
    return float(ctx.option(name))


def _rgb(image: Image) -> Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _finish(boxes: Any, scores: Any, size: tuple[int, int], label: str, nms_iou: float) -> Objects:
    """Clip boxes to the image, drop empty ones, suppress overlaps, best score first."""
    boxes = boxes.detach().float().cpu().reshape(-1, 4).tolist()
    scores = scores.detach().float().cpu().reshape(-1).clamp(0.0, 1.0).tolist()
    pairs = zip(boxes, scores, strict=True)
    found = Objects(_box(box, score, label) for box, score in pairs if not any(math.isnan(v) for v in box))
    return found.clipped(size).nms(nms_iou)  # nms_iou >= 1 keeps every box


def _box(box: list[float], score: float, label: str) -> Detection:
    """A detection of a model's box; a box with its corners swapped has no area (clipping drops it)."""
    x0, y0, x1, y1 = box
    return Detection((x0, y0, max(x0, x1), max(y0, y1)), score, label)


def _pixels(ctx: Context, processor: Any, image: Image) -> dict[str, Any]:
    """The image processor's tensors for one image, computed once per run for this model."""
    name = f"Loc:{ctx.backend}:{ctx.model_id}:pixels"
    return ctx.cache.get(image, name, lambda: dict(processor.image_processor(images=_rgb(image), return_tensors="pt")))


def _groups(pixels: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indices of queries whose preprocessed images have the same shape, in order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(pixels):
        groups.setdefault(tuple(p["pixel_values"].shape), []).append(i)
    return list(groups.values())


# --- Grounding DINO -----------------------------------------------------------


def _load_grounding_dino(model_id: str, placement: Placement) -> tuple[Any, Any]:
    from transformers import (
        AutoTokenizer,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
    )

    model = GroundingDinoForObjectDetection.from_pretrained(model_id, **placement.pretrained_kwargs())
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil.from_pretrained(model_id),
        tokenizer=AutoTokenizer.from_pretrained(model_id),
    )
    return model, processor


def _dino_prompt(obj: str) -> str:
    """Grounding DINO's text: lower case, ending with a period."""
    text = obj.strip().lower()
    return text if text.endswith(".") else text + "."


def _grounding_dino(ctx: Context, queries: Sequence[Query]) -> list[Objects]:
    import torch

    model, processor = load_model(ctx, _load_grounding_dino)
    threshold, text_threshold = _option(ctx, "box_threshold"), _option(ctx, "text_threshold")
    nms_iou = _option(ctx, "nms_iou")
    device, dtype = ctx.runtime.device, ctx.runtime.torch_dtype()
    max_len = int(model.config.max_text_len)  # longer prompts break the model's text masks
    pixels = [_pixels(ctx, processor, image) for image, _ in queries]
    out: list[Objects] = [Objects() for _ in queries]
    for group in _groups(pixels):
        prompts = [_dino_prompt(queries[i][1]) for i in group]
        text = processor(text=prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in text.items()}
        inputs["pixel_values"] = torch.cat([pixels[i]["pixel_values"] for i in group]).to(device, dtype)
        inputs["pixel_mask"] = torch.cat([pixels[i]["pixel_mask"] for i in group]).to(device)
        with torch.inference_mode():
            outputs = model(**inputs)
        results = processor.post_process_grounded_object_detection(
            SimpleNamespace(logits=outputs.logits.float(), pred_boxes=outputs.pred_boxes.float()),
            text["input_ids"],
            threshold=threshold,
            text_threshold=text_threshold,
            target_sizes=[(queries[i][0].height, queries[i][0].width) for i in group],
        )
        for i, result in zip(group, results, strict=True):
            image, obj = queries[i]
            out[i] = _finish(result["boxes"], result["scores"], image.size, obj.strip(), nms_iou)
    return out


# --- OWLv2 --------------------------------------------------------------------


def _load_owlv2(model_id: str, placement: Placement) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    model = Owlv2ForObjectDetection.from_pretrained(model_id, **placement.pretrained_kwargs())
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil.from_pretrained(model_id),
        tokenizer=AutoTokenizer.from_pretrained(model_id),
    )
    return model, processor


def _owlv2(ctx: Context, queries: Sequence[Query]) -> list[Objects]:
    import torch

    model, processor = load_model(ctx, _load_owlv2)
    threshold, nms_iou = _option(ctx, "box_threshold"), _option(ctx, "nms_iou")
    device, dtype = ctx.runtime.device, ctx.runtime.torch_dtype()
    pixels = [_pixels(ctx, processor, image) for image, _ in queries]
    out: list[Objects] = [Objects() for _ in queries]
    for group in _groups(pixels):  # one group: every image is resized to the same square
        # truncation: CLIP's text encoder takes 16 tokens
        text = processor(text=[[queries[i][1].strip()] for i in group], truncation=True, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in text.items()}
        inputs["pixel_values"] = torch.cat([pixels[i]["pixel_values"] for i in group]).to(device, dtype)
        with torch.inference_mode():
            outputs = model(**inputs)
        # The image was padded to a square at the bottom/right: boxes scale by the longer side.
        results = processor.post_process_grounded_object_detection(
            SimpleNamespace(logits=outputs.logits.float(), pred_boxes=outputs.pred_boxes.float()),
            threshold=threshold,
            target_sizes=[(queries[i][0].height, queries[i][0].width) for i in group],
        )
        for i, result in zip(group, results, strict=True):
            image, obj = queries[i]
            out[i] = _finish(result["boxes"], result["scores"], image.size, obj.strip(), nms_iou)
    return out


BACKENDS: dict[str, Callable[[Context, Sequence[Query]], list[Objects]]] = {
    "grounding-dino": _grounding_dino,
    "owlv2": _owlv2,
    "groundingdino": loc_groundingdino,
}


def _loc_batch(calls: Sequence[dict[str, Any]], ctx: Context) -> list[Objects]:
    """Loc for several (image, object) pairs: region words directly, the rest in one model call."""
    out: list[Objects | None] = [None] * len(calls)
    pending: list[int] = []
    for i, call in enumerate(calls):
        image, obj = call["image"], call["object"]
        if not obj.strip():
            raise ValueError("Loc needs an object to find, got an empty string")
        region = _region(image, obj)
        if region is not None:
            out[i] = Objects([region])
        else:
            pending.append(i)
    if pending:
        found = BACKENDS[ctx.backend](ctx, [(calls[i]["image"], calls[i]["object"]) for i in pending])
        for i, objects in zip(pending, found, strict=True):
            out[i] = objects
    return [objects if objects is not None else Objects() for objects in out]


@module(
    aliases=["LOC", "Locate", "Detect"],
    batch=_loc_batch,
    backends={
        "grounding-dino": "IDEA-Research/grounding-dino-tiny",
        "owlv2": "google/owlv2-base-patch16-ensemble",
        "groundingdino": None,
    },
    default_backend="grounding-dino",
    options=OPTIONS,
    validate={"object": not_empty("an object to find")},
)
def Loc(image: Image, object: str, ctx: Context) -> Objects:
    """Find every instance of a named object in the image, as boxes, best match first.

    Open-vocabulary detection: any short noun phrase works. Returns an empty
    list when nothing matches. Each object's label is the query.

    Args:
        image: the image to search.
        object: what to find, a short noun phrase for one kind of object, e.g. 'dog', 'red car',
            'person', 'face'. Or one of the words 'TOP', 'BOTTOM', 'LEFT', 'RIGHT' for that half
            of the image as a single object (no detection is run).
    """
    return _loc_batch([{"image": image, "object": object}], ctx)[0]
