"""The transformers SAM path and the segment-anything path agree on the same weights.

The tiny SAM made by ``segment_anything``'s builder is converted to
transformers' ``SamModel`` (tests/original/sam_formats.py, the renaming of
transformers' own conversion script) and saved as a model folder. Mask on the
``sam`` backend (transformers) with that folder, and Mask on the
``segment-anything`` backend with the ``.pth``, must give the same mask for
the same box prompts; Seg on both backends the same masks for the same point
grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.original.conftest import SAM_ARCH
from tests.original.sam_formats import to_transformers, transformers_config
from visprog.language.values import Detection, Objects
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import Runtime

#: Boxes on the 192x160 astronaut: her face, her upper body, the flag behind her, a small one on her shoulder.
BOXES = [(60.0, 8.0, 110.0, 70.0), (20.0, 10.0, 90.0, 120.0), (100.0, 30.0, 180.0, 100.0), (50.0, 50.0, 60.0, 60.0)]
#: Seg's options that keep every mask of a 2x2 point grid (no threshold, no suppression).
GRID: dict[str, Any] = {
    "points_per_side": 2,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}
#: The share of pixels on which two masks may differ: resizing rounds a logit at the threshold either way.
TOLERANCE = 0.002


@pytest.fixture(scope="module")
def sam_folder(sam_pth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SAM as a transformers model folder, converted from the .pth."""
    from transformers import SamImageProcessorPil, SamModel

    model = SamModel(transformers_config(SAM_ARCH)).eval()
    model.load_state_dict(to_transformers(torch.load(sam_pth, weights_only=True)), strict=True)
    folder = tmp_path_factory.mktemp("tiny-sam-transformers")
    model.save_pretrained(folder)
    SamImageProcessorPil().save_pretrained(folder)  # SAM's own preprocessing: longest side 1024, padded to 1024
    return folder


def run(module: str, backend: str, model: Path, program: str, inputs: dict[str, Any], **options: Any) -> Any:
    rt = Runtime(device_request="cpu", modules={module: {"backend": backend, "model": str(model), **options}})
    return Interpreter(default_registry(), rt).run(program, inputs)


def test_the_converted_state_dict_fills_every_weight(sam_pth: Path) -> None:
    from transformers import SamModel

    model = SamModel(transformers_config(SAM_ARCH))
    converted = to_transformers(torch.load(sam_pth, weights_only=True))
    assert set(converted) == set(model.state_dict())
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items())


@pytest.mark.parametrize("multimask", [False, True])
def test_mask_agrees_on_both_backends(sam_pth: Path, sam_folder: Path, astronaut: Image.Image, multimask: bool) -> None:
    objects = Objects(Detection(box, 0.5, "thing") for box in BOXES)
    inputs = {"IMAGE": astronaut, "BOXES": objects}
    program = "M=Mask(image=IMAGE, object=BOXES)\nRESULT=M\n"
    ours = run("Mask", "sam", sam_folder, program, inputs, multimask=multimask).step("M").output
    theirs = run("Mask", "segment-anything", sam_pth, program, inputs, multimask=multimask).step("M").output
    assert len(ours) == len(theirs) == len(BOXES)
    for a, b in zip(ours, theirs, strict=True):
        assert a.mask is not None and b.mask is not None
        assert 0.005 < b.mask.mean() < 0.995  # partial masks: agreeing means something
        assert np.mean(a.mask != b.mask) <= TOLERANCE


def test_seg_agrees_on_both_backends(sam_pth: Path, sam_folder: Path, astronaut: Image.Image) -> None:
    program = "S=Seg(image=IMAGE)\nRESULT=S\n"
    ours = run("Seg", "sam", sam_folder, program, {"IMAGE": astronaut}, **GRID).step("S").output
    theirs = run("Seg", "segment-anything", sam_pth, program, {"IMAGE": astronaut}, **GRID).step("S").output
    assert len(ours) == len(theirs) > 3
    unmatched = list(theirs)
    for a in ours:  # the same masks, each with the same score (order may differ where scores tie)
        match = next(
            (b for b in unmatched if np.mean(a.mask != b.mask) <= TOLERANCE and abs(a.score - b.score) < 1e-4), None
        )
        assert match is not None, f"no segment-anything mask matches the transformers one scored {a.score}"
        unmatched.remove(match)
