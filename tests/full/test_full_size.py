"""The full tier: every backend's default model at its published size, random weights, on a real photo.

Each test builds its model from the published configuration in ``tests/data/full`` (``build.py``), saves it to a
temporary folder and runs the module once through its own loading path, with the folder as the model id (the
hub-id path, ``from_pretrained``), in float32 and, as a separate test, in half precision: bfloat16 on the cpu
(float16 on a GPU, as a GPU runtime runs models). Tests of one model run one after the other and share its
folder. Random weights give arbitrary answers, so the tests assert what does not depend on them: the outputs'
types and shapes, boxes inside the image, masks of the image's size, and the loaded weights' dtype. One model is
in memory at a time. Run with ``make test-full``; the session ends with the seconds each phase took
(``conftest.py``).
"""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.full.build import BUILDERS, DATA
from tests.full.conftest import Timer
from visprog.language.signatures import ModuleSpec
from visprog.language.values import Detection
from visprog.running.runtime import Context, ModelPool, RunCache, Runtime, resolve_device

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.full

#: the device the runtime picks (cuda, mps, cpu in that order); $VISPROG_DEVICE asks for another
DEVICE = resolve_device(os.environ.get("VISPROG_DEVICE"))
#: the half precision a runtime on this device runs in
HALF = "bfloat16" if DEVICE == "cpu" else "float16"
PRECISIONS = ("float32", HALF)
#: ``built(backend, timer)``: the fixture below
Built = Callable[[str, Timer], Path]


class BFloat16Runtime(Runtime):
    """A cpu runtime that runs models in bfloat16, as a GPU runtime runs them in float16 (``half``: the Runtime
    itself keeps float32 on the cpu)."""

    @property
    def dtype_name(self) -> str:
        return "bfloat16"


def runtime(spec: ModuleSpec, backend: str, folder: Path, precision: str, **options: Any) -> Runtime:
    """A runtime whose ``spec`` module runs ``backend`` on the model in ``folder``, in ``precision``."""
    modules = {spec.name: {"model": str(folder), "backend": backend, **options}}
    if precision == "bfloat16":
        return BFloat16Runtime(device_request=DEVICE, modules=modules, pool=ModelPool(), progress=False)
    return Runtime(DEVICE, half=precision == "float16", modules=modules, pool=ModelPool(), progress=False)


def context(rt: Runtime, spec: ModuleSpec) -> Context:
    return Context(rt, RunCache(), spec.name, spec.backends, spec.default_backend)


def loaded_models(rt: Runtime) -> list[Any]:
    """The torch modules the runtime's pool holds (a model of a (model, processor) pair; a pipeline's parts)."""
    out: list[Any] = []
    for _, value in rt.pool.items():
        for item in value if isinstance(value, tuple) else (value,):
            if hasattr(item, "components"):  # a diffusers pipeline
                out.extend(c for c in item.components.values() if isinstance(c, torch.nn.Module))
            elif isinstance(item, torch.nn.Module):
                out.append(item)
    return out


def assert_weights_in(rt: Runtime, precision: str) -> None:
    models = loaded_models(rt)
    assert models, "the module loaded no model"
    for model in models:
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        assert dtypes == {getattr(torch, precision)}, f"{type(model).__name__} holds {dtypes}, not {precision}"
        assert not model.training


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """``built(backend, timer)``: the backend's full-size folder, built on first use. One folder is on disk at a
    time (Stable Diffusion's weights take 5 GB in float32): building another removes the one before."""
    root = tmp_path_factory.mktemp("full")
    current: dict[str, Path] = {}

    def get(backend: str, timer: Timer) -> Path:
        if backend not in current:
            for folder in current.values():
                shutil.rmtree(folder)
            current.clear()
            with timer("build and save"):
                current[backend] = BUILDERS[backend](root / backend)
        return current[backend]

    yield get
    for folder in current.values():
        shutil.rmtree(folder)


@contextmanager
def loaded(
    timer: Timer, spec: ModuleSpec, backend: str, folder: Path, precision: str, **options: Any
) -> Iterator[Context]:
    """A context for ``spec`` on the model in ``folder``, in ``precision``; the block (the model's load and run)
    is timed, then the loaded weights' dtype is checked and the model freed."""
    rt = runtime(spec, backend, folder, precision, **options)
    try:
        with timer(f"load and run {precision}"):
            yield context(rt, spec)
        assert_weights_in(rt, precision)
    finally:
        rt.pool.clear()
        del rt
        gc.collect()


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def assert_objects(found: Any, size: tuple[int, int], *, masks: bool) -> None:
    """Detections with boxes inside an image of ``size``, scores in [0, 1], and (``masks``) a boolean mask of the
    image's size each, which covers its box."""
    assert isinstance(found, list) and all(isinstance(d, Detection) for d in found)
    w, h = size
    for d in found:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, d.box
        assert isinstance(d.score, float) and 0.0 <= d.score <= 1.0
        if masks:
            assert isinstance(d.mask, np.ndarray) and d.mask.dtype == bool and d.mask.shape == (h, w)
            assert d.mask.any()


# --- Loc ------------------------------------------------------------------------------------

#: Grounding DINO's encoder and Mask2Former's pixel decoder sample their features with multi-scale deformable
#: attention, which calls ``grid_sample`` on a non-contiguous view of the features. torch's cpu ``grid_sample``
#: reads past that view in bfloat16 (torch 2.13: values of order 1e28 to 1e34, hence NaN boxes and no segments,
#: or a segmentation fault that would end the tier), so these two run in half precision on a GPU only.
DEFORMABLE_ATTENTION_BFLOAT16 = pytest.mark.skipif(
    HALF == "bfloat16", reason="torch's cpu grid_sample misreads non-contiguous bfloat16 input (deformable attention)"
)


@pytest.mark.parametrize(
    ("backend", "precision"),
    [
        ("grounding-dino", "float32"),
        pytest.param("grounding-dino", HALF, marks=DEFORMABLE_ATTENTION_BFLOAT16),
        ("owlv2", "float32"),
        ("owlv2", HALF),
    ],
)
def test_loc(backend: str, precision: str, built: Built, timer: Timer) -> None:
    from visprog.modules.detection import Loc

    cat = photo("chelsea")  # 451x300: not square
    # a box threshold of 0: every box the model gives passes
    with loaded(timer, Loc, backend, built(backend, timer), precision, box_threshold=0.0) as ctx:
        found = Loc(image=cat, object="cat", ctx=ctx)
    assert found, "a threshold of 0 keeps boxes"
    assert_objects(found, cat.size, masks=False)
    assert all(d.label == "cat" and d.mask is None for d in found)
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)


# --- Seg and Mask ---------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_seg_sam(precision: str, built: Built, timer: Timer) -> None:
    from visprog.modules.segmentation import Seg

    cat = photo("chelsea")
    # An 8x8 point grid (64 prompts, one batch) instead of the default 32x32: the image encoder, which most of the
    # time goes to, runs at its full size all the same, and the default grid's 1,024 prompts take minutes more.
    # Every mask passes the quality filters, so that there are masks to check.
    options = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    with loaded(timer, Seg, "sam", built("sam", timer), precision, **options) as ctx:
        found = Seg(image=cat, ctx=ctx)
    assert found
    assert_objects(found, cat.size, masks=True)
    assert all(d.label == "" for d in found)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mask(precision: str, built: Built, timer: Timer) -> None:
    from visprog.modules.masks import Mask

    cat = photo("chelsea")
    boxes = [Detection((120, 20, 330, 280), 0.9, "cat"), Detection((0, 0, 100, 100), 0.5, "corner")]
    with loaded(timer, Mask, "sam", built("sam", timer), precision) as ctx:
        found = Mask(image=cat, object=boxes, ctx=ctx)
    # the same objects, in order, with their boxes and labels; a mask of the image's size where SAM gave one
    assert [(d.box, d.label, d.score) for d in found] == [(d.box, d.label, d.score) for d in boxes]
    w, h = cat.size
    for d in found:
        assert d.mask is None or (d.mask.dtype == bool and d.mask.shape == (h, w) and d.mask.any())


@pytest.mark.parametrize("precision", ["float32", pytest.param(HALF, marks=DEFORMABLE_ATTENTION_BFLOAT16)])
def test_seg_mask2former(precision: str, built: Built, timer: Timer) -> None:
    import json

    from visprog.modules.segmentation import Seg

    cat = photo("chelsea")
    config = json.loads((DATA / "mask2former-swin-base-coco-panoptic" / "config.json").read_text())
    labels = set(config["id2label"].values())
    # Every query's class and mask pass: transformers weighs a mask's probabilities by its class's probability
    # (about 1/134 for random weights) before the mask threshold, and keeps a segment however much of it other
    # segments cover.
    options = {"threshold": 0.0, "mask_threshold": 0.0, "overlap_mask_area_threshold": 0.0}
    with loaded(timer, Seg, "mask2former", built("mask2former", timer), precision, **options) as ctx:
        found = Seg(image=cat, ctx=ctx)
    assert found
    assert_objects(found, cat.size, masks=True)
    assert {d.label for d in found} <= labels  # COCO panoptic categories


# --- Select and Classify --------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", ["clip", "siglip"])
def test_select_and_classify(backend: str, precision: str, built: Built, timer: Timer) -> None:
    from visprog.modules.clip import Classify, Select

    cat = photo("chelsea")
    w, h = cat.size
    mask = np.zeros((h, w), dtype=bool)
    mask[40:260, 140:320] = True
    objects = [
        Detection((140, 40, 320, 260), 0.9, "", mask),
        Detection((0, 0, 120, 150), 0.8, ""),
        Detection((330, 150, 451, 300), 0.7, ""),
    ]
    with loaded(timer, Select, backend, built(backend, timer), precision) as ctx:
        chosen = Select(image=cat, object=objects, query="cat,face", ctx=ctx)
        labelled = Classify(image=cat, object=objects, categories=["cat", "dog", "flag"], ctx=ctx)
    assert 1 <= len(chosen) <= 2
    assert_objects(chosen, cat.size, masks=False)
    assert {d.box for d in chosen} <= {d.box for d in objects} and {d.label for d in chosen} <= {"cat", "face"}
    assert sorted(d.box for d in labelled) == sorted(d.box for d in objects)
    assert {d.label for d in labelled} <= {"cat", "dog", "flag"}
    assert_objects(labelled, cat.size, masks=False)


# --- Vqa ------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", ["blip", "vlm"])
def test_vqa(backend: str, precision: str, built: Built, timer: Timer) -> None:
    from visprog.modules.vqa import Vqa

    astronaut = photo("astronaut")
    # the default answer length: 10 tokens (20 for vlm)
    with loaded(timer, Vqa, backend, built(backend, timer), precision) as ctx:
        answer = Vqa(image=astronaut, question="What is the person wearing?", ctx=ctx)
    assert isinstance(answer, str)
    assert answer == answer.strip().lower() and "\n" not in answer


# --- Replace --------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_replace(precision: str, built: Built, timer: Timer) -> None:
    from visprog.modules.inpainting import Replace, dilated_mask

    cat = photo("chelsea")
    objects = [Detection((120, 20, 330, 280), 0.9, "cat")]
    region = dilated_mask(objects, cat.size)
    # One denoising step (num_inference_steps) at the smallest working size (size: 64 pixels, 8x8 latents): the
    # UNet, the VAE, the text encoder and the safety checker each run at their full size, in seconds; the
    # defaults (50 steps at 512 pixels) take many minutes on a cpu.
    options = {"num_inference_steps": 1, "size": 64}
    with loaded(timer, Replace, "sd-inpainting", built("sd-inpainting", timer), precision, **options) as ctx:
        edited = Replace(image=cat, object=objects, prompt="a red ball", ctx=ctx)
    assert isinstance(edited, Image.Image) and edited.mode == "RGB" and edited.size == cat.size
    # every pixel outside the region is the input's
    assert np.array_equal(np.asarray(edited)[~region], np.asarray(cat)[~region])


# --- Ocr ------------------------------------------------------------------------------------


def test_ocr_and_text(timer: Timer) -> None:
    """Ocr and Text on rapidocr's real ONNX models (its wheel ships them): no random weights, no dtype option."""
    from visprog.modules.ocr import Ocr, Text

    page = photo("page")
    rt = Runtime(DEVICE, modules={}, pool=ModelPool(), progress=False)
    ctx = Context(rt, RunCache(), "Ocr", Ocr.backends, Ocr.default_backend)
    with timer("load and run onnx"):
        text = Ocr(image=page, ctx=ctx)
        lines = Text(image=page, ctx=Context(rt, ctx.cache, "Text", Text.backends, Text.default_backend))
    assert isinstance(text, str) and text.strip()
    assert_objects(lines, page.size, masks=False)
    assert [d.label for d in lines] and all(d.label.strip() for d in lines)
