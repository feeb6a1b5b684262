"""Grounding DINO's own package (``groundingdino-py``) as Loc's ``groundingdino`` backend.

For the checkpoints of the Grounding DINO repository (``groundingdino_swint_ogc.pth``,
``groundingdino_swinb_cogcoor.pth``, and fine-tuned ones saved the same way),
with the model's ``.py`` config. Give the model as one of:

- the checkpoint: ``--model Loc=groundingdino_swint_ogc.pth``. The config is
  the ``config`` option, else the package's own config that fits the
  checkpoint's backbone (``GroundingDINO_SwinT_OGC.py`` for a Swin-T,
  ``GroundingDINO_SwinB_cfg.py`` for a Swin-B);
- a folder holding one ``.pth`` checkpoint and one ``.py`` config:
  ``--model Loc=weights/groundingdino/``.

Options (``--option Loc.NAME=VALUE``, or ``[modules.Loc]`` in the config file):

- ``box_threshold`` (0.35 for this backend, the package's demo value): the
  score a box needs, its best token's probability;
- ``text_threshold`` (0.25): the package's token threshold, which picks the
  words of a box's phrase; Loc labels every box with the query, so it changes
  no result;
- ``nms_iou`` (0.5), as for the other backends;
- ``config``: the ``.py`` config file, or the name of one the package ships
  (``GroundingDINO_SwinT_OGC.py``, ``GroundingDINO_SwinB_cfg.py``);
- ``text_encoder``: the BERT to use in place of the config's
  ``text_encoder_type`` (``bert-base-uncased``, which must then be in the
  Hugging Face cache: ``hf download bert-base-uncased``): a hub id or a folder;
- ``image_size`` (800): images are resized to this shorter side, the longer
  side at most 5/3 of it (800 and 1333, as the package's demo does).

The model runs in float32 on the runtime's device. The queries on one image
whose captions have the same number of tokens go through the model in one
forward pass (padding a shorter caption changes its scores). The package's BERT wrapper is
replaced by :class:`~visprog.modules.groundingdino_compat.BertModelWrapper`
(transformers 5; see that module). Install: see
:data:`~visprog.modules.sam_original.INSTALL` (the package imports torchvision).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from visprog.errors import ConfigError
from visprog.language.signatures import Option
from visprog.language.values import Detection, Image, Objects
from visprog.running.hub import Placement, load_model
from visprog.running.runtime import Context

from .sam_original import checkpoint_path, require_packages, state_dict_of

__all__ = ["BOX_THRESHOLD", "OPTIONS", "PACKAGE_CONFIGS", "load_groundingdino", "loc_groundingdino"]

#: box_threshold's default for this backend (the package's demo and README use 0.35 and 0.25).
BOX_THRESHOLD = 0.35
#: The configs the package ships, by the width of the Swin backbone they build.
PACKAGE_CONFIGS = {96: "GroundingDINO_SwinT_OGC.py", 128: "GroundingDINO_SwinB_cfg.py"}
#: The package's input normalization (ImageNet's).
_MEAN, _STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
#: A weight every Grounding DINO checkpoint has (the text features' projection).
_PROBE = "feat_map.weight"

#: Loc's options for this backend (added to Loc's own).
OPTIONS = [
    Option("config", str, None, "groundingdino: the model's .py config (default: the package's that fits the .pth)"),
    Option("text_encoder", str, None, "groundingdino: a BERT (hub id or folder) in place of the config's"),
    Option("image_size", int, 800, "groundingdino: the shorter side images are resized to (longer side <= 5/3 of it)"),
]

Query = tuple[Image, str]


def _package_config(name: str) -> str:
    import groundingdino

    return os.path.join(os.path.dirname(groundingdino.__file__), "config", name)


def _config_option(ctx: Context) -> str | None:
    """The ``config`` option as a file: a path, or the name of a config the package ships."""
    given = ctx.option("config")
    if not given:
        return None
    path = os.path.expanduser(str(given))
    if os.path.isfile(path):
        return path
    shipped = _package_config(os.path.basename(path))
    if os.path.basename(path) in PACKAGE_CONFIGS.values() and os.path.isfile(shipped):
        return shipped
    raise ConfigError(
        f"Loc option 'config': '{given}' is neither a file nor one of the package's configs "
        f"({', '.join(PACKAGE_CONFIGS.values())})"
    )


def model_files(ctx: Context) -> tuple[str, str | None]:
    """(checkpoint, config or None for the package's that fits it) from ``--model`` and the ``config`` option."""
    path = checkpoint_path(ctx, "a Grounding DINO .pth checkpoint, or a folder holding it and its .py config")
    config = _config_option(ctx)
    if not os.path.isdir(path):
        return path, config
    names = sorted(os.listdir(path))
    found = {ext: [n for n in names if n.endswith(ext)] for ext in (".pth", ".py")}
    if len(found[".pth"]) != 1 or (config is None and len(found[".py"]) != 1):
        listed = ", ".join(found[".pth"] + found[".py"]) or "none"
        raise ConfigError(
            f"Loc: the folder '{path}' must hold one .pth checkpoint and one .py config (it has: {listed}); "
            "or give the checkpoint as --model Loc=FILE.pth and the config with --option Loc.config=FILE.py"
        )
    return os.path.join(path, found[".pth"][0]), config or os.path.join(path, found[".py"][0])


def _read_checkpoint(path: str) -> dict[str, Any]:
    import torch

    try:  # the repository's checkpoints also hold the training arguments, an argparse.Namespace
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"'{path}' could not be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    return state_dict_of(loaded, path, _PROBE)


def _fitting_config(state: dict[str, Any], path: str) -> str:
    width = state.get("backbone.0.patch_embed.proj.weight")
    name = PACKAGE_CONFIGS.get(int(width.shape[0])) if width is not None else None
    if name is None:
        raise ConfigError(f"'{path}' has no Swin-T or Swin-B backbone as the package's configs have: set Loc.config")
    return _package_config(name)


def load_groundingdino(checkpoint: str, config: str | None, text_encoder: str | None) -> Any:
    """groundingdino's model for a checkpoint and config (None: the package's config that fits the checkpoint),
    built by the package's ``build_model``, with the checkpoint's weights, in float32 on the cpu."""
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    from .groundingdino_compat import install

    state = _read_checkpoint(checkpoint)
    config = config or _fitting_config(state, checkpoint)
    args = SLConfig.fromfile(config)
    args.device = "cpu"
    # activation checkpointing saves memory in training only
    args.use_checkpoint, args.use_transformer_ckpt = False, False
    if text_encoder:
        args.text_encoder_type = text_encoder
    install()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the package prints what it loads
            model = build_model(args)
    except OSError as e:
        raise ConfigError(
            f"Loc: the text encoder '{args.text_encoder_type}' of '{config}' could not be loaded ({e}); fetch it "
            f"(hf download {args.text_encoder_type}) or set --option Loc.text_encoder to a hub id or folder"
        ) from e
    try:
        missing, _ = model.load_state_dict(state, strict=False)  # the package loads with strict=False too
    except RuntimeError as e:
        raise ConfigError(f"'{checkpoint}' does not fit the config '{config}': {str(e).splitlines()[0]}") from e
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ConfigError(
            f"'{checkpoint}' does not fit the config '{config}': {len(missing)} of the model's weights are not in it "
            f"({', '.join(missing[:3])}, ...)"
        )
    return model.float()


def _model(ctx: Context) -> Any:
    require_packages(ctx, [("groundingdino", "groundingdino-py")])
    checkpoint, config = model_files(ctx)
    text_encoder = ctx.option("text_encoder")
    described = f"{checkpoint} (config {config or 'of the package, by the backbone'}"
    described += f", text encoder {text_encoder})" if text_encoder else ")"

    def load(model_id: str, placement: Placement) -> Any:
        return load_groundingdino(checkpoint, config, text_encoder)

    return load_model(ctx, load, model_id=described)


def _pixels(ctx: Context, image: Image) -> Any:
    """The package's preprocessing of ``image`` (resize, to tensor, normalize), once per image per run."""
    size = int(ctx.option("image_size"))
    if size < 1:
        raise ValueError(f"Loc option 'image_size' must be a whole number of at least 1, got {size}")

    def compute() -> Any:
        import groundingdino.datasets.transforms as T

        transform = T.Compose([T.RandomResize([size], max_size=size * 5 // 3), T.ToTensor(), T.Normalize(_MEAN, _STD)])
        return transform(image.convert("RGB"), None)[0]

    return ctx.cache.get(image, f"Loc:groundingdino:{size}:pixels", compute)


def _caption(obj: str) -> str:
    """The package's caption for a query: lower case, ending with a period."""
    text = obj.strip().lower()
    return text if text.endswith(".") else text + "."


def loc_groundingdino(ctx: Context, queries: Sequence[Query]) -> list[Objects]:
    """Loc's ``groundingdino`` backend: boxes whose best token passes ``box_threshold``, best first."""
    import torch

    model = _model(ctx)
    threshold, nms_iou = float(ctx.option("box_threshold")), float(ctx.option("nms_iou"))
    device = next(model.parameters()).device
    # One pass per image and caption length: a padded caption gets other scores than it gets alone.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (image, obj) in enumerate(queries):
        groups.setdefault((id(image), len(model.tokenizer(_caption(obj))["input_ids"])), []).append(i)
    out = [Objects() for _ in queries]
    for group in groups.values():
        image = queries[group[0]][0]
        pixels = _pixels(ctx, image).to(device)
        captions = [_caption(queries[i][1]) for i in group]
        with torch.inference_mode():
            found = model(pixels[None].expand(len(group), -1, -1, -1), captions=captions)
        scores = found["pred_logits"].float().sigmoid().max(dim=-1).values.cpu()  # (queries, boxes)
        w, h = image.size
        cx, cy, bw, bh = (found["pred_boxes"].float().cpu() * torch.tensor([w, h, w, h])).unbind(-1)
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
        for row, i in enumerate(group):
            label = queries[i][1].strip()
            keep = (scores[row] > threshold).nonzero().flatten().tolist()
            detections = Objects(Detection(tuple(boxes[row, k].tolist()), float(scores[row, k]), label) for k in keep)
            out[i] = detections.clipped(image.size).nms(nms_iou)
    return out
