"""Select and Classify: pick or label objects by text, with a CLIP-style image-text model.

Each object is scored on its *masked crop*: the pixels outside the object's
region (its mask, else its box) are painted the processor's mean colour
(which normalises to zero, a neutral grey), and the image is cropped to a
square around the box, 10% larger than the box's longer side, so the
processor's centre crop never cuts the object off. Texts are prompts built
from the template ``"a photo of {}."`` (option ``prompt``).

Backends (``--backend Select=NAME``; Select and Classify share them):

- ``clip`` (default): ``openai/clip-vit-large-patch14``, as VisProg.
  Probabilities are softmaxes of CLIP's scaled cosine similarities.
- ``siglip``: ``google/siglip-base-patch16-224``. Probabilities are SigLIP's
  sigmoids, one per (object, text) pair.

Any checkpoint that ``AutoModel`` loads with ``get_image_features`` and
``get_text_features`` and ``AutoProcessor`` pairs with a processor works as
``--model``; the scoring follows the loaded model (sigmoid for SigLIP).

Both modules load the model through one loader, so a program that uses
Select and Classify holds one copy. Within a run, each object crop goes
through the vision encoder once per model (``ctx.cache``, keyed on the image
and the crop's box and mask), and each prompt through the text encoder once.
Batched calls encode all new crops in one vision pass and all new prompts in
one text pass (at most ``batch_size`` items per pass, option, default 64).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image as PILImage

from visprog.language.signatures import Option, module, not_empty
from visprog.language.values import Detection, Image, Objects
from visprog.running.hub import Placement, load_model
from visprog.running.runtime import Context

if TYPE_CHECKING:  # numpy is imported by the functions that use it: loading the module stays cheap
    import numpy as np

__all__ = ["BACKENDS", "MARGIN", "PROMPT", "Classify", "Select", "masked_crop"]

#: backend -> default model
BACKENDS: dict[str, str | None] = {
    "clip": "openai/clip-vit-large-patch14",
    "siglip": "google/siglip-base-patch16-224",
}
#: The prompt each query or category is put into (option ``prompt``).
PROMPT = "a photo of {}."
#: Extra room around the box on each side, as a fraction of its longer side.
MARGIN = 0.05
#: The contrast class Classify scores a single category against (softmax models only).
_OTHER = "other"
#: The options Select and Classify share (``[modules.Select]``, ``--option Select.NAME=VALUE``).
OPTIONS = [
    Option("prompt", str, PROMPT, "the template each query or category is put into ({} is the text)"),
    Option("batch_size", int, 64, "at most this many crops or texts per forward pass"),
]
#: Panoptic label suffixes that Seg's COCO backend adds ('sky-other-merged', 'tree-merged').
_LABEL_SUFFIXES = ("-other-merged", "-merged", "-other", "-stuff")


# --- the model ------------------------------------------------------------------


def _load_clip(model_id: str, placement: Placement) -> tuple[Any, Any]:
    """(model, processor) of a CLIP-style checkpoint: one loader for Select and Classify."""
    from transformers import AutoModel, AutoProcessor

    if os.path.isdir(model_id) and not os.path.isfile(os.path.join(model_id, "config.json")):
        raise FileNotFoundError(f"no config.json in {model_id}")
    model = AutoModel.from_pretrained(model_id, **placement.pretrained_kwargs())
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ValueError(
            f"{model_id} loads as {type(model).__name__}, which is not an image-text model "
            "(no get_image_features/get_text_features); use a CLIP or SigLIP checkpoint"
        )
    processor = AutoProcessor.from_pretrained(model_id)
    return model, processor


@dataclass
class _Scorer:
    """The loaded model with what scoring needs: device, dtype, prompt, scale."""

    model: Any
    processor: Any
    model_id: str
    device: str
    dtype: Any
    prompt: str
    batch_size: int

    @property
    def sigmoid(self) -> bool:
        return "siglip" in str(getattr(self.model.config, "model_type", ""))

    @property
    def fill(self) -> tuple[int, int, int]:
        """The processor's mean colour: it normalises to zero."""
        mean = getattr(self.processor.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        if isinstance(mean, (int, float)):
            mean = (mean, mean, mean)
        r, g, b = (round(255 * float(m)) for m in mean)
        return (r, g, b)

    def logits(self, image_embeds: Any, text_embeds: Any) -> Any:
        """(objects, texts) logits from unit-norm embeddings, in float32, as the model's forward computes them."""
        sims = image_embeds.float() @ text_embeds.float().T
        out = sims * self.model.logit_scale.detach().float().exp()
        bias = getattr(self.model, "logit_bias", None)
        return out + bias.detach().float() if bias is not None else out

    def encode_images(self, crops: list[Image]) -> Any:
        import torch

        chunks = []
        with torch.inference_mode():
            for k in range(0, len(crops), self.batch_size):
                pixels = self.processor.image_processor(images=crops[k : k + self.batch_size], return_tensors="pt")
                pixel_values = pixels["pixel_values"].to(device=self.device, dtype=self.dtype)
                chunks.append(_pooled(self.model.get_image_features(pixel_values=pixel_values)))
        return _unit(torch.cat(chunks))

    def encode_texts(self, texts: list[str]) -> Any:
        import torch

        tokenizer = self.processor.tokenizer
        limit = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        if self.sigmoid:  # SigLIP was trained on texts padded to 64 tokens
            kwargs: dict[str, Any] = {"padding": "max_length", "max_length": min(64, limit)}
        else:
            kwargs = {"padding": True, "max_length": min(int(tokenizer.model_max_length), limit)}
        chunks = []
        with torch.inference_mode():
            for k in range(0, len(texts), self.batch_size):
                tokens = tokenizer(texts[k : k + self.batch_size], truncation=True, return_tensors="pt", **kwargs)
                tokens = {n: v.to(self.device) for n, v in tokens.items()}
                chunks.append(_pooled(self.model.get_text_features(**tokens)))
        return _unit(torch.cat(chunks))


def _pooled(out: Any) -> Any:
    """The projected embeddings: a tensor (transformers 4) or the output's pooler_output (transformers 5)."""
    return out if hasattr(out, "dim") else out.pooler_output


def _unit(x: Any) -> Any:
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)


def _scorer(ctx: Context) -> _Scorer:
    model, processor = load_model(ctx, _load_clip)
    return _Scorer(
        model=model,
        processor=processor,
        model_id=ctx.model_id,
        device=ctx.runtime.device,
        dtype=ctx.runtime.torch_dtype(),
        prompt=str(ctx.option("prompt")),
        batch_size=max(1, int(ctx.option("batch_size"))),
    )


# --- crops and their features ---------------------------------------------------


def _crop_window(det: Detection, size: tuple[int, int], margin: float = MARGIN) -> tuple[int, int, int]:
    """(left, top, side) of the square crop around ``det``'s box; it may reach outside the image."""
    x0, y0, x1, y1 = det.int_box(size)
    side = max(x1 - x0, y1 - y0, 1)
    side = max(1, math.ceil(round(side * (1 + 2 * margin), 6)))  # round: 100 * 1.1 is 110.00000000000001
    left = math.floor((x0 + x1 - side) / 2)
    top = math.floor((y0 + y1 - side) / 2)
    return left, top, side


def masked_crop(
    image: Image,
    det: Detection,
    fill: tuple[int, int, int] = (128, 128, 128),
    *,
    margin: float = MARGIN,
    pixels: np.ndarray | None = None,
) -> Image:
    """The object alone on ``fill``: a square around its box, grown by ``margin`` of the longer side on each side.

    Pixels outside the object's region (``Detection.region``: its mask, else
    its box) and outside the image are ``fill``. ``pixels`` is the image as
    an RGB uint8 array, when the caller already has it.
    """
    import numpy as np

    w, h = image.size
    rgb = pixels if pixels is not None else np.asarray(image.convert("RGB"))
    region = det.region((w, h))
    left, top, side = _crop_window(det, (w, h), margin)
    out = np.empty((side, side, 3), dtype=np.uint8)
    out[:] = fill
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + side, w), min(top + side, h)
    if sx1 > sx0 and sy1 > sy0:
        patch = out[sy0 - top : sy1 - top, sx0 - left : sx1 - left]
        keep = region[sy0:sy1, sx0:sx1]
        patch[keep] = rgb[sy0:sy1, sx0:sx1][keep]
    return PILImage.fromarray(out)


def _crop_key(det: Detection, size: tuple[int, int]) -> tuple[Any, ...]:
    """What a crop depends on: the rounded box and the mask's content."""
    import numpy as np

    digest = None
    if det.mask is not None:
        mask = np.ascontiguousarray(det.mask)
        digest = hashlib.blake2b(np.packbits(mask).tobytes() + repr(mask.shape).encode(), digest_size=16).hexdigest()
    return (det.int_box(size), digest)


def _image_embeddings(s: _Scorer, items: Sequence[tuple[Image, Sequence[Detection]]], ctx: Context) -> list[Any]:
    """Unit-norm crop embeddings, one (objects, dim) tensor per item; new crops go through one vision pass."""
    import numpy as np
    import torch

    name = f"clip-crops:{s.model_id}:{s.device}:{s.dtype}"
    caches: list[dict[Any, Any]] = [ctx.cache.get(image, name, dict) for image, _ in items]
    keys = [[_crop_key(det, image.size) for det in dets] for image, dets in items]
    pending: dict[tuple[int, Any], tuple[Image, Detection]] = {}
    for (image, dets), cache, item_keys in zip(items, caches, keys, strict=True):
        for det, key in zip(dets, item_keys, strict=True):
            if key not in cache:
                pending.setdefault((id(image), key), (image, det))
    if pending:
        arrays: dict[int, np.ndarray] = {}
        crops = []
        for image, det in pending.values():
            if id(image) not in arrays:
                arrays[id(image)] = np.asarray(image.convert("RGB"))
            crops.append(masked_crop(image, det, s.fill, pixels=arrays[id(image)]))
        embeds = s.encode_images(crops)
        by_image = {id(image): cache for (image, _), cache in zip(items, caches, strict=True)}
        for ((image_id, key), _), e in zip(pending.items(), embeds, strict=True):
            by_image[image_id][key] = e
    return [torch.stack([cache[key] for key in item_keys]) for cache, item_keys in zip(caches, keys, strict=True)]


def _text_embeddings(s: _Scorer, texts: Sequence[str], ctx: Context) -> dict[str, Any]:
    """Unit-norm prompt embeddings by text; new prompts go through one text pass."""
    cache: dict[str, Any] = ctx.cache.get(s.model, f"clip-texts:{s.model_id}:{s.device}:{s.dtype}", dict)
    new = list(dict.fromkeys(t for t in texts if t not in cache))
    if new:
        for t, e in zip(new, s.encode_texts(new), strict=True):
            cache[t] = e
    return {t: cache[t] for t in texts}


def _prompt(s: _Scorer, text: str) -> str:
    return s.prompt.format(text) if "{}" in s.prompt else f"{s.prompt} {text}"


# --- Select ---------------------------------------------------------------------


def _split(text: str) -> list[str]:
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _label_key(text: str) -> str:
    t = text.strip().lower()
    for suffix in _LABEL_SUFFIXES:
        if t.endswith(suffix):
            t = t[: -len(suffix)]
            break
    return t.replace("-", " ").replace("_", " ").strip()


def _of_category(objects: Sequence[Detection], category: str | None) -> list[Detection]:
    """The objects whose label is the category (any of several, comma-separated); all when none is."""
    if not category or not category.strip():
        return list(objects)
    wanted = {_label_key(c) for c in category.split(",") if c.strip()}
    matching = [o for o in objects if _label_key(o.label) in wanted]
    return matching or list(objects)


def _select_batch(calls: Sequence[Mapping[str, Any]], ctx: Context) -> list[Objects]:
    jobs = []
    for c in calls:
        queries = _split(str(c["query"]))
        if not queries:
            raise ValueError("Select needs a query (several may be separated by commas), got an empty one")
        jobs.append((c["image"], _of_category(c["object"], c.get("category")), queries))
    work = [j for j in jobs if j[1]]
    if not work:
        return [Objects() for _ in calls]
    s = _scorer(ctx)
    image_embeds = iter(_image_embeddings(s, [(image, objs) for image, objs, _ in work], ctx))
    texts = _text_embeddings(s, [_prompt(s, q) for _, _, qs in work for q in qs], ctx)
    import torch

    outputs: list[Objects] = []
    for _, objs, queries in jobs:
        if not objs:
            outputs.append(Objects())
            continue
        text_embeds = torch.stack([texts[_prompt(s, q)] for q in queries])
        logits = s.logits(next(image_embeds), text_embeds)  # (objects, queries)
        probs = logits.sigmoid() if s.sigmoid else logits.softmax(dim=0)
        best: dict[int, tuple[float, str]] = {}
        for qi, oi in enumerate(probs.argmax(dim=0).tolist()):
            p = float(probs[oi, qi])
            if oi not in best or p > best[oi][0]:
                best[oi] = (p, queries[qi])
        chosen = Objects(_scored(objs[oi], p, objs[oi].label or query) for oi, (p, query) in sorted(best.items()))
        outputs.append(chosen.best_first())
    return outputs


def _scored(det: Detection, score: float, label: str) -> Detection:
    return Detection(det.box, min(max(score, 0.0), 1.0), label, det.mask)


@module(
    aliases=["SELECT"],
    batch=_select_batch,
    backends=BACKENDS,
    default_backend="clip",
    options=OPTIONS,
    validate={"query": not_empty("a query (several may be separated by commas)")},
)
def Select(image: Image, object: Objects, query: str, category: str | None = None, *, ctx: Context) -> Objects:
    """Pick, for each query, the one object that best matches it (CLIP on each object's masked crop).

    Several queries separated by commas give one object each; an object chosen
    by two queries is returned once. Each returned object keeps its box and
    mask; its score is the match probability (CLIP: softmax over the
    candidate objects, so a lone candidate scores 1.0; SigLIP: sigmoid).
    Objects come best first; with no candidates the result is empty.

    Args:
        image: the image the objects come from.
        object: the candidate objects (e.g. from Seg, Loc, Mask or FaceDet).
        query: what to pick, e.g. 'dog' or 'man,woman' (one object per query).
        category: optional coarse class of what to pick, e.g. 'person': only
            the candidates labelled with it are considered (all of them when
            none is). Use None when unsure.
    """
    return _select_batch([{"image": image, "object": object, "query": query, "category": category}], ctx)[0]


# --- Classify -------------------------------------------------------------------


def _classify_batch(calls: Sequence[Mapping[str, Any]], ctx: Context) -> list[Objects]:
    jobs = []
    for c in calls:
        given = c["categories"]
        names = given.split(",") if isinstance(given, str) else [str(v) for v in given]
        cats = list(dict.fromkeys(n.strip() for n in names if n.strip()))
        if not cats:
            raise ValueError("Classify needs at least one category, got an empty list")
        jobs.append((c["image"], list(c["object"]), cats))
    work = [j for j in jobs if j[1]]
    if not work:
        return [Objects() for _ in calls]
    s = _scorer(ctx)

    def candidates(cats: list[str]) -> list[str]:
        # one category alone under a softmax would always score 1: contrast it with 'other', as VisProg does
        return [*cats, _OTHER] if len(cats) == 1 and not s.sigmoid and cats[0].lower() != _OTHER else cats

    image_embeds = iter(_image_embeddings(s, [(image, objs) for image, objs, _ in work], ctx))
    texts = _text_embeddings(s, [_prompt(s, c) for _, _, cats in work for c in candidates(cats)], ctx)
    import torch

    outputs: list[Objects] = []
    for _, objs, cats in jobs:
        if not objs:
            outputs.append(Objects())
            continue
        text_embeds = torch.stack([texts[_prompt(s, c)] for c in candidates(cats)])
        logits = s.logits(next(image_embeds), text_embeds)  # (objects, categories)
        probs = logits.sigmoid() if s.sigmoid else logits.softmax(dim=1)
        probs = probs[:, : len(cats)]
        scores, best = probs.max(dim=1)
        labelled = [_scored(o, float(p), cats[k]) for o, p, k in zip(objs, scores.tolist(), best.tolist(), strict=True)]
        outputs.append(Objects(labelled).best_first())
    return outputs


@module(
    aliases=["CLASSIFY"],
    batch=_classify_batch,
    backends=BACKENDS,
    default_backend="clip",
    options=OPTIONS,
    validate={"categories": not_empty("at least one category")},
)
def Classify(image: Image, object: Objects, categories: list[str], *, ctx: Context) -> Objects:
    """Label every object with the category that best describes it (CLIP on each object's masked crop).

    Each object keeps its box and mask; its label becomes the best category
    and its score that category's probability (CLIP: softmax over the
    categories, a single category being weighed against 'other'; SigLIP:
    sigmoid). Several objects may get the same category. Objects come best
    first; with no objects the result is empty.

    Args:
        image: the image the objects come from.
        object: the objects to label (e.g. faces from FaceDet).
        categories: the labels to choose from, e.g. a List result or
            'cat,dog' (a comma-separated string is split).
    """
    return _classify_batch([{"image": image, "object": object, "categories": categories}], ctx)[0]
