"""Segment Anything's own package (``segment-anything``) as a backend of Seg and of Mask.

For SAM checkpoints in the original ``.pth`` format: Meta's ``sam_vit_h_4b8939.pth``,
``sam_vit_l_0b3195.pth``, ``sam_vit_b_01ec64.pth``, and fine-tuned variants saved
the same way (MedSAM's ``medsam_vit_b.pth``, for one). Give the file as the model::

    visprog exec --backend Seg=segment-anything --model Seg=sam_vit_b_01ec64.pth -i photo.jpg PROGRAM
    visprog exec --backend Mask=segment-anything --model Mask=sam_vit_b_01ec64.pth -i photo.jpg PROGRAM

The architecture is read from the checkpoint's shapes (ViT width, depth, heads
and which blocks attend globally), so vit_h, vit_l, vit_b and any other SAM
built by ``segment_anything.build_sam`` load without naming a model type. The
checkpoint is read with ``torch.load(..., weights_only=True)`` onto the cpu,
whatever device it was saved from; a checkpoint that holds its state dict
under ``"model"`` or ``"state_dict"`` is read too. The model runs in float32
on the runtime's device (the package's code assumes float32 inputs).

- Seg (``seg_segment_anything``): the package's ``SamAutomaticMaskGenerator``
  with Seg's options (``points_per_side``, ``points_per_batch``,
  ``pred_iou_thresh``, ``stability_score_thresh``, ``stability_score_offset``,
  ``box_nms_thresh``, ``mask_threshold``), one crop layer. Segments as the
  ``sam`` backend gives them: label ``''``, the predicted IoU as score, boxes
  from the masks, best first.
- Mask (``mask_segment_anything``): the package's ``SamPredictor``, one box
  prompt per object, with Mask's ``multimask`` and ``mask_threshold``. The
  image embedding is computed once per image per run (``ctx.cache``).

Install: these need the ``segment-anything`` package and a torchvision built
for the installed torch (the package imports torchvision); see
:data:`INSTALL`. Without them the backends say what to install.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from visprog.errors import ConfigError
from visprog.language.values import Detection, Image, Objects
from visprog.running.hub import Placement, load_model
from visprog.running.runtime import Context

if TYPE_CHECKING:  # numpy is imported by the functions that use it: loading the module stays cheap
    import numpy as np

__all__ = [
    "INSTALL",
    "load_sam_checkpoint",
    "mask_segment_anything",
    "require_packages",
    "sam_architecture",
    "seg_segment_anything",
]

#: How to install the original packages (the requirements file pins a torch and torchvision that match).
INSTALL = (
    "pip install -r requirements-original.txt (torch==2.14.1 and torchvision==0.29.1, the pair it is tested with, "
    "and segment-anything and groundingdino-py); with a torch of your own, install the torchvision built for it "
    "from where that torch came from, then pip install segment-anything==1.0 groundingdino-py==0.4.0"
)

#: The window size and input size every SAM built by segment_anything.build_sam has.
_WINDOW, _IMAGE_SIZE, _PATCH, _PROMPT_DIM = 14, 1024, 16, 256
#: The three published architectures, by (width, depth), for messages.
_NAMED = {(1280, 32): "vit_h", (1024, 24): "vit_l", (768, 12): "vit_b"}
#: Boxes upscaled to the image's size at a time (each mask is a float (height, width) array until binarized).
_CHUNK = 8


def require_packages(ctx: Context, packages: Sequence[tuple[str, str]]) -> None:
    """Raise :class:`ConfigError` naming the module, its backend and what to install unless torchvision and
    ``packages`` (pairs of import name and distribution name) import."""
    for name, dist in (("torchvision", "torchvision"), *packages):
        try:
            importlib.import_module(name)
        except Exception as e:
            if isinstance(e, ModuleNotFoundError) and e.name is not None and e.name.split(".")[0] == name:
                raise ConfigError(
                    f"{ctx.module}: the '{ctx.backend}' backend needs the package {dist}, which is not installed: "
                    f"{INSTALL}"
                ) from e
            # a dependency of the package is missing, or a torchvision built for another torch fails to load
            raise ConfigError(
                f"{ctx.module}: the '{ctx.backend}' backend needs {dist}, which is installed but does not import "
                f"({type(e).__name__}: {e}); a torchvision must be built for the installed torch: {INSTALL}"
            ) from e


def checkpoint_path(ctx: Context, what: str) -> str:
    """The file or folder given with ``--model`` for this module, checked to exist."""
    given = ctx.options.get("model")
    if not given:
        raise ConfigError(
            f"{ctx.module}: the '{ctx.backend}' backend has no default model; give {what} with "
            f'--model {ctx.module}=PATH (or model = "PATH" under [modules.{ctx.module}] in the config file)'
        )
    path = os.path.expanduser(str(given))
    if not os.path.exists(path):
        raise ConfigError(f"{ctx.module}: the '{ctx.backend}' backend's model '{given}' does not exist")
    return path


def state_dict_of(loaded: Any, path: str, probe: str) -> dict[str, Any]:
    """The state dict in a loaded checkpoint: the object itself, or its ``"model"`` or ``"state_dict"`` entry,
    whichever holds the key ``probe``; :class:`ConfigError` naming ``path`` when none does."""
    candidates = [loaded]
    if isinstance(loaded, Mapping):
        candidates += [loaded.get("model"), loaded.get("state_dict")]
    for c in candidates:
        if isinstance(c, Mapping) and any(str(k).removeprefix("module.") == probe for k in c):
            return {str(k).removeprefix("module."): v for k, v in c.items()}
    raise ConfigError(f"'{path}' is not the checkpoint expected: it has no '{probe}'")


def _torch_load(path: str) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"'{path}' could not be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from e


def sam_architecture(state: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``_build_sam``'s arguments for a SAM state dict: the image encoder's width, depth, heads and global
    attention blocks, read from the shapes; :class:`ConfigError` naming ``path`` for another input size."""
    width = int(state["image_encoder.patch_embed.proj.weight"].shape[0])
    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks.")})
    if not blocks or blocks != list(range(len(blocks))):
        raise ConfigError(f"'{path}': the SAM image encoder's blocks are not numbered 0..n-1")
    keys = [f"image_encoder.blocks.{i}.attn.rel_pos_h" for i in blocks]
    if any(k not in state for k in keys):
        raise ConfigError(f"'{path}': its image encoder has no relative positions, as segment_anything's SAM has")
    rel_pos = [state[k] for k in keys]
    head_dim = int(rel_pos[0].shape[1])
    grid = _IMAGE_SIZE // _PATCH
    pos_embed = state.get("image_encoder.pos_embed")
    neck = state.get("image_encoder.neck.0.weight")
    if pos_embed is None or tuple(pos_embed.shape[1:3]) != (grid, grid) or neck is None or neck.shape[0] != _PROMPT_DIM:
        raise ConfigError(f"'{path}': not a SAM of the 1024-pixel input and 256-channel embedding of segment_anything")
    global_blocks = [i for i, r in zip(blocks, rel_pos, strict=True) if r.shape[0] != 2 * _WINDOW - 1]
    return {
        "encoder_embed_dim": width,
        "encoder_depth": len(blocks),
        "encoder_num_heads": width // head_dim,
        "encoder_global_attn_indexes": global_blocks,
    }


def load_sam_checkpoint(path: str, placement: Placement) -> Any:
    """segment_anything's ``Sam`` for a ``.pth`` file, built by the package's own builder, in float32."""
    from segment_anything.build_sam import _build_sam

    state = state_dict_of(_torch_load(path), path, "image_encoder.patch_embed.proj.weight")
    arch = sam_architecture(state, path)
    model = _build_sam(**arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        name = _NAMED.get((arch["encoder_embed_dim"], arch["encoder_depth"]), "SAM")
        first = str(e).strip().splitlines()
        raise ConfigError(f"'{path}' does not fit the {name} it describes: {' '.join(first[:3])}") from e
    return model.float().eval()


def _model(ctx: Context) -> Any:
    require_packages(ctx, [("segment_anything", "segment-anything")])
    return load_model(ctx, load_sam_checkpoint, model_id=checkpoint_path(ctx, "a SAM .pth checkpoint"))


class _Thresholded:
    """A SAM model seen through ``mask_threshold``: the package reads the threshold from the model."""

    def __init__(self, model: Any, mask_threshold: float) -> None:
        self.model = model
        self.mask_threshold = mask_threshold

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


# ---------------------------------------------------------------- Seg


def seg_segment_anything(image: Image, ctx: Context) -> Objects:
    """Seg's ``segment-anything`` backend: the package's automatic mask generator, as :class:`Objects`."""
    import numpy as np

    model = _model(ctx)
    from segment_anything import SamAutomaticMaskGenerator

    sizes = {name: int(ctx.option(name)) for name in ("points_per_side", "points_per_batch")}
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"Seg option '{name}' must be a whole number of at least 1, got {value}")
    generator = SamAutomaticMaskGenerator(
        _Thresholded(model, float(ctx.option("mask_threshold"))),
        points_per_side=sizes["points_per_side"],
        points_per_batch=sizes["points_per_batch"],
        pred_iou_thresh=float(ctx.option("pred_iou_thresh")),
        stability_score_thresh=float(ctx.option("stability_score_thresh")),
        stability_score_offset=float(ctx.option("stability_score_offset")),
        box_nms_thresh=float(ctx.option("box_nms_thresh")),
        output_mode="binary_mask",
    )
    records = generator.generate(np.asarray(image.convert("RGB")))
    found = Objects()
    for r in records:
        mask = np.asarray(r["segmentation"], dtype=bool)
        if mask.any():
            found.append(Detection.from_mask(mask, min(max(float(r["predicted_iou"]), 0.0), 1.0), ""))
    return found.best_first()


# ---------------------------------------------------------------- Mask


def _predictor(ctx: Context, model: Any, image: Image) -> Any:
    """A ``SamPredictor`` set to ``image``: its embedding computed once per image per run."""
    import numpy as np
    from segment_anything import SamPredictor

    predictor = SamPredictor(_Thresholded(model, float(ctx.option("mask_threshold"))))

    def compute() -> tuple[Any, Any, Any]:
        predictor.set_image(np.asarray(image.convert("RGB")))
        return predictor.features, predictor.original_size, predictor.input_size

    features, original_size, input_size = ctx.cache.get(image, f"segment-anything-embedding:{ctx.model_id}", compute)
    predictor.features, predictor.original_size, predictor.input_size = features, original_size, input_size
    predictor.is_image_set = True
    return predictor


def mask_segment_anything(ctx: Context, image: Image, boxes: Sequence[tuple[float, float, float, float]]) -> list[Any]:
    """Mask's ``segment-anything`` backend: ``SamPredictor``'s mask for each box, one boolean array per box."""
    import torch

    model = _model(ctx)
    predictor = _predictor(ctx, model, image)
    threshold = float(ctx.option("mask_threshold"))
    multimask = bool(ctx.option("multimask"))
    prompts = torch.tensor(boxes, dtype=torch.float32, device=predictor.device)
    prompts = predictor.transform.apply_boxes_torch(prompts, predictor.original_size)
    masks: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(boxes), _CHUNK):
            logits, iou, _ = predictor.predict_torch(
                None, None, boxes=prompts[i : i + _CHUNK], multimask_output=multimask, return_logits=True
            )
            best = iou.argmax(dim=-1)
            chosen = logits[torch.arange(logits.shape[0], device=logits.device), best]
            masks.extend((chosen > threshold).cpu().numpy())
    return masks
