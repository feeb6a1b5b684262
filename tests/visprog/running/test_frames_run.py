"""Frames at run time: objects found on a crop land where they are on the whole image, and back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from tests import fakes
from visprog.errors import StepError
from visprog.language.frames import Cropped
from visprog.language.objects import Detection, Objects
from visprog.language.signatures import module
from visprog.language.values import Image
from visprog.presentation.report import trace_html
from visprog.running.interpreter import Interpreter
from visprog.running.tracing import Trace


@pytest.fixture()
def image() -> PILImage.Image:
    return PILImage.fromarray(np.full((100, 200, 3), 200, dtype=np.uint8))  # 200 wide, 100 high


@pytest.fixture(scope="module")
def interpreter() -> Interpreter:
    return Interpreter(fakes.registry(), known_inputs=["IMAGE", "LEFT", "RIGHT"])


def test_objects_found_on_a_crop_are_drawn_where_they_are_on_the_image(
    interpreter: Interpreter, image: PILImage.Image
) -> None:
    program = (
        "BOX0=Loc(image=IMAGE, object='BOTTOM')\n"  # (0, 50, 200, 100)
        "IMAGE0=CropBelow(image=IMAGE, box=BOX0)\n"  # below y=75: a 200x25 crop at (0, 75)
        "BOX1=Loc(image=IMAGE0, object='RIGHT')\n"  # (100, 0, 200, 25) on the crop
        "IMAGE1=Tag(image=IMAGE, object=BOX1)\n"
        "FINAL_RESULT=Result(var=IMAGE1)"
    )
    trace = interpreter.run(program, {"IMAGE": image})
    crop = trace.step("IMAGE0")
    assert crop.output.size == (200, 25)
    assert crop.notes == ["a 200x25 crop of image, its top-left corner at (0, 75)"]
    assert trace.step("BOX1").output[0].box == (100.0, 0.0, 200.0, 25.0)
    tag = trace.step("IMAGE1")
    assert tag.inputs["object"][0].box == (100.0, 75.0, 200.0, 100.0)  # on the whole image
    assert tag.notes == [
        "object: the objects of BOX1, found on IMAGE0, a crop of IMAGE, mapped onto IMAGE (moved by (+0, +75))"
    ]
    # Drawn at the mapped place: the same picture as tagging that box on the image directly.
    direct = interpreter.registry["Tag"](image=image, object=[Detection((100, 75, 200, 100), 1.0, "RIGHT")])
    assert np.array_equal(np.asarray(tag.output), np.asarray(direct))


def test_objects_of_the_image_are_mapped_onto_a_crop_of_a_crop_with_their_masks(
    interpreter: Interpreter, image: PILImage.Image
) -> None:
    fakes.reset()
    program = (
        "BOX0=Loc(image=IMAGE, object='RIGHT')\n"  # (100, 0, 200, 100), centre x=150
        "IMAGE0=CropRightOf(image=IMAGE, box=BOX0)\n"  # x >= 150: a 50x100 crop at (150, 0)
        "BOX1=Loc(image=IMAGE0, object='BOTTOM')\n"  # (0, 50, 50, 100) on IMAGE0, centre y=75
        "IMAGE1=CropBelow(image=IMAGE0, box=BOX1)\n"  # y >= 75: a 50x25 crop at (0, 75) of IMAGE0
        "OBJ0=Seg(image=IMAGE)\n"
        "IMAGE2=ColorPop(image=IMAGE1, object=OBJ0)\n"
        "FINAL_RESULT=Result(var=IMAGE2)"
    )
    trace = interpreter.run(program, {"IMAGE": image})
    pop = trace.step("IMAGE2")
    whole = trace.step("OBJ0").output
    mapped = pop.inputs["object"]
    assert pop.inputs["image"].size == (50, 25)
    # The bands x 0..66 and 66..133 lie outside the crop (x >= 150); the sky band (133..200) covers it.
    assert [d.label for d in mapped] == ["sky"]
    sky = next(d for d in whole if d.label == "sky")
    assert sky.mask is not None and mapped[0].mask is not None
    assert mapped[0].mask.shape == (25, 50)
    assert np.array_equal(mapped[0].mask, sky.mask[75:100, 150:200])
    assert mapped[0].box == (0.0, 0.0, 50.0, 25.0)
    assert pop.notes == [
        "object: the objects of OBJ0, found on IMAGE, mapped onto IMAGE1, a crop of IMAGE "
        "(moved by (-150, -75)); 2 of 3 outside it left out"
    ]


def test_objects_outside_the_crop_are_left_out_and_the_trace_says_how_many(
    interpreter: Interpreter, image: PILImage.Image
) -> None:
    program = (
        "BOX0=Loc(image=IMAGE, object='LEFT')\n"  # (0, 0, 100, 100), centre x=50
        "IMAGE0=CropRightOf(image=IMAGE, box=BOX0)\n"  # x >= 50: a 150x100 crop at (50, 0)
        "BOX1=Loc(image=IMAGE, object='wolf')\n"  # two boxes, the first at x 2..56
        "BOX2=Loc(image=IMAGE, object='LEFT')\n"
        "IMAGE1=Tag(image=IMAGE0, object=BOX2)\n"
        "FINAL_RESULT=Result(var=IMAGE1)"
    )
    trace = interpreter.run(program, {"IMAGE": image})
    tag = trace.step("IMAGE1")
    assert tag.inputs["object"][0].box == (0.0, 0.0, 50.0, 100.0)  # clipped to the crop
    assert "moved by (-50, +0)" in tag.notes[0]


def test_a_plugin_crop_that_returns_a_plain_image_fails_clearly(image: PILImage.Image) -> None:
    @module
    def MyCrop(image: Image, box: Objects) -> Cropped:
        """Crop (wrongly: no place).

        Args:
            image: the image.
            box: the objects.
        """
        return image.crop((0, 0, 10, 10))  # type: ignore[return-value]

    reg = fakes.registry()
    reg.register(MyCrop)
    interpreter = Interpreter(reg, known_inputs=["IMAGE"])
    with pytest.raises(StepError) as info:
        interpreter.run("BOX0=Loc(image=IMAGE, object='dog')\nIMAGE0=MyCrop(image=IMAGE, box=BOX0)", {"IMAGE": image})
    assert "MyCrop returned Image, but its return type is Cropped: return Cropped(crop, (left, top))" in str(info.value)
    assert info.value.trace is not None and info.value.trace.step("BOX0").ok


def test_notes_and_warnings_survive_json_and_show_in_the_page(interpreter: Interpreter, image: PILImage.Image) -> None:
    program = (
        "BOX0=Loc(image=IMAGE, object='BOTTOM')\n"
        "IMAGE0=Crop(image=IMAGE, box=BOX0)\n"
        "BOX1=Loc(image=IMAGE0, object='TOP')\n"
        "IMAGE1=Tag(image=IMAGE, object=BOX1)"  # no result step: a warning
    )
    trace = interpreter.run(program, {"IMAGE": image})
    assert trace.warnings == [
        "line 4, col 1: the program has no result step: the result is the last step's value, IMAGE1 "
        "(end the program with FINAL_RESULT=Result(var=IMAGE1) to say so)"
    ]
    again = Trace.from_json(trace.to_json())
    assert again.warnings == trace.warnings
    assert [r.notes for r in again.records] == [r.notes for r in trace.records]
    assert "warning: line 4, col 1: the program has no result step" in trace.to_text()
    page = trace_html(trace)
    assert "mapped onto IMAGE (moved by" in page
    assert "the program has no result step" in page


def test_old_traces_without_notes_still_read(interpreter: Interpreter, image: PILImage.Image) -> None:
    trace = interpreter.run("BOX0=Loc(image=IMAGE, object='dog')\nFINAL_RESULT=Result(var=BOX0)", {"IMAGE": image})
    data = trace.to_dict()
    del data["warnings"]
    for step in data["steps"]:
        del step["notes"]
    again = Trace.from_dict(data)
    assert again.warnings == [] and all(r.notes == [] for r in again.records)


def test_objects_are_not_mapped_when_they_are_in_the_image_frame(
    interpreter: Interpreter, image: PILImage.Image
) -> None:
    program = (
        "BOX0=Loc(image=IMAGE, object='dog')\n"
        "IMAGE0=ColorPop(image=IMAGE, object=BOX0)\n"
        "FINAL_RESULT=Result(var=IMAGE0)"
    )
    trace = interpreter.run(program, {"IMAGE": image})
    pop = trace.step("IMAGE0")
    assert pop.notes == []
    assert pop.inputs["object"] is trace.step("BOX0").output  # passed on as it is


def test_detection_values_stay_unchanged_by_mapping() -> None:
    found = Objects([Detection((10, 10, 20, 20), 0.7, "x")])
    moved = found.in_frame((5, 5), (100, 100))
    assert found[0].box == (10.0, 10.0, 20.0, 20.0)
    assert moved[0].box == (5.0, 5.0, 15.0, 15.0)
