"""Seg's sam backend upscales only the masks whose predicted IoU passes, with the segments unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import visprog.modules.segmentation as segmentation
from PIL import Image
from visprog.modules.segmentation import Seg, load_sam

from tests.modules.test_segmentation import SAM_OPTIONS, astronaut, context, sam_dir, sam_runtime, small_astronaut

__all__ = ["astronaut", "sam_dir", "small_astronaut"]  # the fixtures these tests use

pytest.importorskip("torch")


def _segments(found: Any) -> list[tuple[tuple[float, ...], float, bytes]]:
    return [(d.box, d.score, np.packbits(d.mask).tobytes()) for d in found]


def test_only_passing_masks_are_upscaled_and_the_segments_are_the_same(
    sam_dir: Path, small_astronaut: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = sam_runtime(sam_dir)
    _, processor = load_sam(context(rt))
    upscaled: list[int] = []
    post_process = processor.post_process_masks

    def counting(masks: Any, *args: Any, **kwargs: Any) -> Any:
        upscaled.append(int(masks[0].shape[0] * masks[0].shape[1]))
        return post_process(masks, *args, **kwargs)

    monkeypatch.setattr(processor, "post_process_masks", counting)
    found = Seg(image=small_astronaut, ctx=context(rt))
    passing = sum(upscaled)
    # as before the change: every mask upscaled, the IoU filter applied to the full-size masks afterwards
    upscaled.clear()
    monkeypatch.setattr(segmentation, "_iou_passing", lambda low_res, iou, thresh: (low_res, iou))
    reference = Seg(image=small_astronaut, ctx=context(rt))
    every = 3 * SAM_OPTIONS["points_per_side"] ** 2
    assert sum(upscaled) == every
    assert 0 < passing < every  # some masks fail pred_iou_thresh and are never upscaled
    assert found and _segments(found) == _segments(reference)


def test_no_mask_passing_is_no_segment(sam_dir: Path, small_astronaut: Image.Image) -> None:
    assert Seg(image=small_astronaut, ctx=context(sam_runtime(sam_dir, pred_iou_thresh=0.999))) == []
