"""A generated trace page opened in headless Chromium: structure, styling and images, checked through the DOM.

Needs Debian's ``/usr/bin/chromium`` and the ``playwright`` package (no browser
download); skipped when either is missing. Screenshots are written to
``$VISPROG_TEST_ARTIFACTS/render/`` (else the test's temporary folder) and
their paths printed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from visprog.errors import StepError
from visprog.presentation.report import save_html
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Runtime
from visprog.running.tracing import Trace

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
]

# A GQA-style program whose last Eval divides by zero: five steps run, the sixth fails.
FAILING = """\
BOX0=Loc(image=IMAGE, object='wolf')
IMAGE0=Crop(image=IMAGE, box=BOX0)
ANSWER0=Vqa(image=IMAGE0, question='How many legs does the wolf have?')
ANSWER1=Count(box=BOX0)
OBJ0=FaceDet(image=IMAGE)
ANSWER2=Eval(expr='{ANSWER0} / ({ANSWER1} - 2)')
FINAL_RESULT=Result(var=ANSWER2)
"""

EDIT = """\
OBJ0=FaceDet(image=IMAGE)
IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face_with_sunglasses')
FINAL_RESULT=Result(var=IMAGE0)
"""


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("VISPROG_TEST_ARTIFACTS")
    out = Path(root) / "render" if root else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def interpreter() -> Interpreter:
    return Interpreter(fakes.registry(), Runtime(modules={"FaceDet": {"backend": "cascade"}}))


def _failing_trace(interpreter: Interpreter) -> Trace:
    fakes.reset()
    fakes.VQA_ANSWERS["How many legs does the wolf have?"] = "four"
    try:
        with pytest.raises(StepError) as info:
            interpreter.run(FAILING, {"IMAGE": PILImage.fromarray(data.astronaut())})
    finally:
        fakes.reset()
    assert info.value.trace is not None
    return info.value.trace


def _open(browser: Any, path: Path, width: int) -> Any:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(path.resolve().as_uri(), wait_until="load")
    return page


def _rgb(css: str) -> tuple[int, ...]:
    assert css.startswith("rgb"), css
    return tuple(int(float(v)) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])


def test_failed_trace_in_chromium(browser: Any, interpreter: Interpreter, artifacts: Path) -> None:
    trace = _failing_trace(interpreter)
    path = save_html(trace, artifacts / "failed_trace.html", text="How many legs per extra wolf?")
    page = _open(browser, path, 1200)
    try:
        steps = page.eval_on_selector_all(
            "section.step", "els => els.map(e => [e.dataset.line, e.dataset.module, e.dataset.status])"
        )
        assert steps == [
            ["1", "Loc", "ok"],
            ["2", "Crop", "ok"],
            ["3", "Vqa", "ok"],
            ["4", "Count", "ok"],
            ["5", "FaceDet", "ok"],
            ["6", "Eval", "failed"],
        ]
        # The failed step is red: its border, its error text; the steps before it are not.
        failed = page.locator("section.step.failed")
        assert failed.count() == 1
        r, g, b = _rgb(failed.evaluate("e => getComputedStyle(e).borderTopColor"))
        assert r > 150 and g < 90 and b < 90
        error = failed.locator(".error")
        r, g, b = _rgb(error.evaluate("e => getComputedStyle(e).color"))
        assert r > 150 and g < 90 and b < 90
        assert "division by zero" in error.inner_text()
        r, g, b = _rgb(page.locator("section.step").first.evaluate("e => getComputedStyle(e).borderTopColor"))
        assert abs(r - g) < 40 and abs(g - b) < 40  # grey
        bound = failed.locator(".bound-expr").inner_text()
        assert "{ANSWER0} / ({ANSWER1} - 2) (with ANSWER0='four', ANSWER1=2)" in bound
        # Every image decoded and is drawn at a visible size.
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight, e.clientWidth])"
        )
        assert len(images) >= 8
        assert all(done and w > 0 and h > 0 and shown > 0 for done, w, h, shown in images), images
        assert page.locator("section.step[data-module=Loc] img.output").evaluate("e => e.naturalWidth") == 512
        # The result says where it failed and links to the step.
        assert "line 6 (Eval)" in page.locator(".result").inner_text()
        assert page.locator(".result a").get_attribute("href") == "#line-6"
        assert page.locator("#line-6").get_attribute("data-status") == "failed"
        # Nothing overflows the page sideways.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shot = artifacts / "failed_trace.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert PILImage.open(shot).size[0] == 1200
    finally:
        page.close()


def test_edit_trace_in_chromium_wide_and_narrow(browser: Any, interpreter: Interpreter, artifacts: Path) -> None:
    trace = interpreter.run(EDIT, {"IMAGE": PILImage.fromarray(data.astronaut())})
    path = save_html(trace, artifacts / "edit_trace.html", text="Hide her face with a cool emoji")
    for width in (1200, 420):
        page = _open(browser, path, width)
        try:
            assert page.locator("section.step").count() == 3
            assert page.locator("section.step[data-status=ok]").count() == 3
            assert page.locator(".pill.ok").inner_text().endswith("completed")
            result = page.locator(".result img.result-image")
            assert result.evaluate("e => e.complete && e.naturalWidth") == 512
            box = result.bounding_box()
            assert box is not None and 0 < box["width"] <= width
            tokens = page.eval_on_selector_all("pre.program .tok-module", "els => els.map(e => e.textContent)")
            assert tokens == ["FaceDet", "Emoji", "Result"]
            colour = _rgb(page.locator("pre.program .tok-module").first.evaluate("e => getComputedStyle(e).color"))
            assert colour != _rgb(page.locator("pre.program .tok-str").first.evaluate("e => getComputedStyle(e).color"))
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            shot = artifacts / f"edit_trace_{width}.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            page.close()
