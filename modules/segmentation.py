"""Seg: split an image into segments, each with a mask.

Backends (``--backend Seg=NAME``):

- ``sam`` (default, ``facebook/sam-vit-base``): Segment Anything's automatic
  mask generation, step for step the algorithm of transformers'
  ``mask-generation`` pipeline (one crop layer): a grid of point prompts,
  three masks per point, masks kept when their predicted IoU and their
  stability score pass the thresholds, duplicates removed by non-maximum
  suppression on the masks' boxes. Segments have no category (label ``''``);
  the score is the predicted IoU. The image embedding is computed once per
  image per run and shared through the run cache (:func:`sam_image_embedding`),
  so other modules that prompt SAM on the same image (Mask, with boxes) get it
  for free.
- ``mask2former`` (``facebook/mask2former-swin-base-coco-panoptic``): COCO
  panoptic segmentation; each segment carries its COCO category (things and
  stuff) from the model's ``id2label`` and its class probability as score.
- ``segment-anything``: the original package's automatic mask generator on a
  ``.pth`` checkpoint (``--model Seg=FILE.pth``; SAM ViT-H/L/B or a fine-tuned
  SAM saved the same way, the architecture read from its shapes), with the
  ``sam`` options. It needs a real torchvision (``requirements-original.txt``);
  see :mod:`~visprog.modules.sam_original`.

Options (``[modules.Seg]`` in the config file):

- sam: ``points_per_side`` (32), ``points_per_batch`` (64; lower it to save
  memory), ``pred_iou_thresh`` (0.88), ``stability_score_thresh`` (0.95),
  ``stability_score_offset`` (1.0), ``mask_threshold`` (0.0),
  ``box_nms_thresh`` (0.7; the pipeline calls it ``crops_nms_thresh``).
- mask2former: ``threshold`` (0.5), ``mask_threshold`` (0.5),
  ``overlap_mask_area_threshold`` (0.8), ``label_ids_to_fuse`` (none: a list
  of class ids or names whose segments merge into one per class).

Every backend returns segments best first: by score, descending, and by mask
area, descending, among equal scores. Boxes are the masks' bounding boxes in
pixels with exclusive ends (``x1 = last column + 1``), so a box's region
covers its mask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from visprog.language.objects import nms_indices
from visprog.language.signatures import Option, module
from visprog.language.values import Detection, Image, Objects
from visprog.running.hub import Placement, load_model
from visprog.running.runtime import Context

from .sam_original import seg_segment_anything

if TYPE_CHECKING:  # numpy is imported by the functions that use it: loading the module stays cheap
    import numpy as np

__all__ = ["SAM_DEFAULT", "SAM_EMBEDDING_CACHE", "Seg", "load_sam", "sam_image_embedding", "sam_input_size"]

SAM_DEFAULT = "facebook/sam-vit-base"
MASK2FORMER_DEFAULT = "facebook/mask2former-swin-base-coco-panoptic"

#: Run-cache name of a SAM image embedding; formatted with the model id.
SAM_EMBEDDING_CACHE = "sam-image-embedding:{model_id}"


# ---------------------------------------------------------------- helpers


def _option(ctx: Context, name: str) -> float:
    """One of Seg's number options: as set, else its default (for the backend)."""
    return float(ctx.option(name))


def _segment(mask: np.ndarray, score: float, label: str) -> Detection | None:
    """The segment of a mask, boxed by it, its score clamped to [0, 1]; None for an empty mask."""
    if not mask.any():
        return None
    return Detection.from_mask(mask, min(max(float(score), 0.0), 1.0), label)


# ---------------------------------------------------------------- SAM


def _load_sam(model_id: str, placement: Placement) -> tuple[Any, Any]:
    from transformers import SamImageProcessorPil, SamModel

    processor = SamImageProcessorPil.from_pretrained(model_id)
    model = SamModel.from_pretrained(model_id, **placement.pretrained_kwargs())
    return model, processor


def load_sam(ctx: Context, model_id: str | None = None) -> tuple[Any, Any]:
    """SAM's model and (PIL) image processor, loaded once per process.

    ``model_id`` defaults to ``ctx``'s model, which is right inside Seg; other
    modules pass the SAM checkpoint they use.
    """
    return load_model(ctx, _load_sam, model_id=model_id or ctx.model_id)


def sam_input_size(processor: Any, size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) the SAM processor resizes an image of ``size`` (width, height) to, before padding."""
    w, h = size
    longest = processor.size.get("longest_edge", processor.size.get("height"))
    scale = longest * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sam_image_embedding(image: Image, ctx: Context, model_id: str | None = None) -> Any:
    """SAM's image embedding of ``image``, computed once per image per run.

    The vision encoder runs the first time a run asks for an image's embedding
    with a given model; later calls in the same run (from Seg or any other
    module) get the cached tensor, on the runtime's device and dtype. Feed it
    to ``model(image_embeddings=..., input_points=...)``.
    """
    model_id = model_id or ctx.model_id
    model, processor = load_sam(ctx, model_id)

    def compute() -> Any:
        import torch

        inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(device=model.device, dtype=model.dtype)
        with torch.inference_mode():
            return model.get_image_embeddings(pixel_values)

    return ctx.cache.get(image, SAM_EMBEDDING_CACHE.format(model_id=model_id), compute)


def _sam_filter(
    masks: Any,
    iou_scores: Any,
    mask_threshold: float,
    iou_thresh: float,
    stability_thresh: float,
    stability_offset: float,
) -> tuple[Any, Any, Any]:
    """Keep masks by predicted IoU and stability score; binarize; their inclusive xyxy boxes.

    The steps of ``SamImageProcessorPil.filter_masks`` for a crop that is the
    whole image (where its crop-edge filter and padding change nothing),
    keeping masks as boolean tensors instead of run-length codes.
    """
    import torch

    masks = masks.flatten(0, 1)
    iou_scores = iou_scores.flatten(0, 1).to(masks.device)
    keep = torch.ones(masks.shape[0], dtype=torch.bool, device=masks.device)
    if iou_thresh > 0.0:
        keep &= iou_scores > iou_thresh
    if stability_thresh > 0.0:
        # Stability: IoU of the mask binarized at threshold + offset with the one at threshold - offset.
        inter = (masks > (mask_threshold + stability_offset)).sum(-1, dtype=torch.int32).sum(-1, dtype=torch.int32)
        union = (masks > (mask_threshold - stability_offset)).sum(-1, dtype=torch.int32).sum(-1, dtype=torch.int32)
        keep &= (inter / union) > stability_thresh
    binary = masks[keep] > mask_threshold
    scores = iou_scores[keep]
    h, w = binary.shape[-2:]
    rows, cols = binary.any(dim=-1), binary.any(dim=-2)
    ys = torch.arange(h, device=binary.device)
    xs = torch.arange(w, device=binary.device)
    top = torch.where(rows, ys, h).min(dim=-1).values
    bottom = torch.where(rows, ys, -1).max(dim=-1).values
    left = torch.where(cols, xs, w).min(dim=-1).values
    right = torch.where(cols, xs, -1).max(dim=-1).values
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    boxes = boxes * rows.any(dim=-1, keepdim=True)  # [0, 0, 0, 0] for an empty mask, as transformers does
    return binary, scores, boxes


def _iou_passing(low_res: Any, iou_scores: Any, iou_thresh: float) -> tuple[Any, Any]:
    """The low-resolution masks (points, 3, 256, 256) whose predicted IoU passes ``iou_thresh``, as
    (masks, 1, 256, 256), and their scores (masks, 1), in the same order; all of them when the threshold is 0.

    Only these are upscaled to the image's size: upscaling is per mask, so the masks that pass come out the
    same as when every mask is upscaled and the filter runs afterwards, at a fraction of the cost.
    """
    if iou_thresh <= 0.0:
        return low_res, iou_scores
    passing = (iou_scores > iou_thresh).flatten()
    return low_res.flatten(0, 1)[passing][:, None], iou_scores.flatten()[passing][:, None]


def _sam(image: Image, ctx: Context) -> Objects:
    import numpy as np
    import torch

    points_per_side = int(ctx.option("points_per_side"))
    points_per_batch = int(ctx.option("points_per_batch"))
    for name, value in (("points_per_side", points_per_side), ("points_per_batch", points_per_batch)):
        if value < 1:
            raise ValueError(f"Seg option '{name}' must be a whole number of at least 1, got {value}")
    iou_thresh = _option(ctx, "pred_iou_thresh")
    stability_thresh = _option(ctx, "stability_score_thresh")
    stability_offset = _option(ctx, "stability_score_offset")
    mask_threshold = _option(ctx, "mask_threshold")
    nms = ctx.options.get("crops_nms_thresh")  # the pipeline's name, used when box_nms_thresh is not set
    if nms is None or "box_nms_thresh" in ctx.options:
        nms = ctx.option("box_nms_thresh")
    nms_thresh = float(nms)

    model, processor = load_sam(ctx)
    device = model.device
    rgb = image.convert("RGB")
    w, h = rgb.size
    longest = processor.size.get("longest_edge", processor.size.get("height"))
    # The pipeline's point grid: one crop (the whole image), points in the resized image's pixels.
    _, grid, _, labels = processor.generate_crop_boxes(rgb, longest, 0, 512 / 1500, int(points_per_side), 1)
    # Points stay float64 like the pipeline's (the prompt encoder casts after normalizing); mps has no float64.
    grid = grid.to(device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)
    labels = labels.to(device)
    embedding = sam_image_embedding(image, ctx)
    reshaped = sam_input_size(processor, (w, h))

    # Masks that pass the filters wait for NMS bit-packed on the cpu (an eighth of a bool array).
    packed: list[np.ndarray] = []
    all_scores, all_boxes = [], []
    with torch.inference_mode():
        step = int(points_per_batch)
        for i in range(0, grid.shape[1], step):
            out = model(
                image_embeddings=embedding,
                input_points=grid[:, i : i + step],
                input_labels=labels[:, i : i + step],
                multimask_output=True,
            )
            low_res, iou = _iou_passing(out.pred_masks[0], out.iou_scores[0], iou_thresh)
            if low_res.shape[0] == 0:
                continue
            masks = processor.post_process_masks(
                [low_res],
                [(h, w)],
                reshaped_input_sizes=[reshaped],
                mask_threshold=mask_threshold,
                binarize=False,
            )[0]
            kept, scores, boxes = _sam_filter(
                masks, iou, mask_threshold, iou_thresh, stability_thresh, stability_offset
            )
            packed.append(np.packbits(kept.cpu().numpy(), axis=-1))
            all_scores.append(scores.float().cpu())
            all_boxes.append(boxes.cpu())
            del out, masks
        if not packed:
            return Objects()
        scores_t = torch.cat(all_scores)
        boxes_t = torch.cat(all_boxes)
    keep = nms_indices(boxes_t.float().numpy(), scores_t.numpy(), nms_thresh)

    bits = np.concatenate(packed)
    found = Objects()
    for k in keep:
        d = _segment(np.unpackbits(bits[k], axis=-1, count=w).astype(bool), float(scores_t[k]), "")
        if d is not None:
            found.append(d)
    return found.best_first()


# ---------------------------------------------------------------- Mask2Former


def _load_mask2former(model_id: str, placement: Placement) -> tuple[Any, Any]:
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessorPil

    processor = Mask2FormerImageProcessorPil.from_pretrained(model_id)
    model = Mask2FormerForUniversalSegmentation.from_pretrained(model_id, **placement.pretrained_kwargs())
    return model, processor


def _label_ids(values: Any, label2id: Mapping[str, int]) -> set[int]:
    if values is None:
        return set()
    if isinstance(values, (str, int)):
        values = [values]
    out = set()
    for v in values:
        if isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit()):
            out.add(int(v))
        elif v in label2id:
            out.add(int(label2id[v]))
        else:
            raise ValueError(f"Seg: label_ids_to_fuse: '{v}' is not one of the model's labels")
    return out


def _mask2former(image: Image, ctx: Context) -> Objects:
    import types

    import torch

    model, processor = load_model(ctx, _load_mask2former)
    rgb = image.convert("RGB")
    w, h = rgb.size
    inputs = processor(images=rgb, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(
            pixel_values=inputs["pixel_values"].to(device=model.device, dtype=model.dtype),
            pixel_mask=inputs["pixel_mask"].to(model.device),
        )
        logits = types.SimpleNamespace(
            class_queries_logits=outputs.class_queries_logits.float(),
            masks_queries_logits=outputs.masks_queries_logits.float(),
        )
        result = processor.post_process_panoptic_segmentation(
            logits,
            threshold=_option(ctx, "threshold"),
            mask_threshold=_option(ctx, "mask_threshold"),
            overlap_mask_area_threshold=_option(ctx, "overlap_mask_area_threshold"),
            label_ids_to_fuse=_label_ids(ctx.option("label_ids_to_fuse"), model.config.label2id),
            target_sizes=[(h, w)],
        )[0]
    segmentation = result["segmentation"].cpu().numpy()
    # A fused class lists one entry per query under the same id: keep one segment, its best score.
    segments: dict[int, tuple[int, float]] = {}
    for info in result["segments_info"]:
        sid, label_id, score = int(info["id"]), int(info["label_id"]), float(info["score"])
        if sid not in segments or score > segments[sid][1]:
            segments[sid] = (label_id, score)
    id2label = model.config.id2label
    found = Objects()
    for sid, (label_id, score) in segments.items():
        label = str(id2label.get(label_id, id2label.get(str(label_id), label_id)))
        d = _segment(segmentation == sid, score, label)
        if d is not None:
            found.append(d)
    return found.best_first()


BACKENDS: dict[str, Callable[[Image, Context], Objects]] = {
    "sam": _sam,
    "mask2former": _mask2former,
    "segment-anything": seg_segment_anything,
}


#: Seg's options (``[modules.Seg]`` in the config file, ``--option Seg.NAME=VALUE``).
OPTIONS = [
    Option("points_per_side", int, 32, "sam: the point grid's points per side (at least 1)"),
    Option("points_per_batch", int, 64, "sam: points per forward pass (at least 1; lower it to save memory)"),
    Option("pred_iou_thresh", float, 0.88, "sam: the predicted IoU a mask needs"),
    Option("stability_score_thresh", float, 0.95, "sam: the stability score a mask needs"),
    Option("stability_score_offset", float, 1.0, "sam: the logit offset the stability score is measured with"),
    Option(
        "mask_threshold",
        float,
        None,
        "the logit above which a pixel is in the mask",
        backend_defaults={"sam": 0.0, "mask2former": 0.5, "segment-anything": 0.0},
    ),
    Option("box_nms_thresh", float, 0.7, "sam: masks whose boxes overlap a better one by more than this IoU go"),
    Option("crops_nms_thresh", float, None, "sam: the pipeline's name for box_nms_thresh"),
    Option("threshold", float, 0.5, "mask2former: the class probability a segment needs"),
    Option("overlap_mask_area_threshold", float, 0.8, "mask2former: the share of a mask a segment must keep"),
    Option("label_ids_to_fuse", list[str], None, "mask2former: class ids or names whose segments merge into one"),
]


@module(
    aliases=["SEG", "Segment"],
    backends={"sam": SAM_DEFAULT, "mask2former": MASK2FORMER_DEFAULT, "segment-anything": None},
    default_backend="sam",
    options=OPTIONS,
)
def Seg(image: Image, ctx: Context) -> Objects:
    """Segment the image into regions (objects and background parts), each with a pixel mask and a box.

    The default backend (SAM) returns class-agnostic segments labelled '' and
    scored by the model's predicted mask quality; the 'mask2former' backend
    labels each segment with its COCO category (e.g. 'person', 'dog', 'sky',
    'grass'). Segments come best first: highest score first, larger mask first
    among equal scores. Select picks segments by a text query afterwards.

    Args:
        image: the image to segment.

    Returns:
        The segments, each a Detection with a mask of the image's size.
    """
    return BACKENDS[ctx.backend](image, ctx)
