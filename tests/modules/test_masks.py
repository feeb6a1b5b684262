"""Tests for Mask (modules/masks.py): SAM masks from boxes, offline on tiny random models.

The tiny SAM is the segmentation tests' (built from a config, saved to a
folder, loaded through the folder as the model id). Mask's masks are compared
mask for mask with transformers' own box-prompt path (``SamProcessor`` with
``input_boxes``, ``SamModel`` on the pixels, ``post_process_masks``). A random
SAM's mask logits sit around a per-box offset, so the tests set
``mask_threshold`` from the logits transformers itself computes, such that the
masks are partial (neither empty nor the whole image), as a trained SAM's are.
The end-to-end test runs ``Loc`` -> ``Mask`` -> ``Replace`` on tiny Grounding
DINO, SAM and Stable Diffusion inpainting models.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from visprog.modules import masks
from visprog.modules.inpainting import dilated_mask
from visprog.modules.masks import Mask
from visprog.modules.segmentation import SAM_EMBEDDING_CACHE, Seg, load_sam

from tests.modules.test_clip import _clip_folder
from tests.modules.test_detection import dino_dir
from tests.modules.test_inpainting import FAST, build_tiny_pipeline
from tests.modules.test_segmentation import SAM_OPTIONS, astronaut, sam_dir, small_astronaut
from visprog.errors import StepError
from visprog.language.signatures import ModuleSpec, Registry
from visprog.language.values import Detection
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import Context, ModelPool, RunCache, Runtime

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

__all__ = ["astronaut", "dino_dir", "sam_dir", "small_astronaut"]  # fixtures shared with other module tests

#: Boxes on the 192x160 astronaut: her face, her upper body, the flag behind her, a small one on her shoulder.
BOXES = [(60.0, 8.0, 110.0, 70.0), (20.0, 10.0, 90.0, 120.0), (100.0, 30.0, 180.0, 100.0), (50.0, 50.0, 60.0, 60.0)]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a busy 2-core machine, more threads mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clip_folder(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


def objects(boxes: Sequence[tuple[float, float, float, float]] = BOXES) -> list[Detection]:
    return [Detection(box, 0.9 - 0.1 * k, f"thing {k}") for k, box in enumerate(boxes)]


def runtime(folder: Path, **options: Any) -> Runtime:
    return Runtime(device_request="cpu", modules={"Mask": {"model": str(folder), **options}})


def context(rt: Runtime, cache: RunCache | None = None) -> Context:
    return Context(rt, cache or RunCache(), "Mask", Mask.backends, Mask.default_backend)


# --- transformers' own box-prompt path ---------------------------------------------------------------


def reference(folder: Path, image: Image.Image, boxes: Sequence[Any], multimask: bool) -> tuple[Any, Any, Any]:
    """SamProcessor + SamModel on the pixels with box prompts: each box's low-res logits of its best mask
    (by predicted IoU), and the processor's inputs (for post-processing)."""
    from transformers import SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    model = SamModel.from_pretrained(folder).eval()
    processor = SamProcessor(image_processor=SamImageProcessorPil.from_pretrained(folder))
    inputs = processor(images=image, input_boxes=[[list(b) for b in boxes]], return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs, multimask_output=multimask)
    best = out.iou_scores[0].argmax(dim=-1)
    chosen = out.pred_masks[0][torch.arange(len(boxes)), best][:, None]
    return chosen, processor, inputs


def reference_masks(folder: Path, image: Image.Image, boxes: Sequence[Any], multimask: bool, threshold: float) -> Any:
    chosen, processor, inputs = reference(folder, image, boxes, multimask)
    full = processor.post_process_masks(
        [chosen], inputs["original_sizes"], inputs["reshaped_input_sizes"], mask_threshold=threshold
    )[0]
    return full[:, 0].numpy()


def partial_threshold(folder: Path, image: Image.Image, boxes: Sequence[Any], multimask: bool = False) -> float:
    """A logit threshold that makes as many of the boxes' masks partial as one can: the median of one box's
    mask logits (so that mask is about half the image), the box whose median the most boxes' logits straddle."""
    chosen, _, _ = reference(folder, image, boxes, multimask)
    logits = chosen[:, 0].flatten(1)
    lows, highs = logits.min(dim=-1).values, logits.max(dim=-1).values
    medians = [float(m) for m in logits.median(dim=-1).values]
    return max(medians, key=lambda t: int(((lows < t) & (t < highs)).sum()))


# --- declaration -------------------------------------------------------------------------------------


def test_declaration_aliases_backends_and_options() -> None:
    assert isinstance(Mask, ModuleSpec)
    assert [p.name for p in Mask.params] == ["image", "object"]
    assert str(Mask.returns) == "Objects" and Mask.frame == "image"
    assert Mask.backends == {"sam": "facebook/sam-vit-base", "segment-anything": None} and Mask.default_backend == "sam"
    assert masks.BACKENDS.keys() == Mask.backends.keys()
    assert [o.name for o in Mask.options] == ["backend", "model", "multimask", "mask_threshold"]
    reg = Registry()
    reg.register(Mask)
    assert reg["SEGMENT_BOXES"] is Mask and reg["SAM"] is Mask and reg["mask"] is Mask
    assert default_registry()["SegmentBoxes"].fn is Mask.fn  # installed through the entry point


def test_import_does_not_import_torch() -> None:
    code = "import sys, visprog.modules.masks; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- masks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multimask", [False, True])
def test_masks_are_transformers_box_prompt_masks(sam_dir: Path, small_astronaut: Image.Image, multimask: bool) -> None:
    threshold = partial_threshold(sam_dir, small_astronaut, BOXES, multimask)
    given = objects()
    found = Mask(small_astronaut, given, ctx=context(runtime(sam_dir, multimask=multimask, mask_threshold=threshold)))
    expected = reference_masks(sam_dir, small_astronaut, BOXES, multimask, threshold)
    # one object per object given, in order, with its box, score and label
    assert len(found) == len(given)
    assert [(d.box, d.score, d.label) for d in found] == [(d.box, d.score, d.label) for d in given]
    assert all(g.mask is None for g in given)  # the objects given are not changed
    for d, mask in zip(found, expected, strict=True):
        if mask.any():
            assert d.mask is not None and d.mask.dtype == bool and d.mask.shape == (160, 192)
            assert np.array_equal(d.mask, mask)
        else:  # SAM found no pixel above the threshold: the object keeps its box as its region
            assert d.mask is None
    # masks partial by the threshold's choice, and the boxes make a difference
    partial = [d.mask for d in found if d.mask is not None and 0.0 < d.mask.mean() < 1.0]
    assert len(partial) >= 2
    assert not np.array_equal(partial[0], partial[1])


def test_a_box_gets_the_same_mask_alone_or_among_many(sam_dir: Path, small_astronaut: Image.Image) -> None:
    """Twelve boxes in one decoder call, upscaled in chunks, give each box the mask it gets alone."""
    ctx = context(runtime(sam_dir, mask_threshold=partial_threshold(sam_dir, small_astronaut, BOXES)))
    many = Mask(small_astronaut, objects(BOXES * 3), ctx=ctx)
    assert len(many) == 12 and sum(d.mask is not None for d in many) >= 6
    for d in many:
        (alone,) = Mask(small_astronaut, [Detection(d.box)], ctx=ctx)
        assert (d.mask is None and alone.mask is None) or np.array_equal(d.mask, alone.mask)


def test_multimask_keeps_the_best_of_three_and_single_mask_differs(sam_dir: Path, small_astronaut: Image.Image) -> None:
    chosen, _, _ = reference(sam_dir, small_astronaut, BOXES, True)
    single, _, _ = reference(sam_dir, small_astronaut, BOXES, False)
    assert not torch.equal(chosen, single)  # the option changes which mask SAM gives
    threshold = float(torch.cat([chosen.flatten(), single.flatten()]).median())
    one = Mask(small_astronaut, objects(), ctx=context(runtime(sam_dir, mask_threshold=threshold)))
    three = Mask(small_astronaut, objects(), ctx=context(runtime(sam_dir, mask_threshold=threshold, multimask=True)))
    assert any(not np.array_equal(a.mask, b.mask) for a, b in zip(one, three, strict=True))


def test_objects_with_nothing_to_prompt_or_no_pixel_come_back_as_they_were(
    sam_dir: Path, small_astronaut: Image.Image
) -> None:
    threshold = partial_threshold(sam_dir, small_astronaut, BOXES)
    own = np.zeros((160, 192), dtype=bool)
    own[10:20, 10:20] = True
    given = [
        Detection(BOXES[0], 0.9, "face"),
        Detection((200.0, 10.0, 250.0, 50.0), 0.8, "off the image"),
        Detection((40.0, 40.0, 40.0, 90.0), 0.7, "no width"),
        Detection((10.0, 10.0, 20.0, 20.0), 0.6, "segment", own),
    ]
    found = Mask(small_astronaut, given, ctx=context(runtime(sam_dir, mask_threshold=threshold)))
    assert [d.label for d in found] == ["face", "off the image", "no width", "segment"]
    assert found[0].mask is not None and found[0].mask.any()
    assert found[1] is given[1] and found[2] is given[2]  # no box on the image: nothing to prompt SAM with
    assert found[3].mask is not None and not np.array_equal(found[3].mask, own)  # SAM's mask replaces its own
    # a threshold no logit reaches: SAM finds no pixel, and every object keeps what it had
    none = Mask(small_astronaut, given, ctx=context(runtime(sam_dir, mask_threshold=1e6)))
    assert [d is g for d, g in zip(none, given, strict=True)] == [True] * 4


def test_no_objects_load_no_model(small_astronaut: Image.Image) -> None:
    rt = Runtime(device_request="cpu", modules={"Mask": {"model": "visprog-test/not-a-model"}})
    assert Mask(small_astronaut, [], ctx=context(rt)) == []
    assert not rt.pool.loads


def test_missing_weights_name_the_module_and_model(small_astronaut: Image.Image) -> None:
    rt = Runtime(device_request="cpu", modules={"Mask": {"model": "visprog-test/not-a-model"}})
    reg = Registry()
    reg.register(Mask)
    program = "OBJ0=Mask(image=IMAGE, object=BOX)\nRESULT=OBJ0\n"
    with pytest.raises(StepError) as err:
        Interpreter(reg, rt).run(program, {"IMAGE": small_astronaut, "BOX": objects()})
    assert "Mask" in str(err.value) and "visprog-test/not-a-model" in str(err.value)


# --- one image embedding, one decoder call -----------------------------------------------------------------


def test_seg_and_mask_share_the_image_embedding_and_masks_batch_per_image(
    sam_dir: Path, small_astronaut: Image.Image, astronaut: Image.Image
) -> None:
    rt = Runtime(
        device_request="cpu",
        modules={"Seg": {"model": str(sam_dir), **SAM_OPTIONS}, "Mask": {"model": str(sam_dir)}},
    )
    model, _ = load_sam(context(rt))
    encoder_calls: list[int] = []
    box_decoder_calls: list[int] = []  # the number of boxes of each decoder call prompted with boxes

    def count_boxes(_m: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs.get("input_boxes") is not None:
            box_decoder_calls.append(int(kwargs["input_boxes"].shape[1]))

    hooks = [
        model.vision_encoder.register_forward_hook(lambda *_: encoder_calls.append(1)),
        model.prompt_encoder.register_forward_pre_hook(count_boxes, with_kwargs=True),
    ]
    reg = Registry()
    reg.register_all([Seg, Mask])
    program = (
        "OBJ0=Seg(image=IMAGE)\n"
        "OBJ1=Mask(image=IMAGE, object=BOX)\n"
        "OBJ2=SAM(image=IMAGE, object=FEW)\n"
        "OBJ3=SEGMENT_BOXES(image=OTHER, object=BOX)\n"
        "OBJ4=Mask(image=IMAGE, object=OBJ0)\n"
        "RESULT=OBJ4\n"
    )
    inputs = {"IMAGE": small_astronaut, "OTHER": astronaut, "BOX": objects(), "FEW": objects(BOXES[:2])}
    cache = RunCache()
    try:
        trace = Interpreter(reg, rt).run(program, inputs, cache=cache)
    finally:
        for h in hooks:
            h.remove()
    segments = trace.values["OBJ0"]
    assert segments
    # SAM's image encoder ran once per image: Seg's embedding of IMAGE served the three Mask steps on it
    assert len(encoder_calls) == 2
    assert cache.computed[SAM_EMBEDDING_CACHE.format(model_id=str(sam_dir))] == 2
    # The Mask steps ready with Seg ran as one batch: one decoder call per image, with every box on it
    # (4 + 2 on IMAGE, 4 on OTHER); the step on Seg's segments, ready later, one more.
    assert box_decoder_calls == [6, 4, len(segments)]
    assert [len(trace.values[name]) for name in ("OBJ1", "OBJ2", "OBJ3")] == [4, 2, 4]
    assert [(d.box, d.label) for d in trace.values["OBJ4"]] == [(d.box, d.label) for d in segments]
    # a box gets the same mask whether it is prompted with 4 or with 6 boxes
    for a, b in zip(trace.values["OBJ1"][:2], trace.values["OBJ2"], strict=True):
        assert (a.mask is None and b.mask is None) or np.array_equal(a.mask, b.mask)
    sam_loads = [n for key, n in rt.pool.loads.items() if "_load_sam" in str(key[0])]
    assert sam_loads == [1]


# --- the edits use the masks ---------------------------------------------------------------------------------

PICK_AND_EDIT = """\
OBJ0=Mask(image=IMAGE, object=BOX)
OBJ1=Select(image=IMAGE, object=OBJ0, query='face', category=None)
IMAGE0=ColorPop(image=IMAGE, object=OBJ1)
IMAGE1=BgBlur(image=IMAGE, object=OBJ0)
FINAL_RESULT=Result(var=IMAGE1)
"""


def test_select_keeps_the_masks_and_colorpop_and_bgblur_follow_them(
    sam_dir: Path, clip_dir: Path, small_astronaut: Image.Image
) -> None:
    given = objects(BOXES[:2])  # the face and the upper body
    threshold = partial_threshold(sam_dir, small_astronaut, BOXES[:2])
    modules = {"Mask": {"model": str(sam_dir), "mask_threshold": threshold}, "Select": {"model": str(clip_dir)}}
    trace = Interpreter(default_registry(), Runtime(device_request="cpu", modules=modules)).run(
        PICK_AND_EDIT, {"IMAGE": small_astronaut, "BOX": given}
    )
    outlined, (picked,) = trace.values["OBJ0"], trace.values["OBJ1"]
    assert all(d.mask is not None and 0.0 < d.mask.mean() < 1.0 for d in outlined), "masks not partial"
    # Select returns one of Mask's objects with its mask
    twin = next(d for d in outlined if d.label == picked.label)
    assert picked.box == twin.box and picked.mask is not None and np.array_equal(picked.mask, twin.mask)
    original = np.asarray(small_astronaut).astype(int)
    # ColorPop: the picked object's mask in colour, everything else grey, its box's pixels outside the mask too
    popped = np.asarray(trace.values["IMAGE0"]).astype(int)
    assert np.array_equal(popped[picked.mask], original[picked.mask])
    outside = ~picked.mask
    assert (popped[outside].max(axis=-1) - popped[outside].min(axis=-1) <= 1).all()
    # BgBlur: the masks' pixels sharp, the rest blurred
    union = np.logical_or.reduce([d.region(small_astronaut.size) for d in outlined])
    blurred = np.asarray(trace.result).astype(int)
    assert np.array_equal(blurred[union], original[union]) and (blurred[~union] != original[~union]).any()


# --- Loc -> Mask -> Replace ------------------------------------------------------------------------------------

EDIT = """\
BOX0=Loc(image=IMAGE, object='person')
OBJ0=Mask(image=IMAGE, object=BOX0)
IMAGE0=Replace(image=IMAGE, object=OBJ0, prompt='a red car')
FINAL_RESULT=Result(var=IMAGE0)
"""


def test_loc_mask_replace_repaints_within_the_masks(
    dino_dir: Path, sam_dir: Path, sd_dir: Path, small_astronaut: Image.Image
) -> None:
    loc, pool = default_registry()["Loc"], ModelPool()  # one pool: each tiny model loads once

    def locate(**options: Any) -> list[Detection]:
        rt = Runtime(device_request="cpu", modules={"Loc": {"model": str(dino_dir), **options}}, pool=pool)
        return loc(small_astronaut, "person", ctx=Context(rt, RunCache()).for_module(loc))

    # Loc's threshold from the tiny Grounding DINO's own scores: the two best boxes pass.
    scores = sorted((d.score for d in locate(box_threshold=0.0)), reverse=True)
    assert len(scores) >= 3 and scores[1] - scores[2] > 1e-5
    boxes = locate(box_threshold=(scores[1] + scores[2]) / 2)
    assert len(boxes) == 2
    modules: dict[str, dict[str, Any]] = {
        "Loc": {"model": str(dino_dir), "box_threshold": (scores[1] + scores[2]) / 2},
        "Mask": {
            "model": str(sam_dir),
            "mask_threshold": partial_threshold(sam_dir, small_astronaut, [d.box for d in boxes]),
        },
        "Replace": {"model": str(sd_dir), **FAST, "dilate": 1},
    }
    trace = Interpreter(default_registry(), Runtime(device_request="cpu", modules=modules, pool=pool)).run(
        EDIT, {"IMAGE": small_astronaut}
    )
    outlined = trace.values["OBJ0"]
    assert [(d.box, d.score, d.label) for d in outlined] == [(d.box, d.score, "person") for d in boxes]
    assert all(d.mask is not None and d.mask.shape == (160, 192) for d in outlined)
    result, original = np.asarray(trace.result).astype(int), np.asarray(small_astronaut).astype(int)
    changed = (result != original).any(axis=-1)
    region = dilated_mask(outlined, small_astronaut.size, 1)
    # every repainted pixel lies within the masks (grown by Replace's 1 pixel), and the masks were repainted
    assert changed.any() and not (changed & ~region).any()
    assert changed[region].mean() > 0.5
    # the masks, not the boxes: the edit reaches pixels that no box (grown by the same pixel) covers
    boxes_only = dilated_mask([Detection(d.box) for d in outlined], small_astronaut.size, 1)
    assert (changed & ~boxes_only).any()


# --- real checkpoint -------------------------------------------------------------------------------------------

#: The astronaut's face on the 512x512 picture (the segmentation tests' box).
ASTRONAUT_FACE = (175.0, 65.0, 265.0, 165.0)


@pytest.mark.slow
def test_real_sam_outlines_the_face_inside_its_box(astronaut: Image.Image) -> None:
    ctx = context(Runtime())
    (face,) = Mask(astronaut, [Detection(ASTRONAUT_FACE, 0.9, "face")], ctx=ctx)
    assert face.mask is not None and face.label == "face" and face.box == ASTRONAUT_FACE
    x0, y0, x1, y1 = (int(v) for v in ASTRONAUT_FACE)
    around = np.zeros_like(face.mask)
    around[y0 - 10 : y1 + 10, x0 - 10 : x1 + 10] = True
    assert face.mask[around].sum() >= 0.9 * face.mask.sum()  # the mask lies in and around the box
    assert face.mask[y0:y1, x0:x1].mean() > 0.3  # and fills a good part of it
