"""The HTML visual rationale: real programs run on the fakes, the page parsed and checked."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from visprog.errors import StepError
from visprog.language.signatures import module
from visprog.language.values import Detection, Image, Objects
from visprog.presentation.report import (
    JPEG_QUALITY,
    MAX_SIDE,
    THUMB_SIDE,
    draw_objects,
    highlight_program,
    save_html,
    trace_fragment,
    trace_html,
)
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Context, Runtime
from visprog.running.tracing import Trace

GQA = """\
# What colour is the wolf, if there is one?
BOX0=Loc(image=IMAGE, object='wolf')
IMAGE0=Crop(image=IMAGE, box=BOX0)
ANSWER0=Vqa(image=IMAGE0, question='What color is the wolf?')
ANSWER1=Count(box=BOX0)
ANSWER2=Eval(expr="'{ANSWER0}' if {ANSWER1} > 0 else 'no wolf'")
FINAL_RESULT=Result(var=ANSWER2)
"""

EMOJI = """\
OBJ0=FaceDet(image=IMAGE)
IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face_with_sunglasses')
FINAL_RESULT=Result(var=IMAGE0)
"""

COLORPOP = """\
OBJ0=Seg(image=IMAGE)
OBJ1=Select(image=IMAGE, object=OBJ0, query='person')
IMAGE0=ColorPop(image=IMAGE, object=OBJ1)
FINAL_RESULT=Result(var=IMAGE0)
"""

NLVR = """\
ANSWER0=Vqa(image=LEFT, question='Is there an astronaut?')
ANSWER1=Vqa(image=RIGHT, question='Is there an astronaut?')
ANSWER2=Eval(expr='{ANSWER0} xor {ANSWER1}')
FINAL_ANSWER=Result(var=ANSWER2)
"""

DIVIDE_BY_ZERO = """\
BOX0=Loc(image=IMAGE, object='wolf')
ANSWER0=Count(box=BOX0)
ANSWER1=Eval(expr='{ANSWER0} / 0')
FINAL_RESULT=Result(var=ANSWER1)
"""


# --- a small DOM over html.parser ----------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    def iter(self) -> Iterator[Node]:
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes)
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag or '*'} class={cls!r} {attrs}> under <{self.tag} {self.attrs.get('class', '')}>"
        return found[0]

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)


class _TreeBuilder(HTMLParser):
    """Builds a tree and fails on any mismatched end tag: the page must be well formed."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        assert tag not in _VOID, f"end tag for void element <{tag}>"
        assert self.current.tag == tag, f"</{tag}> closes <{self.current.tag}>"
        assert self.current.parent is not None
        self.current = self.current.parent

    def handle_data(self, text: str) -> None:
        self.current.children.append(text)


def parse_html(text: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    assert builder.current is builder.root, f"<{builder.current.tag}> never closed"
    return builder.root


_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}


def image_format(img: Node) -> str:
    """``png`` or ``jpeg``: the format of an ``<img>``'s ``data:`` URI."""
    match = re.match(r"data:image/(png|jpeg);base64,", img.attrs["src"])
    assert match, img.attrs["src"][:40]
    return match.group(1)


def decode_image(img: Node, fmt: str | None = None) -> PILImage.Image:
    """The picture embedded in an ``<img>`` (a PNG or JPEG ``data:`` URI; ``fmt`` if given)."""
    kind = image_format(img)
    if fmt is not None:
        assert kind == fmt, f"embedded as {kind}, expected {fmt}"
    src = img.attrs["src"]
    raw = base64.b64decode(src[src.index(",") + 1 :], validate=True)
    assert raw.startswith(_MAGIC[kind])
    image = PILImage.open(io.BytesIO(raw))
    image.load()
    assert image.format == kind.upper()
    return image


def decode_png(img: Node) -> PILImage.Image:
    return decode_image(img, "png")


def pixels(image: PILImage.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    fakes.reset()
    yield
    fakes.reset()


@pytest.fixture(scope="module")
def interpreter() -> Interpreter:
    return Interpreter(fakes.registry(), Runtime(modules={"FaceDet": {"backend": "cascade"}}))


@pytest.fixture(scope="module")
def astronaut() -> Image:
    return PILImage.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def cat() -> Image:
    return PILImage.fromarray(data.chelsea())


@pytest.fixture(scope="module")
def gqa(interpreter: Interpreter, astronaut: Image) -> tuple[Trace, Node, str]:
    fakes.VQA_ANSWERS["What color is the wolf?"] = "grey"
    try:
        trace = interpreter.run(GQA, {"IMAGE": astronaut})
    finally:
        fakes.reset()
    page = trace_html(trace, title="GQA", text="What color is the wolf?")
    return trace, parse_html(page), page


def sections(doc: Node) -> list[Node]:
    return doc.find_all("section", cls="step")


def section(doc: Node, target: str) -> Node:
    return doc.find("section", cls="step", data_target=target)


# --- a GQA-style run ------------------------------------------------------------------------


def test_one_section_per_step_in_program_order(gqa: tuple[Trace, Node, str]) -> None:
    trace, doc, _ = gqa
    got = [(s.attrs["data-line"], s.attrs["data-module"], s.attrs["data-status"]) for s in sections(doc)]
    want = [(str(r.line), r.module, "ok") for r in sorted(trace.records, key=lambda r: r.index)]
    assert got == want
    assert [g[1] for g in got] == ["Loc", "Crop", "Vqa", "Count", "Eval", "Result"]
    assert got[0][0] == "2"  # the comment is line 1
    assert doc.find("div", cls="visprog-trace").attrs["data-status"] == "ok"


def test_question_title_and_result_at_the_top(gqa: tuple[Trace, Node, str]) -> None:
    trace, doc, page = gqa
    assert doc.find("h1", cls="title").text() == "GQA"
    assert doc.find("p", cls="question").text() == "What color is the wolf?"
    assert doc.find("title").text() == "GQA"
    result = doc.find("div", cls="result")
    assert trace.result == "grey"
    assert result.find("div", cls="answer").text() == "grey"
    assert "FINAL_RESULT" in result.text()
    assert page.index('class="result"') < page.index('class="step ')


def test_every_image_is_embedded_at_its_stated_size(gqa: tuple[Trace, Node, str]) -> None:
    _, doc, _ = gqa
    imgs = doc.find_all("img")
    assert len(imgs) >= 6
    for img in imgs:
        image = decode_image(img)
        assert image.size == (int(img.attrs["width"]), int(img.attrs["height"]))
        assert max(image.size) <= MAX_SIDE
        assert img.attrs["alt"]
    # The crop is shown at its own size (the fake wolf box enlarged 1.5x, clipped to the image).
    crop = section(doc, "IMAGE0").find("img", cls="output")
    assert decode_image(crop).size == (167, 384)
    assert "downscaled" not in crop.attrs["alt"] and "title" not in crop.attrs
    # ...and is the image the Vqa step looked at, as a thumbnail.
    vqa_input = section(doc, "ANSWER0").find("dd", data_arg="image").find("img", cls="input")
    assert decode_image(vqa_input).size == (round(167 * THUMB_SIDE / 384), THUMB_SIDE)
    assert vqa_input.attrs["title"] == f"167×384 pixels, shown downscaled to {round(167 * THUMB_SIDE / 384)}×240"


def test_loc_output_is_the_input_image_with_labelled_boxes(gqa: tuple[Trace, Node, str], astronaut: Image) -> None:
    trace, doc, _ = gqa
    # Drawn exactly in the lossless page...
    loc = section(parse_html(trace_html(trace, image_format="png")), "BOX0")
    drawn = pixels(decode_png(loc.find("img", cls="output")))
    plain = np.asarray(astronaut).astype(int)
    assert drawn.shape == plain.shape  # 512x512: drawn at full size
    changed = np.abs(drawn - plain).sum(axis=2) > 0
    assert 0.005 < changed.mean() < 0.2  # boxes and tags, not a different picture
    # The first (best) box, (2, 128, 134, 384), has a blue outline on its left edge.
    box = trace.step("BOX0").output[0].box
    assert box == (2, 128, 134, 384)
    assert tuple(drawn[250, 3]) == (31, 119, 180)
    # ...and the default page shows the same picture as a JPEG that keeps the boxes' colours.
    shown = pixels(decode_image(section(doc, "BOX0").find("img", cls="output"), "jpeg"))
    assert np.abs(shown - drawn).mean() < 4
    assert np.abs(shown[250, 3] - (31, 119, 180)).max() <= 12
    loc = section(doc, "BOX0")
    # The boxes are listed with label, score and coordinates.
    items = [li.text() for li in loc.find("ol", cls="objects").find_all("li")]
    assert items == ["wolf 0.90 [2, 128, 134, 384]", "wolf 0.80 [258, 128, 390, 384]"]
    assert loc.find("dd", data_arg="object").text() == "'wolf'"


def test_objects_used_later_are_drawn_on_the_image_they_were_found_on(gqa: tuple[Trace, Node, str]) -> None:
    _, doc, _ = gqa
    count = section(doc, "ANSWER1")
    thumb = decode_image(count.find("dd", data_arg="box").find("img", cls="input"))
    assert thumb.size == (THUMB_SIDE, THUMB_SIDE)
    assert count.find("div", cls="answer").text() == "2"
    assert count.find("div", cls="output").attrs["data-type"] == "number"


def test_eval_shows_its_expression_with_the_bound_values(gqa: tuple[Trace, Node, str]) -> None:
    trace, doc, _ = gqa
    expr = section(doc, "ANSWER2").find("code", cls="bound-expr").text()
    assert expr == str(trace.step("ANSWER2").inputs["expr"])
    assert "ANSWER0='grey'" in expr and "ANSWER1=2" in expr
    assert section(doc, "ANSWER2").find("div", cls="answer").text() == "grey"


def test_timings_are_shown_for_every_step(gqa: tuple[Trace, Node, str]) -> None:
    trace, doc, _ = gqa
    for s, r in zip(sections(doc), sorted(trace.records, key=lambda r: r.index), strict=True):
        timing = s.find("span", cls="timing")
        assert float(timing.attrs["data-ms"]) == pytest.approx(r.seconds * 1000, abs=1e-3)
        assert re.fullmatch(r"(<0\.01|\d+\.\d+) ms|\d+\.\d\d s", timing.text())
        assert not s.find_all(cls="batch")  # each ran alone
    assert "total" in doc.find("div", cls="summary").text()


def test_program_is_highlighted_line_by_line(gqa: tuple[Trace, Node, str]) -> None:
    _, doc, _ = gqa
    program = doc.find("pre", cls="program")
    lines = program.find_all("span", cls="line")
    assert [ln.attrs["data-line"] for ln in lines] == [str(i) for i in range(1, 8)]
    assert lines[0].find("span", cls="tok-comment").text() == "# What colour is the wolf, if there is one?"
    assert all("ran" in ln.classes for ln in lines[1:])
    kinds = {k: [t.text() for t in program.find_all("span", cls=f"tok-{k}")] for k in ("module", "target", "arg")}
    assert kinds["module"] == ["Loc", "Crop", "Vqa", "Count", "Eval", "Result"]
    assert kinds["target"] == ["BOX0", "IMAGE0", "ANSWER0", "ANSWER1", "ANSWER2", "FINAL_RESULT"]
    assert kinds["arg"][:2] == ["image", "object"]
    placeholders = [t.text() for t in program.find_all("span", cls="tok-placeholder")]
    assert placeholders == ["{ANSWER0}", "{ANSWER1}"]
    assert "".join(ln.text() for ln in lines) == GQA.replace("\n", "")


def test_highlighter_names_every_token_kind() -> None:
    doc = parse_html(highlight_program("X=Foo(a=1.5, b=[-2, 'x'], c=True, d=Y)  # note\n\nZ=X"))
    got = [(t.attrs["class"], t.text()) for t in doc.iter() if t.tag == "span" and "line" not in t.classes]
    assert got == [
        ("tok-target", "X"),
        ("tok-punct", "="),
        ("tok-module", "Foo"),
        ("tok-punct", "("),
        ("tok-arg", "a"),
        ("tok-punct", "="),
        ("tok-num", "1.5"),
        ("tok-punct", ","),
        ("tok-arg", "b"),
        ("tok-punct", "="),
        ("tok-punct", "["),
        ("tok-num", "-2"),
        ("tok-punct", ","),
        ("tok-str", "'x'"),
        ("tok-punct", "]"),
        ("tok-punct", ","),
        ("tok-arg", "c"),
        ("tok-punct", "="),
        ("tok-const", "True"),
        ("tok-punct", ","),
        ("tok-arg", "d"),
        ("tok-punct", "="),
        ("tok-var", "Y"),
        ("tok-punct", ")"),
        ("tok-comment", "# note"),
        ("tok-target", "Z"),
        ("tok-punct", "="),
        ("tok-var", "X"),
    ]
    assert len(doc.find_all("span", cls="line")) == 3  # the blank line is kept


# --- image edits ------------------------------------------------------------------------------


def test_face_emoji_edit_shows_faces_and_the_edited_image(interpreter: Interpreter, astronaut: Image) -> None:
    trace = interpreter.run(EMOJI, {"IMAGE": astronaut})
    doc = parse_html(trace_html(trace, text="Hide her face with a cool emoji"))
    assert [s.attrs["data-module"] for s in sections(doc)] == ["FaceDet", "Emoji", "Result"]
    faces = section(doc, "OBJ0")
    assert faces.find("div", cls="output").find("div", cls="caption").text() == "1 object"
    assert "mask" in faces.find("ol", cls="objects").text()
    edited = pixels(decode_image(section(doc, "IMAGE0").find("img", cls="output"), "jpeg"))
    assert edited.shape == (512, 512, 3)
    assert np.abs(edited - np.asarray(trace.result).astype(int)).mean() < 4  # the edited photo, as a JPEG
    result = doc.find("div", cls="result")
    assert result.attrs["data-type"] == "image"
    assert np.array_equal(pixels(decode_image(result.find("img", cls="result-image"))), edited)
    # The lossless page shows it exactly.
    lossless = parse_html(trace_html(trace, image_format="png"))
    exact = pixels(decode_png(section(lossless, "IMAGE0").find("img", cls="output")))
    assert np.array_equal(exact, np.asarray(trace.result))
    # Result passes the image through: said in words, not embedded a third time.
    assert "unchanged" in section(doc, "FINAL_RESULT").find("div", cls="output").text()
    assert not section(doc, "FINAL_RESULT").find("div", cls="output").find_all("img")


def test_masks_are_drawn_as_tinted_overlays(interpreter: Interpreter, astronaut: Image) -> None:
    trace = interpreter.run(COLORPOP, {"IMAGE": astronaut})
    doc = parse_html(trace_html(trace))
    seg = pixels(decode_image(section(doc, "OBJ0").find("img", cls="output")))
    plain = np.asarray(astronaut).astype(int)
    # The fake Seg gives three vertical bands: each pixel moves towards its band's colour (blue, orange, green).
    bands = [((20, 150), (31, 119, 180)), ((190, 320), (255, 127, 14)), ((360, 490), (44, 160, 44))]
    for (x0, x1), colour in bands:
        before = np.abs(plain[100:400, x0:x1] - colour).sum(axis=2)
        after = np.abs(seg[100:400, x0:x1] - colour).sum(axis=2)
        assert (after < before).mean() > 0.95
        assert (before - after).mean() > 40
    assert [li.find("span", cls="label").text() for li in section(doc, "OBJ0").find_all("li")] == [
        "person",
        "dog",
        "sky",
    ]
    assert section(doc, "OBJ1").find("div", cls="output").find("div", cls="caption").text() == "1 object"
    assert doc.find("div", cls="result").find("img", cls="result-image")


def test_large_images_are_downscaled(interpreter: Interpreter) -> None:
    big = PILImage.fromarray(np.tile(data.astronaut(), (2, 3, 1)))  # 1536x1024
    trace = interpreter.run("BOX0=Loc(image=IMAGE, object='dog')\nRESULT=BOX0", {"IMAGE": big})
    doc = parse_html(trace_html(trace))
    sizes = {decode_image(img).size for img in doc.find_all("img")}
    assert (512, 341) in sizes and (THUMB_SIDE, 160) in sizes
    assert all(max(s) <= MAX_SIDE for s in sizes)
    assert section(doc, "RESULT").attrs["data-module"] == "="
    assert doc.find("div", cls="result").attrs["data-type"] == "objects"


# --- how pictures are embedded: JPEG or PNG, and how large ----------------------------------


def _shown(image: Image) -> Trace:
    """A run that only passes ``image`` through: the page shows it as the input (a thumbnail) and the result."""
    return Trace(source="RESULT=IMAGE", inputs={"IMAGE": image}, result=image, result_var="RESULT")


def _result_img(doc: Node) -> Node:
    return doc.find("div", cls="result").find("img", cls="result-image")


def _input_img(doc: Node) -> Node:
    return doc.find("div", cls="program-inputs").find("img", cls="input")


def test_a_photograph_is_embedded_as_jpeg(astronaut: Image) -> None:
    trace = _shown(astronaut)
    page = trace_html(trace)
    doc = parse_html(page)
    result = _result_img(doc)
    shown = decode_image(result, "jpeg")
    assert shown.size == (512, 512) and shown.mode == "RGB"
    assert np.abs(pixels(shown) - np.asarray(astronaut).astype(int)).mean() < 4  # the same photo
    assert "downscaled" not in result.attrs["alt"] and "title" not in result.attrs  # shown at its own size
    assert decode_image(_input_img(doc), "jpeg").size == (THUMB_SIDE, THUMB_SIDE)
    # Many times smaller than the lossless page, which is what image_format="png" still gives.
    lossless = trace_html(trace, image_format="png")
    assert image_format(_result_img(parse_html(lossless))) == "png"
    assert len(page) * 4 < len(lossless)


def _disc(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    return np.asarray((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2)


def _with_alpha() -> Image:
    rgba = np.dstack([data.astronaut(), np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))])
    return PILImage.fromarray(rgba, "RGBA")


def _flat_graphic() -> Image:
    out = np.full((384, 512, 3), 255, np.uint8)
    out[40:200, 30:250] = (31, 119, 180)
    out[120:340, 200:480] = (255, 127, 14)
    out[_disc((512, 384))] = (44, 160, 44)
    return PILImage.fromarray(out)


@pytest.mark.parametrize(
    ("kind", "make", "thumb_too"),
    [
        ("transparency", _with_alpha, True),
        ("1-bit mask", lambda: PILImage.fromarray(data.astronaut()[..., 0] > 128), True),
        ("grey mask", lambda: PILImage.fromarray(_disc((512, 384)).astype(np.uint8) * 255, "L"), True),
        ("palette", lambda: PILImage.fromarray(data.astronaut()).quantize(64), False),
        ("flat graphic", _flat_graphic, False),
    ],
)
def test_transparency_masks_palettes_and_flat_pictures_stay_png(kind: str, make: Any, thumb_too: bool) -> None:
    image = make()
    doc = parse_html(trace_html(_shown(image)))
    shown = decode_image(_result_img(doc), "png")
    assert shown.size == image.size
    # Lossless: every pixel (and the transparency) as it was.
    if image.mode == "RGBA":
        assert shown.mode == "RGBA"
    assert np.array_equal(np.asarray(shown.convert(image.mode)), np.asarray(image.convert(image.mode)))
    if thumb_too:  # downscaled, still PNG (resized, a palette photo or a graphic is JPEG where that is smaller)
        assert decode_image(_input_img(doc), "png").size == (THUMB_SIDE, round(image.height * THUMB_SIDE / 512))


def _encoded(image: Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_small_pictures_keep_the_smaller_encoding(astronaut: Image) -> None:
    y, x = np.mgrid[0:48, 0:48]
    gradient = PILImage.fromarray(np.dstack([x * 5, y * 5, (x + y) * 2]).astype(np.uint8))  # 2304 colours
    assert len(_encoded(gradient, "PNG")) < len(_encoded(gradient, "JPEG", quality=JPEG_QUALITY))
    png = decode_image(_result_img(parse_html(trace_html(_shown(gradient)))), "png")
    assert np.array_equal(np.asarray(png), np.asarray(gradient))
    # A small crop of a photograph is still smaller as JPEG.
    crop = astronaut.crop((180, 100, 244, 164))
    assert decode_image(_result_img(parse_html(trace_html(_shown(crop)))), "jpeg").size == (64, 64)


def test_image_format_can_be_chosen(astronaut: Image) -> None:
    flat, rgba = _flat_graphic(), _with_alpha()
    for image, fmt, want in [
        (astronaut, "png", "png"),
        (flat, "jpeg", "jpeg"),
        (rgba, "jpeg", "png"),  # JPEG cannot keep transparency
        (PILImage.fromarray(data.astronaut()).quantize(64), "jpeg", "jpeg"),
    ]:
        doc = parse_html(trace_html(_shown(image), image_format=fmt))  # type: ignore[arg-type]
        assert {image_format(img) for img in doc.find_all("img")} == {want}, (image.mode, fmt)
    with pytest.raises(ValueError, match="image_format"):
        trace_html(_shown(astronaut), image_format="webp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_image_side"):
        trace_html(_shown(astronaut), max_image_side=0)


def test_large_pictures_are_capped_and_say_their_original_size() -> None:
    big = PILImage.fromarray(np.tile(data.astronaut(), (3, 4, 1)))  # 2048x1536
    trace = _shown(big)
    doc = parse_html(trace_html(trace))
    result = _result_img(doc)
    assert decode_image(result, "jpeg").size == (MAX_SIDE, 384)
    assert result.attrs["alt"] == "image 2048x1536, shown downscaled to 512x384"
    assert result.attrs["title"] == "2048×1536 pixels, shown downscaled to 512×384"
    assert doc.find("div", cls="result").find("figcaption").text() == "2048×1536"
    thumb = _input_img(doc)
    assert decode_image(thumb).size == (THUMB_SIDE, 180)
    assert thumb.attrs["title"] == "2048×1536 pixels, shown downscaled to 240×180"
    assert trace.result is big and big.size == (2048, 1536)  # the run's image is not touched
    # The cap is a knob: larger, none at all, or smaller than a thumbnail.
    for side, want, thumb_size in [
        (1024, (1024, 768), (240, 180)),
        (None, (2048, 1536), (240, 180)),
        (100, (100, 75), (100, 75)),
    ]:
        doc = parse_html(trace_html(trace, max_image_side=side))
        assert decode_image(_result_img(doc)).size == want, side
        assert decode_image(_input_img(doc)).size == thumb_size, side
    assert "title" not in _result_img(parse_html(trace_html(trace, max_image_side=None))).attrs


#: The demo's page (FaceDet + Emoji on the astronaut) was 2,346,239 bytes with every picture a PNG and is
#: about 367,000 with JPEG photographs; the bound leaves room for a changed picture or layout.
DEMO_PAGE_BOUND = 600_000


def test_the_demo_page_is_small(interpreter: Interpreter, astronaut: Image) -> None:
    from visprog.apps.commands import DEMO_PROGRAM

    trace = interpreter.run(DEMO_PROGRAM, {"IMAGE": astronaut})
    page = trace_html(trace, text="Hide the astronaut's face with an emoji.")
    size = len(page.encode("utf-8"))
    assert size < DEMO_PAGE_BOUND, size
    doc = parse_html(page)
    assert {image_format(img) for img in doc.find_all("img")} == {"jpeg"}
    # Every picture is still there, at the size it had.
    assert decode_image(_result_img(doc)).size == (512, 512)
    assert decode_image(section(doc, "OBJ0").find("img", cls="output")).size == (512, 512)
    assert len(trace_html(trace, image_format="png").encode("utf-8")) > 4 * size


# --- NLVR: two images -------------------------------------------------------------------------


def test_left_and_right_images_are_both_shown(interpreter: Interpreter, astronaut: Image, cat: Image) -> None:
    fakes.VQA_ANSWERS["Is there an astronaut?"] = "yes"
    trace = interpreter.run(NLVR, {"LEFT": astronaut, "RIGHT": cat})
    doc = parse_html(trace_html(trace, text="Exactly one image shows an astronaut."))
    inputs = doc.find("div", cls="program-inputs")
    assert [n.text() for n in inputs.find_all("div", cls="input-name")] == ["LEFT", "RIGHT"]
    assert [decode_image(i).size for i in inputs.find_all("img")] == [(240, 240), (240, 160)]
    left, right = section(doc, "ANSWER0"), section(doc, "ANSWER1")
    assert decode_image(left.find("img", cls="input")).size == (240, 240)
    assert decode_image(right.find("img", cls="input")).size == (240, 160)
    # The two Vqa steps ran as one batched call.
    assert left.find("span", cls="batch").text() == "batch of 2"
    assert left.find("span", cls="batch").attrs["data-batch"] == "2"
    bound = section(doc, "ANSWER2").find("code", cls="bound-expr").text()
    assert bound == "{ANSWER0} xor {ANSWER1} (with ANSWER0='yes', ANSWER1='yes')"
    assert trace.result is False
    assert doc.find("div", cls="result").find("div", cls="answer").text() == "False"


# --- failures ---------------------------------------------------------------------------------


def test_failed_eval_is_red_with_its_error_and_the_steps_before_it_intact(
    interpreter: Interpreter, astronaut: Image
) -> None:
    with pytest.raises(StepError) as info:
        interpreter.run(DIVIDE_BY_ZERO, {"IMAGE": astronaut})
    assert info.value.trace is not None
    doc = parse_html(trace_html(info.value.trace))
    got = [(s.attrs["data-target"], s.attrs["data-status"]) for s in sections(doc)]
    assert got == [("BOX0", "ok"), ("ANSWER0", "ok"), ("ANSWER1", "failed")]
    failed = section(doc, "ANSWER1")
    assert "failed" in failed.classes
    assert "division by zero" in failed.find("div", cls="error").text()
    assert failed.find("code", cls="bound-expr").text() == "{ANSWER0} / 0 (with ANSWER0=2)"
    assert not failed.find_all(cls="timing")
    # The steps before it keep their pictures and answers.
    assert decode_image(section(doc, "BOX0").find("img", cls="output")).size == (512, 512)
    assert section(doc, "ANSWER0").find("div", cls="answer").text() == "2"
    # The result names the failed line; the program marks it and the line that never ran.
    result = doc.find("div", cls="result")
    assert "failed" in result.classes and "line 3 (Eval)" in result.text()
    assert "division by zero" in result.text()
    lines = doc.find("pre", cls="program").find_all("span", cls="line")
    assert [ln.classes[1] for ln in lines] == ["ran", "ran", "failed", "not-run"]
    assert doc.find("div", cls="visprog-trace").attrs["data-status"] == "failed"
    css = doc.find("div", cls="visprog-trace").find("style").text()
    assert "--red:#cf222e" in css and ".visprog-trace .step.failed{border-color:var(--red)" in css


def test_unknown_emoji_fails_after_the_faces_were_found(interpreter: Interpreter, astronaut: Image) -> None:
    # the name as an input: the checker, which refuses an unknown literal emoji name, cannot see it
    program = EMOJI.replace("'smiling_face_with_sunglasses'", "NAME")
    with pytest.raises(StepError) as info:
        interpreter.run(program, {"IMAGE": astronaut, "NAME": "smiling_face_with_sunglases"})
    assert info.value.trace is not None
    doc = parse_html(trace_html(info.value.trace))
    assert [s.attrs["data-status"] for s in sections(doc)] == ["ok", "failed"]
    error = section(doc, "IMAGE0").find("div", cls="error").text()
    assert "unknown emoji 'smiling_face_with_sunglases'" in error and "did you mean" in error
    assert section(doc, "OBJ0").find("img", cls="output")


def _explode(calls: Sequence[dict[str, Any]], ctx: Context) -> list[Objects]:
    raise RuntimeError("out of memory")


@module(batch=_explode)
def Boom(image: Image, object: str) -> Objects:
    """Find nothing, loudly: the batch always fails, a single call only for 'x'.

    Args:
        image: an image.
        object: a name.
    """
    if object == "x":
        raise RuntimeError("out of memory")
    return []


def test_a_failed_batch_shows_each_steps_own_outcome(astronaut: Image) -> None:
    registry = fakes.registry()
    registry.register(Boom)
    program = "A=Boom(image=IMAGE, object='x')\nB=Boom(image=IMAGE, object='y')\nRESULT=Count(box=A)"
    with pytest.raises(StepError) as info:
        Interpreter(registry).run(program, {"IMAGE": astronaut})
    assert info.value.trace is not None
    doc = parse_html(trace_html(info.value.trace))
    # the batch of two failed, so each step ran alone: A failed, B ran, RESULT never did
    assert [s.attrs["data-status"] for s in sections(doc)] == ["failed", "ok"]
    assert "out of memory" in section(doc, "A").find("div", cls="error").text()
    assert "batch of" not in section(doc, "B").text()
    lines = doc.find("pre", cls="program").find_all("span", cls="line")
    assert [ln.classes[1] for ln in lines] == ["failed", "ran", "not-run"]


# --- safety and packaging ----------------------------------------------------------------------

ATTACK = "<script>alert(1)</script>"


def test_program_text_and_answers_cannot_inject_markup(interpreter: Interpreter, astronaut: Image) -> None:
    fakes.VQA_ANSWERS[ATTACK] = ATTACK + '" onload="x'
    program = f"# {ATTACK}\nANSWER0=Vqa(image=IMAGE, question='{ATTACK}')\nRESULT=Result(var=ANSWER0)"
    trace = interpreter.run(program, {"IMAGE": astronaut})
    page = trace_html(trace, title=ATTACK, text=ATTACK)
    assert "<script" not in page.lower()
    assert not re.findall(r"<(?![a-zA-Z/!])", page)  # every '<' opens a tag: all text is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    doc = parse_html(page)
    assert not doc.find_all("script")
    assert not [n for n in doc.iter() if "onload" in n.attrs]
    assert doc.find("p", cls="question").text() == ATTACK
    assert doc.find("div", cls="result").find("div", cls="answer").text() == ATTACK + '" onload="x'
    assert section(doc, "ANSWER0").find("dd", data_arg="question").text() == repr(ATTACK)
    assert doc.find("pre", cls="program").find("span", cls="tok-comment").text() == f"# {ATTACK}"


def test_page_is_self_contained(gqa: tuple[Trace, Node, str]) -> None:
    _, doc, page = gqa
    assert "http://" not in page and "https://" not in page
    assert page.startswith("<!DOCTYPE html>")
    assert not re.findall(r"<(?![a-zA-Z/!])", page)  # every '<' opens a tag ('<0.01 ms' is escaped)
    for node in doc.iter():
        for attr in ("src", "href"):
            if attr in node.attrs:
                assert node.attrs[attr].startswith(("data:image/png;base64,", "data:image/jpeg;base64,", "#")), (
                    node.attrs[attr][:60]
                )
    assert not doc.find_all("script") and not doc.find_all("link") and not doc.find_all("iframe")
    assert "url(" not in "".join(s.text() for s in doc.find_all("style"))


def test_the_fragment_is_the_page_body(gqa: tuple[Trace, Node, str]) -> None:
    trace, _, _ = gqa
    fragment = trace_fragment(trace)
    assert fragment.startswith('<div class="visprog-trace"')
    assert fragment in trace_html(trace)
    # Its CSS is scoped to the trace, so it does not restyle the notebook around it.
    css = parse_html(fragment).find("style").text()
    rules = [r.split("{", 1)[0].strip() for r in re.findall(r"[^{}]+\{[^{}]*\}", css) if "@media" not in r]
    assert rules and all(sel.startswith(".visprog-trace") for r in rules for sel in r.split(","))


def test_save_html_writes_the_page(gqa: tuple[Trace, Node, str], tmp_path: Path) -> None:
    trace, _, _ = gqa
    path = save_html(trace, tmp_path / "runs" / "trace.html", text="What color is the wolf?")
    assert path == tmp_path / "runs" / "trace.html"
    assert path.read_text(encoding="utf-8") == trace_html(trace, text="What color is the wolf?")
    assert save_html(trace, str(tmp_path / "t.html")).is_file()


def test_the_page_is_drawn_from_the_trace_data(interpreter: Interpreter, astronaut: Image) -> None:
    fakes.VQA_ANSWERS["What color is the wolf?"] = "grey"
    trace = interpreter.run(GQA, {"IMAGE": astronaut})
    data_ = trace.to_dict()
    page = trace_html(trace, text="What color is the wolf?", image_format="png")
    # The data, or the trace read back from its JSON, gives the same page to the byte.
    assert trace_html(data_, text="What color is the wolf?", image_format="png") == page
    assert trace_html(Trace.from_json(trace.to_json()), text="What color is the wolf?", image_format="png") == page
    assert trace_fragment(data_) == trace_fragment(trace)


NOTEBOOK = """
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()  # as in a notebook: IPython runs before visprog is imported
import sys
import visprog
from visprog.running.tracing import Trace

assert not [m for m in sys.modules if m.startswith("visprog.presentation")], "drawing loaded before any display"
trace = Trace("X=Eval(expr='1 + 1')", result=2, result_var="X")
data, _ = shell.display_formatter.format(trace)
from visprog.presentation.report import trace_fragment

assert data["text/html"] == trace_fragment(trace), data
print("ok")
"""


def test_a_notebook_shows_a_trace_as_its_page_fragment() -> None:
    """``import visprog`` in IPython registers a trace's HTML view by name: nothing is drawn before one is shown."""
    pytest.importorskip("IPython")
    done = subprocess.run(
        [sys.executable, "-c", NOTEBOOK], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[3]
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_trace_module_does_not_import_the_page() -> None:
    """Layers: the trace (running) knows nothing of its HTML page (presentation)."""
    import ast

    import visprog.running.encoding
    import visprog.running.tracing

    for mod in (visprog.running.tracing, visprog.running.encoding):
        tree = ast.parse(Path(mod.__file__ or "").read_text(encoding="utf-8"))
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n.startswith("visprog.presentation")], mod.__name__
    assert not hasattr(Trace, "to_html") and not hasattr(Trace, "_repr_html_")


def test_draw_objects_skips_masks_of_another_size(astronaut: Image) -> None:
    wrong = Detection((10, 10, 100, 100), 0.5, "cup", np.ones((20, 20), dtype=bool))
    drawn = np.asarray(draw_objects(astronaut, [wrong])).astype(int)
    plain = np.asarray(astronaut).astype(int)
    assert np.array_equal(drawn[50:90, 50:90], plain[50:90, 50:90])  # inside the box: untouched
    assert tuple(drawn[60, 11]) == (31, 119, 180)  # the box is drawn
