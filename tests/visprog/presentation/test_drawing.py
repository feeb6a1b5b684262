"""Tests for the one drawing of objects (visprog.presentation.drawing), shared by Tag and the trace page."""

from __future__ import annotations

import numpy as np
from PIL import Image

from visprog.language.objects import Detection
from visprog.presentation import drawing, report

GREY = (128, 128, 128)


def grey(size: tuple[int, int] = (200, 100), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, GREY).convert(mode)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_the_trace_page_draws_with_the_one_drawing() -> None:
    assert report.draw_objects is drawing.draw_objects


def test_boxes_and_tags_in_palette_colours_by_index_or_by_label() -> None:
    image = grey()
    places = ((10, "cat"), (80, "dog"), (150, "cat"))
    cat1, dog, cat2 = (Detection((x, 50, x + 30, 90), 1.0, label) for x, label in places)
    by_index = arr(drawing.draw_objects(image, [cat1, dog, cat2]))
    by_label = arr(drawing.draw_objects(image, [cat1, dog, cat2], colour_by="label"))
    p = drawing.PALETTE
    assert tuple(by_index[70, 10]) == p[0] and tuple(by_index[70, 80]) == p[1] and tuple(by_index[70, 150]) == p[2]
    assert tuple(by_label[70, 10]) == p[0] and tuple(by_label[70, 80]) == p[1] and tuple(by_label[70, 150]) == p[0]
    # the tag sits above the box, in the box's colour; the inside of the box is untouched
    assert (by_index[30:50, 10:40] == p[0]).all(axis=2).mean() > 0.4
    assert (by_index[60:85, 15:35] == GREY).all()
    assert arr(image).tolist() == np.full((100, 200, 3), 128).tolist()  # the input is not changed


def test_a_tag_with_no_room_above_goes_inside_the_box() -> None:
    drawn = arr(drawing.draw_objects(grey(), [Detection((20, 2, 120, 90), 0.5, "cat")]))
    assert (drawn[2:15, 25:60] == drawing.PALETTE[0]).all(axis=2).mean() > 0.3
    assert (drawn[40:80, 40:100] == GREY).all()


def test_the_best_object_is_drawn_on_top() -> None:
    best, other = Detection((10, 10, 60, 60), 0.9, "a"), Detection((10, 10, 60, 60), 0.5, "b")
    drawn = arr(drawing.draw_objects(grey(), [best, other]))
    assert tuple(drawn[30, 10]) == drawing.PALETTE[0]


def test_masks_are_tinted_unless_turned_off() -> None:
    mask = np.zeros((100, 200), dtype=bool)
    mask[40:80, 100:160] = True
    obj = Detection((100, 40, 160, 80), 1.0, "blob", mask)
    tinted = arr(drawing.draw_objects(grey(), [obj]))
    plain = arr(drawing.draw_objects(grey(), [obj], masks=False))
    assert tuple(plain[60, 130]) == GREY
    assert tuple(tinted[60, 130]) != GREY and tinted[60, 130, 2] > GREY[2]  # towards the palette's blue


def test_drawing_downscales_to_max_side_and_scales_the_boxes() -> None:
    obj = Detection((100, 50, 200, 100), 1.0, "x")
    drawn = drawing.draw_objects(grey((400, 200)), [obj], max_side=100)
    assert drawn.size == (100, 50) and drawn.mode == "RGB"
    assert tuple(arr(drawn)[20, 25]) == drawing.PALETTE[0]  # the left edge, at a quarter of the size


def test_images_of_any_mode_are_drawn_in_rgb() -> None:
    for mode in ("L", "RGBA", "P", "1"):
        drawn = drawing.draw_objects(grey(mode=mode), [Detection((10, 10, 50, 50), 1.0, "x")])
        assert drawn.mode == "RGB" and drawn.size == (200, 100)


def test_tag_text_and_text_colour() -> None:
    assert drawing.tag_text(0, Detection((0, 0, 1, 1), 0.87, "cat")) == "cat 0.87"
    assert drawing.tag_text(4, Detection((0, 0, 1, 1))) == "#5"
    assert drawing.text_colour((255, 255, 0)) == (0, 0, 0) and drawing.text_colour((31, 119, 180)) == (255, 255, 255)
