"""A trace is data: ``to_dict`` / ``to_json`` and ``from_dict`` / ``from_json`` round-trip every value."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from visprog.errors import StepError, TraceFormatError
from visprog.language.expr import parse_template
from visprog.language.values import Detection, Image, Objects, Template
from visprog.running.encoding import OpaqueValue, mask_to_rle, rle_to_mask
from visprog.running.interpreter import Interpreter
from visprog.running.tracing import SCHEMA, StepRecord, Trace

SEGMENT = (
    "OBJ0=Seg(image=IMAGE)\n"
    "OBJ1=Select(image=IMAGE, object=OBJ0, query='dog')\n"
    "IMAGE0=ColorPop(image=IMAGE, object=OBJ1)\n"
    "N=Count(box=OBJ0)\n"
    "ANSWER0=Eval(expr=\"'many' if {N} > 2 else 'few'\")\n"
    "FINAL_RESULT=Result(var=IMAGE0)\n"
)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    fakes.reset()
    yield
    fakes.reset()


@pytest.fixture(scope="module")
def astronaut() -> Image:
    return PILImage.fromarray(data.astronaut())


def again(trace: Trace) -> Trace:
    """The trace written as JSON and read back."""
    return Trace.from_json(trace.to_json())


def value_again(value: Any) -> Any:
    """``value`` as the output of a step, through JSON and back."""
    trace = Trace("X=F()", records=[StepRecord(0, 1, "X", "F", "X=F()", output=value)], result=value)
    back = again(trace)
    if isinstance(value, (PILImage.Image, Objects)):  # stored once: one object again
        assert back.records[0].output is back.result
    return back.records[0].output


def same_pixels(a: Image, b: Image) -> bool:
    return (a.mode, a.size, a.tobytes(), a.getpalette()) == (b.mode, b.size, b.tobytes(), b.getpalette())


def test_a_real_run_round_trips(astronaut: Image) -> None:
    trace = Interpreter(fakes.registry()).run(SEGMENT, {"IMAGE": astronaut})
    data_ = trace.to_dict()
    assert data_["schema"] == SCHEMA == "visprog.trace/1" and data_["ok"] is True
    json.dumps(data_, allow_nan=False)  # JSON as it is
    back = Trace.from_dict(json.loads(json.dumps(data_)))
    assert (back.source, back.result_var, back.seconds, back.error) == (
        trace.source, trace.result_var, trace.seconds, trace.error,
    )  # fmt: skip
    assert back.to_text() == trace.to_text()
    for r, s in zip(trace.records, back.records, strict=True):
        assert (r.index, r.line, r.target, r.module, r.source) == (s.index, s.line, s.target, s.module, s.source)
        assert (r.seconds, r.error, r.batch) == (s.seconds, s.error, s.batch)
        assert list(r.inputs) == list(s.inputs)
    assert same_pixels(back.inputs["IMAGE"], astronaut) and same_pixels(back.result, trace.result)
    objects, selected = back.step("OBJ0").output, back.step("OBJ1").output
    assert isinstance(objects, Objects) and [d.label for d in objects] == ["person", "dog", "sky"]
    for d, e in zip(trace.step("OBJ0").output, objects, strict=True):
        assert (d.box, d.score, d.label) == (e.box, e.score, e.label)
        assert e.mask is not None and e.mask.dtype == bool and np.array_equal(d.mask, e.mask)
    # What the run shared is shared when read back, and stored once.
    assert back.step("OBJ1").inputs["image"] is back.inputs["IMAGE"] is back.step("IMAGE0").inputs["image"]
    assert back.step("N").inputs["box"] is objects and back.step("IMAGE0").inputs["object"] is selected
    assert selected[0].mask is objects[1].mask  # Select kept the dog's detection itself
    assert back.result is back.step("FINAL_RESULT").output is back.step("IMAGE0").output
    assert len(data_["images"]) == 2 and len(data_["objects"]) == 2 and len(data_["masks"]) == 3
    # A second round trip writes the same data.
    assert back.to_json() == trace.to_json()


def test_scalars_lists_and_numbers_json_cannot_hold() -> None:
    for value in ["", "ü ✓ \n", 0, -3, 2**70, 1.5, -0.0, True, False, None, [], ["a", 1, [2.5, None]]]:
        back = value_again(value)
        assert back == value and type(back) is type(value)
    assert value_again(1.0) == 1.0 and isinstance(value_again(1.0), float)
    assert math.isnan(value_again(math.nan)) and value_again(math.inf) == math.inf
    assert value_again(-math.inf) == -math.inf
    text = Trace("X=F()", result=math.nan).to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"])
def test_images_of_every_mode_keep_every_pixel(mode: str) -> None:
    rng = np.random.default_rng(0)
    rgba = PILImage.fromarray(rng.integers(0, 256, (17, 23, 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        image = rgba.convert("RGB").quantize(37)
        image.info["transparency"] = 3
    elif mode in ("I", "F"):
        image = PILImage.fromarray(rng.integers(-(2**20), 2**20, (17, 23), dtype=np.int32)).convert(mode)
    else:
        image = rgba.convert(mode)
    back = value_again(image)
    assert isinstance(back, PILImage.Image) and same_pixels(back, image)
    if mode == "P":
        assert back.info.get("transparency") == 3


def test_jpeg_images_are_smaller_and_close(astronaut: Image) -> None:
    trace = Trace("X=F()", inputs={"IMAGE": astronaut}, result=astronaut.convert("L"))
    png, jpeg = trace.to_json(), trace.to_json(image_format="jpeg")
    assert len(jpeg) < len(png) / 3
    back = Trace.from_json(jpeg)
    assert [i["format"] for i in json.loads(jpeg)["images"]] == ["jpeg", "jpeg"]
    assert back.inputs["IMAGE"].size == astronaut.size and back.result.mode == "L"
    diff = np.abs(np.asarray(back.inputs["IMAGE"], dtype=int) - np.asarray(astronaut, dtype=int))
    assert diff.mean() < 4
    rgba = astronaut.convert("RGBA")  # JPEG has no transparency: kept as PNG
    assert same_pixels(Trace.from_json(Trace("X=F()", result=rgba).to_json(image_format="jpeg")).result, rgba)
    with pytest.raises(ValueError, match="image_format must be 'png' or 'jpeg', got 'webp'"):
        trace.to_dict(image_format="webp")  # type: ignore[arg-type]


def test_masks_are_run_length_encoded_like_coco() -> None:
    # column by column, runs of false then true: [[0, 1], [1, 1]] reads 0, 1, 1, 1
    assert mask_to_rle(np.array([[0, 1], [1, 1]], dtype=bool)) == {"size": [2, 2], "counts": [1, 3]}
    assert mask_to_rle(np.array([[1, 0], [0, 0]], dtype=bool)) == {"size": [2, 2], "counts": [0, 1, 3]}
    assert mask_to_rle(np.ones((3, 4), dtype=bool)) == {"size": [3, 4], "counts": [0, 12]}
    assert mask_to_rle(np.zeros((3, 4), dtype=bool)) == {"size": [3, 4], "counts": [12]}
    assert mask_to_rle(np.zeros((0, 4), dtype=bool)) == {"size": [0, 4], "counts": []}
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (5, 7), (64, 48), (0, 3)]:
        for p in (0.0, 0.1, 0.5, 1.0):
            mask = rng.random(shape) < p
            assert np.array_equal(rle_to_mask(mask_to_rle(mask)), mask)
    blob = np.zeros((480, 640), dtype=bool)
    blob[100:300, 200:500] = True
    assert len(mask_to_rle(blob)["counts"]) == 2 * 300 + 1  # compact: two runs per column it crosses
    with pytest.raises(ValueError, match="the runs cover 5 pixels, the mask has 2x2 = 4"):
        rle_to_mask({"size": [2, 2], "counts": [2, 3]})


def test_objects_and_detections_keep_boxes_scores_labels_and_masks() -> None:
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:9, 7:20] = True
    objects = Objects([Detection((7, 5, 20, 9), 0.875, "cup", mask), Detection((0.5, 1.25, 3.75, 4), 0.1, "", None)])
    back = value_again(objects)
    assert isinstance(back, Objects) and len(back) == 2
    assert [(d.box, d.score, d.label) for d in back] == [(d.box, d.score, d.label) for d in objects]
    assert np.array_equal(back[0].mask, mask) and back[1].mask is None
    assert value_again(Objects()) == [] and isinstance(value_again(Objects()), Objects)
    single = value_again(objects[0])
    assert isinstance(single, Detection) and np.array_equal(single.mask, mask) and single.label == "cup"
    plain = value_again([objects[1]])  # a list of detections reads back as Objects
    assert isinstance(plain, Objects) and plain[0].box == (0.5, 1.25, 3.75, 4.0)


def test_bound_eval_templates_keep_their_text_and_values() -> None:
    template = parse_template("'yes' if {N} > 2 and {A} == 'dog' else 'no'").bind({"N": 3, "A": "dog"})
    back = value_again(template)
    assert isinstance(back, Template) and back.text == template.text
    assert back.bindings == {"N": 3, "A": "dog"} and back.evaluate() == "yes" and str(back) == str(template)


def test_other_values() -> None:
    assert value_again((1, "a", None)) == (1, "a", None)
    assert value_again({"a": 1, 2: [3.5]}) == {"a": 1, 2: [3.5]}
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = value_again(array)
    assert back.dtype == np.float32 and np.array_equal(back, array)
    assert value_again(np.int64(7)) == 7 and value_again(np.float32(0.5)) == 0.5

    class Thing:
        def __repr__(self) -> str:
            return "Thing<42>"

    opaque = value_again(Thing())
    assert isinstance(opaque, OpaqueValue) and repr(opaque) == "Thing<42>" and opaque.type_name.endswith("Thing")
    assert value_again(opaque) == opaque  # stable from then on


def test_a_failed_run_keeps_its_errors_timings_and_steps(astronaut: Image) -> None:
    fakes.VQA_ANSWERS["What is it?"] = "3"
    program = (
        "ANSWER0=Vqa(image=IMAGE, question='What is it?')\n"
        "ANSWER1=Eval(expr='{ANSWER0} / 0')\n"
        "FINAL_RESULT=Result(var=ANSWER1)\n"
    )
    with pytest.raises(StepError) as info:
        Interpreter(fakes.registry()).run(program, {"IMAGE": astronaut})
    trace = info.value.trace
    assert trace is not None
    back = again(trace)
    assert not back.ok and back.error == trace.error and "division by zero" in (back.error or "")
    assert back.step("ANSWER1").error == trace.step("ANSWER1").error
    assert back.step("ANSWER0").output == "3" and back.step("ANSWER0").seconds == trace.step("ANSWER0").seconds
    assert back.to_dict()["ok"] is False and back.to_text() == trace.to_text()


def test_data_that_is_not_a_trace_is_refused_saying_where(astronaut: Image) -> None:
    good = Interpreter(fakes.registry()).run("BOX0=Loc(image=IMAGE, object='wolf')\nRESULT=BOX0", {"IMAGE": astronaut})
    with pytest.raises(TraceFormatError, match="a trace must be JSON"):
        Trace.from_json("{not json")
    with pytest.raises(TraceFormatError, match="not a visprog trace: 'schema' is None"):
        Trace.from_dict({"source": ""})
    with pytest.raises(
        TraceFormatError, match=r"trace schema 'visprog\.trace/2' is not supported: .*'visprog\.trace/1'"
    ):
        Trace.from_dict({**good.to_dict(), "schema": "visprog.trace/2"})

    def broken(change: Any) -> str:
        d = good.to_dict()
        change(d)
        with pytest.raises(TraceFormatError) as info:
            Trace.from_dict(d)
        return str(info.value)

    assert broken(lambda d: d["steps"][0].pop("line")) == "steps[0].line: missing"
    assert broken(lambda d: d["steps"][0].update(batch="2")) == 'steps[0].batch: expected int, got "2"'
    assert broken(lambda d: d["steps"][0]["inputs"].update(image={"type": "image", "ref": 5})).startswith(
        "steps[0].inputs.image: 5 is not a position in 'images' (1 entries)"
    )
    assert broken(lambda d: d["images"][0].update(data="!!")).startswith("images[0]: not an image")
    assert broken(lambda d: d["inputs"].update(X={"type": "wat"})) == "inputs.X: unknown value type 'wat'"
    assert "masks" not in good.to_dict() or good.to_dict()["masks"] == []
    assert broken(lambda d: d["objects"][0][0].update(box=[3, 3, 1, 1])).startswith("objects[0][0]: not a detection")
