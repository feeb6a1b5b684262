"""Tests for Ocr and Text (modules/ocr.py) on RapidOCR with the PP-OCR models its wheel ships: real weights, offline.

Text is rendered with the bundled DejaVu Sans font onto scikit-image's photos,
so where each word was drawn is known to the pixel; scikit-image's scanned
page (``data.page()``) is printed text, its ``data.text()`` handwritten
formulas. One runtime (one engine) serves the whole file; a run reads each
image once, whichever of Ocr and Text asks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont
from skimage import data
from visprog.modules import ocr
from visprog.modules.ocr import Line, Word, find_query, reading_order, rows

from visprog.apps.cli import main
from visprog.errors import ProgramCheckError, StepError
from visprog.language.values import Detection
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import Runtime

Box = tuple[float, float, float, float]

FONT = resources.files("visprog.presentation") / "fonts" / "DejaVuSans.ttf"

#: scikit-image's scanned page, line by line
PAGE_LINES = [
    "Region-based segmentation",
    "Let us first determine markers of the coins and the",
    "background. These markers are pixels that we can label",
    "unambiguously as either object or background. Here,",
    "the markers are found at the two extreme parts of the",
    "histogram of grey values:",
    ">> markers = np.zeros_like(coins)",
]

needs_engine = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ocr.PACKAGES), reason="rapidocr and onnxruntime are not installed"
)


def render(photo: Image.Image, words: list[tuple[str, tuple[int, int], int]], plate: str = "white") -> dict[str, Box]:
    """Draw each (text, top-left, font size) on a plate of its own, in black; the box of each text's glyphs."""
    draw = ImageDraw.Draw(photo)
    boxes = {}
    for text, xy, size in words:
        font = ImageFont.truetype(str(FONT), size)
        x0, y0, x1, y1 = draw.textbbox(xy, text, font=font)
        pad = size // 4
        draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), fill=plate)
        draw.text(xy, text, font=font, fill="black" if plate == "white" else "white")
        boxes[text] = (float(x0), float(y0), float(x1), float(y1))
    return boxes


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def covers(found: Box, drawn: Box, slack: float = 4.0) -> bool:
    """Whether a found box lies where the text was drawn: it holds at least 90% of the glyphs' box, its centre
    is inside that box, and it is not more than ``slack`` times as large (the detector's boxes reach past the
    glyphs by about half their height)."""
    ix = min(found[2], drawn[2]) - max(found[0], drawn[0])
    iy = min(found[3], drawn[3]) - max(found[1], drawn[1])
    inter = max(ix, 0) * max(iy, 0)
    area = (drawn[2] - drawn[0]) * (drawn[3] - drawn[1])
    cx, cy = (found[0] + found[2]) / 2, (found[1] + found[3]) / 2
    inside = drawn[0] <= cx <= drawn[2] and drawn[1] <= cy <= drawn[3]
    return inter >= 0.9 * area and inside and (found[2] - found[0]) * (found[3] - found[1]) <= slack * area


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(progress=False)


def run(runtime: Runtime, program: str, image: Image.Image) -> Any:
    return Interpreter(default_registry(), runtime).run(program, {"IMAGE": image})


def engines(runtime: Runtime) -> list[Any]:
    return [model for key, model in runtime.pool.items() if "ocr._load_engine" in key[0]]


@pytest.fixture(scope="module")
def engine(runtime: Runtime) -> Any:
    """The runtime's engine, loaded by reading a blank image."""
    assert (
        run(runtime, "A=Ocr(image=IMAGE)\nFINAL_RESULT=Result(var=A)", Image.new("RGB", (64, 64), "white")).result == ""
    )
    (loaded,) = engines(runtime)
    return loaded


@contextlib.contextmanager
def reads(engine: Any) -> Iterator[list[tuple[int, ...]]]:
    """The shapes of the images the engine reads in the ``with`` block."""
    shapes: list[tuple[int, ...]] = []
    read = engine.ocr

    def recording(bgr: Any, **kwargs: Any) -> Any:
        shapes.append(bgr.shape)
        return read(bgr, **kwargs)

    engine.ocr = recording
    try:
        yield shapes
    finally:
        engine.ocr = read


@pytest.fixture(scope="module")
def signs() -> tuple[Image.Image, dict[str, Box]]:
    """The astronaut with two signs along the bottom: EXIT at the left, a brand name at the right."""
    image = photo("astronaut")
    boxes = render(image, [("EXIT", (20, 440), 36), ("NORDWIND", (300, 440), 36)])
    return image, boxes


# --- reading ----------------------------------------------------------------------


@needs_engine
def test_reads_a_printed_page_line_by_line_and_text_has_the_same_lines(runtime: Runtime) -> None:
    page = Image.fromarray(data.page())
    trace = run(runtime, "A=Ocr(image=IMAGE)\nB=Text(image=IMAGE)\nFINAL_RESULT=Result(var=A)", page)
    lines = trace.result.split("\n")
    assert lines[:4] == PAGE_LINES[:4]
    read = " ".join(lines).split()
    expected = " ".join(PAGE_LINES).split()
    assert sum(w in read for w in expected) >= 0.9 * len(expected)
    objects = trace.values["B"]
    assert [d.label for d in objects] == lines  # one line per row: Text's order is Ocr's
    assert all(0.5 <= d.score <= 1.0 for d in objects)
    tops = [d.box[1] for d in objects]
    assert tops == sorted(tops)
    title = objects[0].box
    assert title[0] < 10 and 250 < title[2] < 300 and title[1] >= 0 and title[3] < 40  # the heading, top left
    assert all(0 <= d.box[0] < d.box[2] <= page.width and 0 <= d.box[1] < d.box[3] <= page.height for d in objects)
    assert len(engines(runtime)) == 1


@needs_engine
def test_one_read_per_image_and_run_for_ocr_and_text(runtime: Runtime, engine: Any) -> None:
    image = photo("coffee")
    drawn = render(image, [("STOP", (50, 35), 60)], plate="red")
    program = "A=Ocr(image=IMAGE)\nB=Text(image=IMAGE, query='stop')\nC=Text(image=IMAGE)\nFINAL_RESULT=Result(var=B)"
    with reads(engine) as shapes:
        trace = run(runtime, program, image)
    assert shapes == [(400, 600, 3)]  # coffee is 600x400: read as it is, once
    assert trace.values["A"] == "STOP"
    (stop,) = trace.result
    assert stop.label == "STOP" and stop.score > 0.9
    assert covers(stop.box, drawn["STOP"])
    (line,) = trace.values["C"]
    assert line.label == "STOP" and line.box == stop.box  # the query matched the whole line


@needs_engine
def test_a_brand_name_read_from_a_crop(runtime: Runtime, signs: tuple[Image.Image, dict[str, Box]]) -> None:
    image, drawn = signs
    program = (
        "BOX0=Text(image=IMAGE, query='nordwind')\n"
        "IMAGE0=Crop(image=IMAGE, box=BOX0)\n"
        "ANSWER0=Ocr(image=IMAGE0)\n"
        "BOX1=Text(image=IMAGE, query='exit')\n"
        "BOX2=Text(image=IMAGE, query='entrance')\n"
        "FINAL_RESULT=Result(var=ANSWER0)"
    )
    trace = run(runtime, program, image)
    assert trace.result == "NORDWIND"  # the crop holds the brand, not the other sign
    (brand,) = trace.values["BOX0"]
    assert brand.label == "NORDWIND" and covers(brand.box, drawn["NORDWIND"])
    (exit_sign,) = trace.values["BOX1"]
    assert exit_sign.label == "EXIT" and covers(exit_sign.box, drawn["EXIT"])
    assert list(trace.values["BOX2"]) == []


@needs_engine
def test_text_on_a_crop_is_in_the_crops_frame(runtime: Runtime, signs: tuple[Image.Image, dict[str, Box]]) -> None:
    image, drawn = signs
    program = (
        "BOX0=Text(image=IMAGE, query='exit')\n"
        "IMAGE0=CropRightOf(image=IMAGE, box=BOX0)\n"
        "BOX1=Text(image=IMAGE0, query='nordwind')\n"
        "FINAL_RESULT=Result(var=BOX1)"
    )
    trace = run(runtime, program, image)
    crop = trace.values["IMAGE0"]
    left = image.width - crop.width  # CropRightOf keeps the right part, full height
    assert 20 < left < 101  # from inside EXIT's box
    (brand,) = trace.result
    x0, y0, x1, y1 = brand.box
    assert brand.label == "NORDWIND"
    assert covers((x0 + left, y0, x1 + left, y1), drawn["NORDWIND"])
    assert x1 <= crop.width


@needs_engine
def test_a_large_image_is_read_at_max_side_and_boxes_come_back_in_its_pixels(runtime: Runtime, engine: Any) -> None:
    small = photo("coffee")
    drawn = render(small, [("OPEN", (300, 250), 48)])["OPEN"]
    large = small.resize((3000, 2000), Image.Resampling.NEAREST)
    runtime.set_option("Text", "max_side", 900)
    try:
        with reads(engine) as shapes:
            trace = run(runtime, "A=Text(image=IMAGE, query='open')\nFINAL_RESULT=Result(var=A)", large)
    finally:
        runtime.set_option("Text", "max_side", None)
    assert shapes == [(600, 900, 3)]
    (found,) = trace.result
    assert found.label == "OPEN"
    x0, y0, x1, y1 = drawn
    assert covers(found.box, (5 * x0, 5 * y0, 5 * x1, 5 * y1))


@needs_engine
def test_handwriting_is_not_read_as_printed_text(runtime: Runtime) -> None:
    # data.text(): formulas written by hand on squared paper, which the printed-text models do not read confidently
    trace = run(runtime, "A=Ocr(image=IMAGE)\nB=Text(image=IMAGE)\nFINAL_RESULT=Result(var=A)", photo("text"))
    assert trace.result == ""
    assert list(trace.values["B"]) == []


@needs_engine
def test_upside_down_lines(runtime: Runtime) -> None:
    card = Image.new("RGB", (640, 320), "white")
    ImageDraw.Draw(card).text(
        (20, 30), "Fresh coffee served daily", font=ImageFont.truetype(str(FONT), 36), fill="black"
    )
    turned = card.rotate(180)
    runtime.set_option("Ocr", "upside_down", True)
    try:
        trace = run(runtime, "A=Ocr(image=IMAGE)\nFINAL_RESULT=Result(var=A)", turned)
    finally:
        runtime.set_option("Ocr", "upside_down", None)
    assert trace.result == "Fresh coffee served daily"


# --- models, packages, options ----------------------------------------------------------


@needs_engine
def test_a_folder_of_pp_ocr_models(tmp_path: Path) -> None:
    bundled = Path(ocr.bundled_folder())
    for name in ("PP-OCRv6_det_small.onnx", "PP-OCRv6_rec_small.onnx"):  # no direction classifier
        (tmp_path / name).symlink_to(bundled / name)
    runtime = Runtime(progress=False, modules={"Ocr": {"model": str(tmp_path)}})
    image = Image.new("RGB", (400, 320), "white")
    render(image, [("Main Street", (20, 130), 40)])
    trace = run(runtime, "A=Ocr(image=IMAGE)\nFINAL_RESULT=Result(var=A)", image)
    assert trace.result == "Main Street"
    assert [key[1] for key, _ in runtime.pool.items()] == [str(tmp_path)]


def test_a_folder_without_the_models_says_what_it_lacks(tmp_path: Path) -> None:
    image = Image.new("RGB", (64, 64), "white")
    (tmp_path / "my_det.onnx").write_bytes(b"")
    cases = {
        str(tmp_path / "nowhere"): "does not exist",
        str(tmp_path / "my_det.onnx"): "is a file, not a folder",
        str(tmp_path): "expected one *rec*.onnx file (text recognition)",
    }
    for folder, message in cases.items():
        runtime = Runtime(progress=False, modules={"Text": {"model": folder}})
        with pytest.raises(StepError) as info:
            run(runtime, "A=Text(image=IMAGE)\nFINAL_RESULT=Result(var=A)", image)
        assert message in str(info.value) and info.value.module == "Text" and info.value.line == 1


def test_missing_packages_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    with pytest.raises(StepError) as info:
        run(Runtime(progress=False), "A=Ocr(image=IMAGE)\nFINAL_RESULT=Result(var=A)", Image.new("RGB", (8, 8)))
    message = str(info.value)
    assert "Ocr: the rapidocr backend needs the packages rapidocr and onnxruntime" in message
    assert "onnxruntime is not installed: pip install 'visprog[models]'" in message


def test_bad_options_and_queries_are_named(tmp_path: Path) -> None:
    image = Image.new("RGB", (64, 64), "white")
    runtime = Runtime(progress=False, modules={"Ocr": {"max_side": 8}})
    with pytest.raises(StepError, match="Ocr option 'max_side' must be at least 32 pixels, got 8"):
        run(runtime, "A=Ocr(image=IMAGE)\nFINAL_RESULT=Result(var=A)", image)
    with pytest.raises(ProgramCheckError, match="argument 'query' of Text: needs text to look for"):
        run(runtime, "A=Text(image=IMAGE, query=' ')\nFINAL_RESULT=Result(var=A)", image)
    with pytest.raises(StepError, match="Text needs a query with letters or digits"):
        run(Runtime(progress=False), "A=Text(image=IMAGE, query='?!')\nFINAL_RESULT=Result(var=A)", image)


# --- the registry -------------------------------------------------------------------


def test_listed_by_visprog_modules_with_their_aliases() -> None:
    registry = default_registry()
    for name, canonical in {
        "OCR": "Ocr",
        "READ": "Ocr",
        "read_text": "Ocr",
        "TEXT": "Text",
        "FIND_TEXT": "Text",
    }.items():
        assert registry.resolve(name, "test").name == canonical
    out = io.StringIO()
    assert main(["modules", "--json"], out=out, err=io.StringIO()) == 0
    listed = {m["name"]: m for m in json.loads(out.getvalue())}
    assert [p["name"] for p in listed["Ocr"]["params"]] == ["image"]
    assert [(p["name"], p["required"]) for p in listed["Text"]["params"]] == [("image", True), ("query", False)]
    out = io.StringIO()
    main(["modules"], out=out, err=io.StringIO())
    text = out.getvalue()
    assert "Ocr(image: Image) -> str" in text and "Text(image: Image, query: str | None = None) -> Objects" in text
    assert "upside_down: bool = False" in text


def test_importing_the_module_loads_no_engine() -> None:
    code = "import sys, visprog.modules.ocr; print(*(m in sys.modules for m in ('rapidocr', 'onnxruntime', 'cv2')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


# --- matching and reading order -------------------------------------------------------


def test_find_query() -> None:
    words = ["Let", "us", "first", "determine", "narkers", "of", "the", "coins"]
    assert find_query(words, "first") == ([2], 1.0)
    assert find_query(words, "FIRST DETERMINE") == ([2, 3], 1.0)  # case and spaces do not matter
    assert find_query(words, "term") == ([3], 1.0)  # part of a word
    assert find_query(words, "usfirst") == ([1, 2], 1.0)  # across words
    assert find_query(words, "coins, first!") == ([2, 7], 1.0)  # the query's words in any order
    found = find_query(words, "markers")  # one misread letter in a long word
    assert found is not None and found[0] == [4] and 0.8 <= found[1] < 1.0
    assert find_query(words, "shop") is None and find_query(words, "lot") is None  # short words must match exactly
    assert find_query(words, "coins dollars") is None  # every word of the query is needed
    assert find_query(words, "...") is None
    assert find_query(["MAIN", "ST.REET"], "main street") == ([0, 1], 1.0)
    assert find_query(["MAINSTREET"], "Main Street") == ([0], 1.0)


def line(text: str, box: Box) -> Line:
    return Line(text, box, 1.0, (Word(text, box, 1.0),))


def test_reading_order_rows_top_to_bottom_left_to_right() -> None:
    right = line("OPEN", (300, 12, 400, 40))
    left = line("CAFE", (10, 10, 120, 38))
    below = line("daily", (10, 60, 90, 80))
    small = line("tm", (125, 8, 140, 18))  # half of its height overlaps CAFE's
    assert reading_order([below, right, small, left]) == [left, small, right, below]
    assert rows([below, right, left]) == [[left, right], [below]]
    assert reading_order([]) == []


def test_a_match_is_the_words_it_covers() -> None:
    sign = Line(
        "EMERGENCY EXIT",
        (0, 0, 100, 20),
        0.9,
        (Word("EMERGENCY", (2, 1, 60, 19), 0.9), Word("EXIT", (64, 2, 98, 18), 0.8)),
    )
    (found,) = ocr.matches([line("ENTRANCE", (0, 40, 80, 60)), sign], "exit")
    assert isinstance(found, Detection)
    assert (found.box, found.score, found.label) == ((64, 2, 98, 18), 0.8, "EXIT")  # the word, not the line
    (whole,) = ocr.matches([sign], "emergency exit")
    assert (whole.box, whole.label) == ((0, 0, 100, 20), "EMERGENCY EXIT")  # the whole line: the detector's box
