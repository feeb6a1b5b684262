"""Seg's and Mask's ``segment-anything`` backends (modules/sam_original.py) on a tiny SAM made by the package.

Through visprog's real path: a Runtime with the backend and ``model`` set to
the ``.pth`` file (as ``--backend``/``--model`` set them), the interpreter
running a program, and once through ``visprog exec``. What comes back is
compared with the package's own ``SamAutomaticMaskGenerator`` and
``SamPredictor`` on the model the package loads itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from visprog.modules.sam_original import sam_architecture

from tests.original.conftest import SAM_ARCH, rgb
from visprog.apps.cli import main
from visprog.errors import StepError
from visprog.language.values import Detection, Objects
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import RunCache, Runtime

#: Seg's options under which the tiny SAM keeps every mask (thresholds off, no suppression), 2x2 points.
KEEP_ALL: dict[str, Any] = {
    "points_per_side": 2,
    "points_per_batch": 3,  # 4 points: batches of 3 and 1
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "stability_score_offset": 0.05,
    "box_nms_thresh": 1.0,
}
#: Boxes on the 192x160 astronaut: her face, her upper body, the flag behind her.
BOXES = [(60.0, 8.0, 110.0, 70.0), (20.0, 10.0, 90.0, 120.0), (100.0, 30.0, 180.0, 100.0)]


def run(
    module: str, model: Path, program: str, image: Image.Image, cache: RunCache | None = None, **inputs: Any
) -> Any:
    """The program's trace, with ``module`` on the segment-anything backend and ``model`` (options in ``inputs``
    whose names are options; the rest are the program's inputs)."""
    options = {k: inputs.pop(k) for k in list(inputs) if k in KEEP_ALL or k in ("multimask", "mask_threshold")}
    rt = Runtime(
        device_request="cpu",
        modules={module: {"backend": "segment-anything", "model": str(model), **options}},
    )
    return Interpreter(default_registry(), rt).run(program, {"IMAGE": image, **inputs}, cache=cache)


def clamped(score: float) -> float:
    return min(max(float(score), 0.0), 1.0)


def given(boxes: list[tuple[float, float, float, float]] = BOXES) -> Objects:
    return Objects(Detection(box, 0.9 - 0.1 * k, f"thing {k}") for k, box in enumerate(boxes))


# --- the checkpoint ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_h", "vit_l", "vit_b"])
def test_the_published_architectures_are_read_from_their_shapes(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no time
        state = sam_model_registry[name]().state_dict()
    arch = sam_architecture(state, f"{name}.pth")
    expected = {
        "vit_h": (1280, 32, 16, [7, 15, 23, 31]),
        "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
        "vit_b": (768, 12, 12, [2, 5, 8, 11]),
    }[name]
    assert (
        arch["encoder_embed_dim"],
        arch["encoder_depth"],
        arch["encoder_num_heads"],
        arch["encoder_global_attn_indexes"],
    ) == expected


def test_a_tiny_architecture_is_read_from_its_shapes(sam_pth: Path) -> None:
    assert sam_architecture(torch.load(sam_pth, weights_only=True), str(sam_pth)) == SAM_ARCH


# --- Seg --------------------------------------------------------------------------------------------


def test_seg_gives_the_automatic_mask_generators_masks(
    sam_pth: Path, sam_reference: Any, astronaut: Image.Image
) -> None:
    found = run("Seg", sam_pth, "S=Seg(image=IMAGE)\nRESULT=S\n", astronaut, **KEEP_ALL).step("S").output
    records = SamAutomaticMaskGenerator(sam_reference, **KEEP_ALL).generate(rgb(astronaut))
    # best first: by the predicted IoU clamped to [0, 1] (the score), larger masks first among equal scores
    expected = sorted(
        (r for r in records if r["segmentation"].any()), key=lambda r: (-clamped(r["predicted_iou"]), -r["area"])
    )
    assert len(found) == len(expected) > 3
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True)  # best first
    for d, r in zip(found, expected, strict=True):
        assert d.label == "" and d.mask is not None and d.mask.shape == (160, 192)
        assert np.array_equal(d.mask, r["segmentation"])
        assert d.score == pytest.approx(clamped(r["predicted_iou"]), abs=1e-6)
        ys, xs = np.nonzero(d.mask)
        assert d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # the mask's box, exclusive ends


def test_seg_thresholds_and_suppression_change_the_segments(sam_pth: Path, astronaut: Image.Image) -> None:
    program = "S=Seg(image=IMAGE)\nRESULT=S\n"
    every = run("Seg", sam_pth, program, astronaut, **KEEP_ALL).step("S").output
    scores = sorted({d.score for d in every})
    assert len(scores) > 2
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # about half the masks pass
    options = {**KEEP_ALL, "pred_iou_thresh": cut}
    fewer = run("Seg", sam_pth, program, astronaut, **options).step("S").output
    assert 0 < len(fewer) < len(every)
    assert all(d.score > cut for d in fewer)
    suppressed = run("Seg", sam_pth, program, astronaut, **{**KEEP_ALL, "box_nms_thresh": 0.5}).step("S").output
    assert 0 < len(suppressed) < len(every)  # the random masks' boxes overlap: most go


def test_seg_through_visprog_exec(sam_pth: Path, astronaut: Image.Image, tmp_path: Path, capsys: Any) -> None:
    image = tmp_path / "astronaut.png"
    astronaut.save(image)
    options = [f"--option=Seg.{k}={v}" for k, v in KEEP_ALL.items()]
    argv = ["exec", "S=Seg(image=IMAGE)\nRESULT=Count(box=S)", "-i", str(image), "--json", "--device", "cpu"]
    argv += ["--backend", "Seg=segment-anything", "--model", f"Seg={sam_pth}", *options]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    direct = run("Seg", sam_pth, "S=Seg(image=IMAGE)\nRESULT=S\n", astronaut, **KEEP_ALL).step("S").output
    assert out["result"] == len(direct) > 0


# --- Mask -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multimask", [False, True])
def test_mask_gives_the_predictors_mask_of_each_box(
    sam_pth: Path, sam_reference: Any, astronaut: Image.Image, multimask: bool
) -> None:
    trace = run(
        "Mask", sam_pth, "M=Mask(image=IMAGE, object=BOXES)\nRESULT=M\n", astronaut, BOXES=given(), multimask=multimask
    )
    found = trace.step("M").output
    predictor = SamPredictor(sam_reference)
    predictor.set_image(rgb(astronaut))
    assert [d.box for d in found] == BOXES  # boxes, labels and scores stay
    assert [d.label for d in found] == ["thing 0", "thing 1", "thing 2"]
    for d, box in zip(found, BOXES, strict=True):
        masks, iou, _ = predictor.predict(box=np.array(box), multimask_output=multimask)
        expected = masks[int(np.argmax(iou))]
        assert d.mask is not None and d.mask.dtype == bool and np.array_equal(d.mask, expected)
        assert 0.02 < d.mask.mean() < 0.98  # a partial mask: the comparison means something


def test_mask_threshold_changes_the_masks(sam_pth: Path, astronaut: Image.Image) -> None:
    program = "M=Mask(image=IMAGE, object=BOXES)\nRESULT=M\n"
    at_zero = run("Mask", sam_pth, program, astronaut, BOXES=given()).step("M").output
    higher = run("Mask", sam_pth, program, astronaut, BOXES=given(), mask_threshold=1.0).step("M").output
    for a, b in zip(at_zero, higher, strict=True):
        assert b.mask.sum() < a.mask.sum() and not (b.mask & ~a.mask).any()  # fewer pixels, all of them in a's


def test_mask_computes_the_image_embedding_once_per_image(sam_pth: Path, astronaut: Image.Image) -> None:
    cache = RunCache()
    program = "A=Mask(image=IMAGE, object=BOXES)\nB=Mask(image=IMAGE, object=OTHER)\nRESULT=B\n"
    trace = run("Mask", sam_pth, program, astronaut, cache, BOXES=given(BOXES[:1]), OTHER=given(BOXES[1:]))
    assert cache.computed[f"segment-anything-embedding:{sam_pth}"] == 1
    assert len(trace.step("A").output) == 1 and len(trace.step("B").output) == 2


# --- errors -----------------------------------------------------------------------------------------


def test_no_model_says_how_to_give_one(astronaut: Image.Image) -> None:
    rt = Runtime(device_request="cpu", modules={"Seg": {"backend": "segment-anything"}})
    with pytest.raises(StepError) as err:
        Interpreter(default_registry(), rt).run("S=Seg(image=IMAGE)\nRESULT=S\n", {"IMAGE": astronaut})
    assert "has no default model" in str(err.value) and "--model Seg=PATH" in str(err.value)


@pytest.mark.parametrize("content", ["missing", "text", "other"])
def test_a_file_that_is_no_sam_checkpoint_is_named(tmp_path: Path, astronaut: Image.Image, content: str) -> None:
    path = tmp_path / "model.pth"
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "other":
        torch.save({"linear.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(StepError) as err:
        run("Seg", path, "S=Seg(image=IMAGE)\nRESULT=S\n", astronaut)
    message = str(err.value)
    assert str(path) in message
    assert {
        "missing": "does not exist",
        "text": "could not be read as a PyTorch checkpoint",
        "other": "has no 'image_encoder.patch_embed.proj.weight'",
    }[content] in message


def test_a_checkpoint_wrapped_in_model_loads(sam_pth: Path, tmp_path: Path, astronaut: Image.Image) -> None:
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": torch.load(sam_pth, weights_only=True), "epoch": 3}, wrapped)
    program = "M=Mask(image=IMAGE, object=BOXES)\nRESULT=M\n"
    a = run("Mask", sam_pth, program, astronaut, BOXES=given()).step("M").output
    b = run("Mask", wrapped, program, astronaut, BOXES=given()).step("M").output
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b, strict=True))
