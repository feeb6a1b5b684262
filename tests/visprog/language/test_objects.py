"""Tests for the language's vision data: Detection, Objects and their operations, and how values map onto Objects."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from visprog.language.objects import Detection, Objects, as_objects, nms_indices
from visprog.language.values import NUMBER_WORDS, Type, coerce, describe_value, parse_number, type_of_annotation
from visprog.language.values import type_of_value as value_type


def mask(size: tuple[int, int], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    w, h = size
    out = np.zeros((h, w), dtype=bool)
    out[y0:y1, x0:x1] = True
    return out


# --- Detection --------------------------------------------------------------------------------


def test_detection_validates_its_box_and_mask() -> None:
    with pytest.raises(ValueError, match="needs 4 numbers"):
        Detection((0, 0, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="x1 >= x0"):
        Detection((5, 0, 1, 1))
    with pytest.raises(ValueError, match="2-D"):
        Detection((0, 0, 1, 1), mask=np.zeros((2, 2, 2)))
    d = Detection((1, 2, 3, 4), 1, "cat", np.ones((4, 4), dtype=np.uint8))
    assert d.box == (1.0, 2.0, 3.0, 4.0) and isinstance(d.score, float) and d.mask is not None
    assert d.mask.dtype == bool


def test_detection_from_mask_boxes_the_mask_with_exclusive_ends() -> None:
    m = mask((10, 8), 2, 3, 5, 7)
    d = Detection.from_mask(m, 0.5, "dog")
    assert d.box == (2, 3, 5, 7) and d.score == 0.5 and d.label == "dog"
    assert np.array_equal(d.region((10, 8)), m)
    with pytest.raises(ValueError, match="empty mask"):
        Detection.from_mask(np.zeros((3, 3), dtype=bool))


def test_detection_size_is_its_mask_else_its_box() -> None:
    assert Detection((0, 0, 4, 5)).size == 20
    m = mask((10, 10), 0, 0, 2, 3)
    assert Detection((0, 0, 10, 10), mask=m).size == 6


# --- Objects: a list --------------------------------------------------------------------------


def test_objects_is_a_list_of_detections() -> None:
    a, b = Detection((0, 0, 1, 1)), Detection((1, 1, 2, 2))
    objects = Objects([a, b])
    assert isinstance(objects, list) and objects == [a, b] and objects[0] is a and len(objects) == 2
    assert Objects() == []
    assert as_objects(objects) is objects
    plain = [a]
    assert type(as_objects(plain)) is Objects and as_objects(plain) == plain


def test_objects_map_to_the_objects_type_and_plain_lists_are_coerced() -> None:
    assert type_of_annotation(Objects) == (Type.OBJECTS, False)
    assert type_of_annotation(list[Detection]) == (Type.OBJECTS, False)  # modules that annotate a plain list
    assert type_of_annotation(Objects | None) == (Type.OBJECTS, True)
    d = Detection((0, 0, 1, 1))
    assert value_type(Objects([d])) is Type.OBJECTS and value_type([d]) is Type.OBJECTS
    assert value_type(Objects()) is Type.OBJECTS  # known to be objects, even when empty
    assert value_type([]) is Type.ANY
    found = Objects([d])
    assert coerce(found, Type.OBJECTS) is found
    for plain in ([d], []):
        out = coerce(plain, Type.OBJECTS)
        assert type(out) is Objects and out == plain
    with pytest.raises(TypeError, match="expected Objects"):
        coerce(["cat"], Type.OBJECTS)
    assert describe_value(Objects([d, d])) == "Objects (2)"


def test_objects_never_import_numpy_to_be_checked() -> None:
    code = (
        "import sys, visprog\n"
        "from visprog.language.objects import Objects, Detection\n"
        "from visprog.language.values import Type, coerce\n"
        "coerce([Detection((0, 0, 1, 1))], Type.OBJECTS)\n"
        "print('numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- best first -------------------------------------------------------------------------------


def test_best_first_by_score_then_size_then_given_order() -> None:
    small, big = Detection((0, 0, 2, 2), 0.5, "small"), Detection((0, 0, 5, 5), 0.5, "big")
    top = Detection((0, 0, 1, 1), 0.9, "top")
    m = mask((10, 10), 0, 0, 1, 1)  # a big box with a one-pixel mask is small
    masked = Detection((0, 0, 10, 10), 0.5, "masked", m)
    first, second = Detection((0, 0, 1, 1), 0.1, "first"), Detection((5, 5, 6, 6), 0.1, "second")
    objects = Objects([first, small, masked, top, second, big])
    ordered = objects.best_first()
    assert [d.label for d in ordered] == ["top", "big", "small", "masked", "first", "second"]
    assert type(ordered) is Objects and objects[0] is first  # a new list; this one unchanged


# --- NMS --------------------------------------------------------------------------------------


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_nms_drops_boxes_overlapping_a_better_one() -> None:
    best = Detection((0, 0, 10, 10), 0.9, "a")
    overlapping = Detection((1, 0, 11, 10), 0.8, "b")  # IoU 9/11 with best
    apart = Detection((20, 20, 30, 30), 0.7, "c")
    touching = Detection((5, 0, 15, 10), 0.6, "d")  # IoU 1/3 with best, 6/14 with the dropped one
    objects = Objects([touching, overlapping, apart, best])
    assert [d.label for d in objects.nms(0.5)] == ["a", "c", "d"]
    assert [d.label for d in objects.nms(0.3)] == ["a", "c"]
    assert [d.label for d in objects.nms(1.0)] == ["a", "b", "c", "d"]  # IoU 1 keeps everything, best first
    assert Objects().nms(0.5) == []
    # a box is only dropped by one that is kept: 'b' is gone, so it cannot drop 'd' at 0.4
    assert iou(overlapping.box, touching.box) > 0.4 > iou(best.box, touching.box)
    assert [d.label for d in objects.nms(0.4)] == ["a", "c", "d"]


def test_nms_keeps_equal_boxes_once_and_visits_equal_scores_in_order() -> None:
    a, b = Detection((0, 0, 4, 4), 0.5, "a"), Detection((0, 0, 4, 4), 0.5, "b")
    assert [d.label for d in Objects([a, b]).nms(0.5)] == ["a"]
    assert [d.label for d in Objects([b, a]).nms(0.5)] == ["b"]


@pytest.mark.parametrize("seed", range(5))
def test_nms_indices_equals_the_greedy_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, size=(40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 30, size=(40, 2))], axis=1)
    scores = rng.uniform(size=40).round(1)  # ties too
    kept: list[int] = []
    for i in sorted(range(40), key=lambda i: -scores[i]):  # stable: equal scores in the given order
        if all(iou(tuple(boxes[i]), tuple(boxes[k])) <= 0.3 for k in kept):
            kept.append(i)
    assert nms_indices(boxes, scores, 0.3) == kept
    assert nms_indices(np.zeros((0, 4)), [], 0.3) == []
    with pytest.raises(ValueError, match="one score per box"):
        nms_indices(boxes, scores[:3], 0.3)


# --- union mask -------------------------------------------------------------------------------


def test_union_mask_joins_masks_and_boxes() -> None:
    size = (8, 6)
    m = mask(size, 5, 4, 7, 6)
    objects = Objects([Detection((0, 0, 2, 2)), Detection((4, 3, 8, 6), mask=m)])
    union = objects.union_mask(size)
    assert union.shape == (6, 8) and union.dtype == bool
    assert union.sum() == 4 + 4 and union[0, 0] and union[5, 6] and not union[3, 4]
    assert not Objects().union_mask(size).any()
    with pytest.raises(ValueError, match="does not match"):
        objects.union_mask((4, 4))


# --- clipping and frames ----------------------------------------------------------------------


def test_clipped_keeps_boxes_inside_the_image_and_drops_empty_ones() -> None:
    inside = Detection((1, 1, 5, 5), 0.9, "inside")
    over = Detection((-3.5, 2, 12, 20), 0.8, "over")
    outside = Detection((11, 0, 15, 5), 0.7, "outside")
    line = Detection((2, 3, 2, 8), 0.6, "line")
    clipped = Objects([inside, over, outside, line]).clipped((10, 10))
    assert [d.label for d in clipped] == ["inside", "over"]
    assert clipped[0] is inside  # unchanged objects are the same
    assert clipped[1].box == (0, 2, 10, 10) and clipped[1].score == 0.8


def test_in_frame_maps_objects_onto_a_crop_and_back() -> None:
    image_size, crop_origin, crop_size = (20, 10), (5, 2), (8, 6)
    m = mask(image_size, 6, 3, 9, 5)
    on_image = Objects([Detection((6, 3, 9, 5), 0.9, "masked", m), Detection((0, 0, 6, 4), 0.5, "corner")])
    on_crop = on_image.in_frame(crop_origin, crop_size)
    assert [d.box for d in on_crop] == [(1, 1, 4, 3), (0, 0, 1, 2)]
    assert on_crop[0].mask is not None and on_crop[0].mask.shape == (6, 8)
    assert np.array_equal(on_crop[0].mask, mask(crop_size, 1, 1, 4, 3))
    assert [d.label for d in on_crop] == ["masked", "corner"] and on_crop[0].score == 0.9
    back = on_crop.in_frame((-5, -2), image_size)
    assert back[0].box == (6, 3, 9, 5) and back[0].mask is not None and np.array_equal(back[0].mask, m)
    assert back[1].box == (5, 2, 6, 4)  # what the crop cut off stays cut off
    assert Objects([Detection((15, 8, 19, 9))]).in_frame(crop_origin, crop_size) == []  # outside the crop


def test_in_frame_takes_whole_pixels() -> None:
    with pytest.raises(TypeError, match="whole pixels"):
        Objects().in_frame((0.5, 0), (4, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "operation",
    [
        lambda o: o.best_first(),
        lambda o: o.nms(0.5),
        lambda o: o.clipped((4, 4)),
        lambda o: o.in_frame((1, 1), (3, 3)),
    ],
)
def test_operations_return_new_objects_and_change_nothing(operation: Any) -> None:
    m = mask((6, 6), 0, 0, 3, 3)
    objects = Objects([Detection((0, 0, 3, 3), 0.5, "a", m), Detection((2, 2, 6, 6), 0.7, "b")])
    before = [(d.box, d.score, d.label) for d in objects]
    out = operation(objects)
    assert type(out) is Objects and out is not objects
    assert [(d.box, d.score, d.label) for d in objects] == before
    assert objects[0].mask is not None and np.array_equal(objects[0].mask, m)


# --- number words -----------------------------------------------------------------------------


def test_one_number_word_table() -> None:
    assert NUMBER_WORDS["zero"] == 0 and NUMBER_WORDS["seven"] == 7 and NUMBER_WORDS["twenty"] == 20
    assert list(NUMBER_WORDS.values()) == list(range(21))
    with pytest.raises(TypeError):
        NUMBER_WORDS["many"] = 3  # type: ignore[index]
    assert all(parse_number(word) == value for word, value in NUMBER_WORDS.items())
    assert parse_number("a single") == 1 and parse_number("no") is None and parse_number("an") is None
