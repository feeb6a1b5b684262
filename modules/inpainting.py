"""Replace: repaint objects with what a text prompt describes (Stable Diffusion inpainting).

Backends (``--backend Replace=NAME``):

- ``sd-inpainting`` (default): diffusers' ``StableDiffusionInpaintPipeline``
  with ``stable-diffusion-v1-5/stable-diffusion-inpainting``, the community
  mirror of the retired ``runwayml/stable-diffusion-inpainting`` checkpoint
  that VisProg used. ``--model Replace=...`` takes any diffusers inpainting
  pipeline (a hub id or a folder).

The edit is confined to the objects: the region repainted is the union of
their masks (their boxes when they have none), grown by a few pixels, and every
pixel outside it is the input's pixel, unchanged.

Options (``[modules.Replace]`` in the config file):

- ``num_inference_steps`` (50), ``guidance_scale`` (7.5), ``negative_prompt``;
- ``seed`` (0): the same seed, image, objects and prompt give the same edit;
- ``size`` (512): the longest side of the image Stable Diffusion works on
  (each side a multiple of 8); the result is resized back to the input's size;
- ``dilate``: how many pixels the region grows (default: 1% of the longest
  side, at least 1);
- ``safety_checker`` (true): keep the checkpoint's NSFW filter; when it flags
  an edit, the step fails instead of returning a black patch;
- ``progress`` (false): show diffusers' progress bar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PIL import Image as PILImage

from visprog.errors import VisprogError
from visprog.language.objects import as_objects
from visprog.language.signatures import Option, module
from visprog.language.values import Image, Objects
from visprog.running.hub import Placement, load_model
from visprog.running.runtime import Context

if TYPE_CHECKING:  # numpy is imported by the functions that use it: loading the module stays cheap
    import numpy as np

__all__ = ["Replace", "default_dilation", "dilated_mask", "working_size"]

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
#: Stable Diffusion 1.5's native resolution
DEFAULT_SIZE = 512
#: the working size is a multiple of this (the VAE downsamples by 8)
MULTIPLE = 8
#: the smallest side Stable Diffusion is run at (8 latent pixels)
MIN_SIDE = 64


def default_dilation(size: tuple[int, int]) -> int:
    """How many pixels the region grows by default: 1% of the image's longest side, at least 1."""
    return max(1, round(max(size) / 100))


def dilated_mask(objects: Objects, size: tuple[int, int], dilate: int | None = None) -> np.ndarray:
    """The region Replace repaints: the union of the objects' regions, grown by ``dilate`` pixels.

    Each object's region is its mask, else its box (:meth:`Detection.region`).
    ``size`` is the image's (width, height); ``dilate`` defaults to
    :func:`default_dilation`. Returns a boolean (height, width) array; a pixel
    is in the region when it lies within ``dilate`` pixels (Euclidean) of an
    object's pixel.
    """
    import numpy as np

    mask = as_objects(objects).union_mask(size)
    radius = default_dilation(size) if dilate is None else int(dilate)
    if radius < 0:
        raise ValueError(f"dilate must be 0 or more pixels, got {dilate}")
    if radius > 0 and mask.any() and not mask.all():
        from skimage.morphology import isotropic_dilation

        mask = np.asarray(isotropic_dilation(mask, radius), dtype=bool)
    return mask


def working_size(size: tuple[int, int], longest: int = DEFAULT_SIZE) -> tuple[int, int]:
    """The (width, height) Stable Diffusion runs at: the image's aspect ratio, the longest side
    ``longest``, each side rounded to a multiple of 8 and at least 64."""
    if longest < MIN_SIDE:
        raise ValueError(f"size must be at least {MIN_SIDE}, got {longest}")
    w, h = size
    scale = longest / max(w, h)

    def side(n: int) -> int:
        return max(MIN_SIDE, round(n * scale / MULTIPLE) * MULTIPLE)

    return side(w), side(h)


# --- the pipeline ------------------------------------------------------------------------


def _pipeline(ctx: Context, safety_checker: bool) -> Any:
    """The inpainting pipeline on the runtime's device and dtype, loaded once per process."""

    def load(model_id: str, placement: Placement, **extra: Any) -> Any:
        from diffusers import StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline.from_pretrained(model_id, **placement.pretrained_kwargs(), **extra)
        # A pipeline has .to but no .eval, so load_model leaves it where it is: move it here.
        return pipe.to(placement.device)

    # Two loaders, so that the pool keeps the two variants apart.
    def load_with_safety_checker(model_id: str, placement: Placement) -> Any:
        return load(model_id, placement)

    def load_without_safety_checker(model_id: str, placement: Placement) -> Any:
        return load(model_id, placement, safety_checker=None, requires_safety_checker=False)

    return load_model(ctx, load_with_safety_checker if safety_checker else load_without_safety_checker)


def _generator(device: str, seed: int) -> Any:
    import torch

    # mps has no generator of its own; diffusers draws the noise on the cpu then.
    return torch.Generator(device="cpu" if device.startswith("mps") else device).manual_seed(seed)


#: Replace's options (``[modules.Replace]`` in the config file, ``--option Replace.NAME=VALUE``).
OPTIONS = [
    Option("num_inference_steps", int, 50, "denoising steps"),
    Option("guidance_scale", float, 7.5, "how closely the result follows the prompt"),
    Option("negative_prompt", str, None, "what the result should not show"),
    Option("seed", int, 0, "the same seed, image, objects and prompt give the same edit"),
    Option("size", int, DEFAULT_SIZE, "the longest side of the image Stable Diffusion works on"),
    Option("dilate", int, None, "pixels the region grows by (default: 1% of the longest side, at least 1)"),
    Option("safety_checker", bool, True, "keep the checkpoint's NSFW filter (a flagged edit fails the step)"),
    Option("progress", bool, False, "show diffusers' progress bar"),
]


@module(
    aliases=["REPLACE"],
    backends={"sd-inpainting": DEFAULT_MODEL},
    default_backend="sd-inpainting",
    options=OPTIONS,
)
def Replace(image: Image, object: Objects, prompt: str, ctx: Context) -> Image:
    """Repaint the objects with what the prompt describes, keeping the rest of the image exactly.

    The repainted region is the union of the objects' masks (their boxes when
    they have no mask), grown by a few pixels; everything outside it is left
    unchanged. With no objects, the image is returned unchanged.

    Args:
        image: the image to edit.
        object: the objects to replace, e.g. the output of Mask (after Loc) or Select (after Seg).
        prompt: what to paint in their place, a short description such as 'a red sports car'.
    """
    import numpy as np

    rgb = image.convert("RGB") if image.mode != "RGB" else image.copy()
    if not object:
        return rgb
    dilate = ctx.option("dilate")
    region = dilated_mask(object, rgb.size, None if dilate is None else int(dilate))
    if not region.any():
        return rgb
    work_w, work_h = working_size(rgb.size, int(ctx.option("size")))
    checker, progress = bool(ctx.option("safety_checker")), bool(ctx.option("progress"))
    pipe = _pipeline(ctx, checker)
    pipe.set_progress_bar_config(disable=not progress)

    # Any pixel the region touches is repainted: a box-filtered mask, kept where it is above 0.
    mask = PILImage.fromarray(region.astype(np.uint8) * 255).resize((work_w, work_h), PILImage.Resampling.BOX)
    mask = mask.point(lambda v: 255 if v > 0 else 0)
    negative = ctx.option("negative_prompt")

    import torch

    with torch.inference_mode():
        result = pipe(
            prompt=prompt,
            image=rgb.resize((work_w, work_h), PILImage.Resampling.LANCZOS),
            mask_image=mask,
            height=work_h,
            width=work_w,
            num_inference_steps=int(ctx.option("num_inference_steps")),
            guidance_scale=float(ctx.option("guidance_scale")),
            negative_prompt=None if negative is None else str(negative),
            generator=_generator(ctx.runtime.device, int(ctx.option("seed"))),
            output_type="pil",
        )
    flagged = getattr(result, "nsfw_content_detected", None)
    if flagged and any(flagged):
        raise VisprogError(
            f"the safety checker flagged the edit for prompt {prompt!r} (its output is a black image); "
            "try another prompt or seed, or turn the filter off with safety_checker = false "
            "under [modules.Replace] in the config file"
        )
    painted = np.asarray(result.images[0].convert("RGB").resize(rgb.size, PILImage.Resampling.LANCZOS))
    pixels = np.where(region[:, :, None], painted, np.asarray(rgb))
    return PILImage.fromarray(pixels.astype(np.uint8), "RGB")
