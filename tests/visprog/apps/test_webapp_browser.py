"""The web app in a real browser: headless Chromium (Debian's) driven by Playwright.

The app runs on 127.0.0.1 with the offline backends (FaceDet's cascade) and a
scripted LLM that answers the emoji program. Screenshots are kept in
``$VISPROG_TEST_ARTIFACTS`` (else a temporary folder, printed).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import skimage.data
from PIL import Image as PILImage

from tests import fakes
from tests.llm_server import Reply, ScriptedServer
from tests.visprog.apps.test_webapp import EMOJI_PROGRAM, INSTRUCTION, scripted_llm
from visprog.llm import client_from_options
from visprog.planner.core import Planner
from visprog.running.runtime import Runtime

CHROMIUM = "/usr/bin/chromium"
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
#: Longest wait for one thing to appear (ms).
WAIT_MS = 60_000

if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
# Gradio's own queue code warns under recent pandas; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("gradio", reason="gradio is not installed (pip install 'visprog[web]')")


@dataclass
class Served:
    url: str
    llm: ScriptedServer
    artifacts: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("VISPROG_TEST_ARTIFACTS")
    folder = Path(root) / "webapp" if root else tmp_path_factory.mktemp("webapp-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nweb app screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def served(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app on a free port of 127.0.0.1, with a scripted planner; closed at the end."""
    from visprog.apps.webapp import build_app, launch_options

    with pytest.MonkeyPatch.context() as mp, scripted_llm() as llm:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, "127.0.0.1,localhost")
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            mp.delenv(name, raising=False)
        backend = client_from_options(base_url=llm.url, model="tiny", max_retries=0, timeout=5)
        planner = Planner(backend, registry=fakes.registry(), cache=False)
        runtime = Runtime(modules={"FaceDet": {"backend": "cascade"}})
        # one request at a time: the queued-run test needs a run that waits in the queue (with more, a second run
        # starts at once, with the program the box holds then)
        app = build_app(planner_factory=lambda: planner, registry=fakes.registry(), runtime=runtime, max_concurrent=1)
        port = _free_port()
        app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
        try:
            yield Served(f"http://127.0.0.1:{port}/", llm, artifacts)
        finally:
            app.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})  # a fresh profile
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(served.url)
    page.wait_for_selector("#vp-image input[type=file]", state="attached")
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    PILImage.fromarray(skimage.data.astronaut()).save(path)
    return path


# --- helpers ----------------------------------------------------------------------------------


def _trace_text(page: Any) -> str:
    """The trace area's text, inside its frame when the rich view is shown."""
    if page.locator("#vp-trace iframe").count():
        return str(page.frame_locator("#vp-trace iframe").locator("body").inner_text())
    return str(page.locator("#vp-trace").inner_text())


def _wait_for_trace(page: Any, *words: str) -> str:
    text = ""
    for _ in range(WAIT_MS // 250):
        text = _trace_text(page)
        if all(w in text for w in words):
            return text
        page.wait_for_timeout(250)
    raise AssertionError(f"the trace never showed {words}; it shows: {text[:500]!r}")


def _result_image_src(page: Any) -> str:
    page.wait_for_function(
        "() => { const i = document.querySelector('#vp-result img'); return i && i.complete && i.naturalWidth > 0; }",
        timeout=WAIT_MS,
    )
    return str(page.locator("#vp-result img").first.get_attribute("src"))


def _set_program(page: Any, text: str) -> None:
    editor = page.locator("#vp-program .cm-content")
    editor.click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)


def _shoot(page: Any, served: Served, name: str) -> Path:
    path = served.artifacts / name
    page.screenshot(path=str(path), full_page=True)
    with PILImage.open(path) as shot:
        assert shot.format == "PNG" and shot.width == 1400
    return path


def _plan_edit(page: Any, served: Served, astronaut_png: Path) -> str:
    """Upload the astronaut, ask for the emoji edit, return the result image's address."""
    served.llm.script([EMOJI_PROGRAM])
    page.locator("#vp-image input[type=file]").set_input_files(str(astronaut_png))
    page.wait_for_selector("#vp-image img")
    page.locator("#vp-text textarea").fill(INSTRUCTION)
    page.locator("#vp-plan").click()
    return _result_image_src(page)


# --- tests ------------------------------------------------------------------------------------


def test_plan_and_run_in_the_browser(page: Any, served: Served, astronaut_png: Path) -> None:
    _shoot(page, served, "01_start.png")
    requests_before = len(served.llm.requests)
    src = _plan_edit(page, served, astronaut_png)

    size = page.evaluate(
        "() => { const i = document.querySelector('#vp-result img'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert size == [512, 512]
    assert src
    trace = _wait_for_trace(page, "FaceDet", "Emoji")
    assert "smiling_face_with_sunglasses" in trace
    status = page.locator("#vp-status").inner_text()
    assert "Done (Edit, chosen from the text)" in status
    program = page.locator("#vp-program .cm-content").inner_text()
    assert "OBJ0=FaceDet(image=IMAGE)" in program
    assert "emoji='smiling_face_with_sunglasses'" in program
    assert len(served.llm.requests) == requests_before + 1
    body = served.llm.requests[-1].body
    assert body["model"] == "tiny"
    assert INSTRUCTION in body["messages"][-1]["content"]
    _shoot(page, served, "02_result.png")


def test_edit_the_program_and_run_it_again(page: Any, served: Served, astronaut_png: Path) -> None:
    requests_before = len(served.llm.requests)
    page.locator("#vp-image input[type=file]").set_input_files(str(astronaut_png))
    page.wait_for_selector("#vp-image img")

    # a typo: the checker's diagnostics appear, no stack trace
    _set_program(page, EMOJI_PROGRAM.replace("Emoji(", "Emoj("))
    page.locator("#vp-run").click()
    alert = page.locator("#vp-status .vp-error")
    alert.wait_for()
    text = alert.inner_text()
    assert "The program has 1 check error" in text
    assert "line 2, col 8: unknown module 'Emoj' (did you mean 'Emoji'?)" in text
    assert "Traceback" not in page.content()
    _shoot(page, served, "03_check_error.png")

    # fixed, with another emoji: it runs as written, without asking the LLM
    _set_program(page, EMOJI_PROGRAM.replace("smiling_face_with_sunglasses", "grinning_face"))
    page.locator("#vp-run").click()
    page.locator("#vp-status .vp-ok").wait_for()
    assert "Done (edited program)" in page.locator("#vp-status").inner_text()
    assert _result_image_src(page)
    trace = _wait_for_trace(page, "FaceDet", "grinning_face")
    assert "smiling_face_with_sunglasses" not in trace
    assert len(served.llm.requests) == requests_before
    _shoot(page, served, "04_edited.png")


def test_no_image_is_a_message(page: Any, served: Served) -> None:
    requests_before = len(served.llm.requests)
    page.locator("#vp-text textarea").fill(INSTRUCTION)
    page.locator("#vp-plan").click()
    alert = page.locator("#vp-status .vp-error")
    alert.wait_for()
    assert "No image" in alert.inner_text()
    assert len(served.llm.requests) == requests_before
    _shoot(page, served, "05_no_image.png")


# --- live progress, uploads, wrapping, examples, downloads -------------------------------------

#: Records every status the page shows and when step cards show in the trace (however briefly).
_WATCH = """() => {
  window.vpSeen = [];
  window.vpCards = 0;
  window.vpDisabledWhileBusy = [];
  const look = () => {
    const s = document.querySelector('#vp-status .vp-status');
    if (s) {
      const t = s.innerText;
      if (window.vpSeen[window.vpSeen.length - 1] !== t) window.vpSeen.push(t);
      if (s.classList.contains('vp-busy') && !t.startsWith('Queued')) {  // running, not just sent
        const off = ['#vp-plan', '#vp-run'].map(id => document.querySelector(id).disabled);
        window.vpDisabledWhileBusy.push(off.every(Boolean));
      }
    }
    const cards = document.querySelectorAll('#vp-trace .vp-step-card').length;
    window.vpCards = Math.max(window.vpCards, cards);
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                    attributes: true});
}"""


def _wait_for_status(page: Any, text: str) -> None:
    page.wait_for_function(
        "text => (document.querySelector('#vp-status .vp-status')?.innerText || '').includes(text)", arg=text
    )


def _status(page: Any, kind: str) -> str:
    box = page.locator(f"#vp-status .vp-{kind}")
    box.wait_for()
    return str(box.inner_text())


def test_the_work_shows_as_it_happens(page: Any, served: Served, astronaut_png: Path) -> None:
    """Planning, a repair round with its diagnostics, each step as it runs; the buttons off meanwhile."""
    bad = EMOJI_PROGRAM.replace("Emoji(", "Emoj(")
    served.llm.script([Reply.slow(1.0, bad), Reply.slow(1.0, EMOJI_PROGRAM)])
    page.locator("#vp-image input[type=file]").set_input_files(str(astronaut_png))
    page.wait_for_selector("#vp-image img")
    page.evaluate(_WATCH)
    page.locator("#vp-text textarea").fill(INSTRUCTION)
    page.locator("#vp-plan").click()
    busy = _status(page, "busy")
    assert busy.startswith(("Queued", "Starting", "Planning"))
    assert page.locator("#vp-plan").is_disabled() and page.locator("#vp-run").is_disabled()
    _wait_for_status(page, "repair round 1")
    _shoot(page, served, "06_repair_round.png")
    page.locator("#vp-status .vp-ok").wait_for()
    page.wait_for_function(
        "() => !document.querySelector('#vp-plan').disabled && !document.querySelector('#vp-run').disabled"
    )

    seen = "\n---\n".join(page.evaluate("window.vpSeen"))
    assert "Planning: asking the LLM for a program" in seen
    assert "Planning: repair round 1: the program has 1 error" in seen
    assert "unknown module 'Emoj' (did you mean 'Emoji'?)" in seen  # the diagnostics, while repairing
    assert "Step 1 of 3: OBJ0 = FaceDet (line 1)" in seen
    assert "Step 2 of 3: IMAGE0 = Emoji (line 2)" in seen
    assert "Done (Edit, chosen from the text)" in seen
    assert page.evaluate("window.vpCards") >= 2  # step cards showed before the finished trace replaced them
    assert all(page.evaluate("window.vpDisabledWhileBusy"))
    assert _wait_for_trace(page, "FaceDet", "Emoji")


def test_a_queued_run_reads_the_program_box_when_it_starts(page: Any, served: Served, astronaut_png: Path) -> None:
    page.locator("#vp-image input[type=file]").set_input_files(str(astronaut_png))
    page.wait_for_selector("#vp-image img")
    _set_program(page, EMOJI_PROGRAM.replace("smiling_face_with_sunglasses", "grinning_face"))
    served.llm.script([Reply.slow(1.5, EMOJI_PROGRAM)])
    page.locator("#vp-text textarea").fill(INSTRUCTION)
    page.locator("#vp-plan").click()
    _status(page, "busy")
    # a run that got into the queue anyway (the button is off): it waits for the plan
    page.evaluate("() => { const b = document.querySelector('#vp-run'); b.disabled = false; b.click(); }")
    _wait_for_status(page, "Done (edited program)")
    trace = _wait_for_trace(page, "Emoji")
    assert "smiling_face_with_sunglasses" in trace and "grinning_face" not in trace  # the planned program ran
    assert "smiling_face_with_sunglasses" in page.locator("#vp-program .cm-content").inner_text()


def _overflow(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """() => {
      const box = document.querySelector('#vp-status .vp-status');
      const fits = e => e.scrollWidth <= e.clientWidth + 1;
      return {box: fits(box), texts: [...box.querySelectorAll('.vp-message')].map(fits),
              sources: [...box.querySelectorAll('.vp-source')].map(fits),
              width: box.clientWidth};
    }"""
        )
    )


def test_errors_wrap_on_desktop_and_phone(browser: Any, served: Served, astronaut_png: Path) -> None:
    """Only the source line and its caret stay unwrapped (and scroll); the rest of the message wraps."""
    name = "OBJ_" + "X" * 150
    program = f"IMAGE0=Emoji(image=IMAGE, object={name}, emoji='grinning_face', note='{'words ' * 30}')"
    for width, shot in ((1400, "07_wrapped_error.png"), (390, "08_wrapped_error_phone.png")):
        context = browser.new_context(viewport={"width": width, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(served.url)
            page.locator("#vp-image input[type=file]").set_input_files(str(astronaut_png))
            page.wait_for_selector("#vp-image img")
            _set_program(page, program)
            page.locator("#vp-run").click()
            text = _status(page, "error")
            assert f"undefined variable '{name}'" in text
            fit = _overflow(page)
            assert fit["box"] and fit["texts"] and all(fit["texts"]), fit
            assert fit["sources"] and not any(fit["sources"]), fit  # the long source line scrolls, unwrapped
            assert fit["width"] <= width
            page.screenshot(path=str(served.artifacts / shot), full_page=True)
        finally:
            context.close()


def test_a_file_that_is_not_an_image_gets_the_clis_message(
    page: Any, served: Served, astronaut_png: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    drawing = tmp_path / "drawing.svg"  # an image format Pillow cannot read
    drawing.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'
    )
    requests_before = len(served.llm.requests)
    upload = page.locator("#vp-image input[type=file]")
    page.locator("#vp-text textarea").fill(INSTRUCTION)
    for bad in (notes, drawing):
        message = f"{bad.name}: not an image Pillow can read"  # what the CLI says of it
        upload.set_input_files(str(bad))
        _wait_for_status(page, message)  # said on upload
        assert "IMAGE: the image cannot be used" in _status(page, "error")
        page.evaluate("() => { document.querySelector('#vp-status .vp-status').remove(); }")
        page.locator("#vp-plan").click()  # and again when it runs, in the status panel
        _wait_for_status(page, message)
        assert "IMAGE: the image cannot be used" in _status(page, "error")
        assert not page.locator(".toast-body").count()  # not Gradio's own error
        assert "Traceback" not in page.content()
    # dropped rather than chosen: the same
    page.evaluate(
        """() => {
      const files = new DataTransfer();
      files.items.add(new File(['not a picture'], 'dropped.txt', {type: 'text/plain'}));
      const target = document.querySelector('#vp-image button.upload-container') || document.querySelector('#vp-image');
      const drop = {dataTransfer: files, bubbles: true, cancelable: true, composed: true};
      target.dispatchEvent(new DragEvent('drop', drop));
    }"""
    )
    _wait_for_status(page, "dropped.txt: not an image Pillow can read")
    assert not page.locator(".toast-body").count()
    _shoot(page, served, "09_not_an_image.png")
    assert len(served.llm.requests) == requests_before

    upload.set_input_files(str(astronaut_png))  # a good image clears the message
    page.wait_for_function("() => !document.querySelector('#vp-status .vp-error')")
    served.llm.script([EMOJI_PROGRAM])
    page.locator("#vp-plan").click()
    assert "Done (Edit, chosen from the text)" in _status(page, "ok")
    assert "not an image" not in page.locator("#vp-status").inner_text()


def test_a_file_over_the_upload_limit_gets_the_apps_message(page: Any, served: Served, tmp_path: Path) -> None:
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(21_000_000))  # over the app's limit of 20 MB (Gradio's too)
    page.locator("#vp-image input[type=file]").set_input_files(str(big))
    _wait_for_status(page, "The file is 21.0 MB; the limit is 20.0 MB per image.")
    assert "IMAGE: the file is too large" in _status(page, "error")
    assert not page.locator(".toast-body").count()  # not Gradio's own "File(s) exceed the maximum allowed size"


def test_examples_labels_enter_and_downloads(page: Any, served: Served) -> None:
    radio = page.locator("#vp-task").inner_text()
    for label in ("Ask about one image", "Compare two images", "Edit", "Tag"):
        assert label in radio
    for name in ("gqa", "nlvr"):
        assert name not in radio
    assert "Enter runs it; Shift+Enter adds a line." in page.locator("#vp-text").inner_text()

    box = page.locator("#vp-text textarea")
    box.fill("")
    box.press_sequentially("one")
    box.press("Shift+Enter")
    box.press_sequentially("two")
    assert box.input_value() == "one\ntwo"  # Shift+Enter adds a line, runs nothing
    assert not page.locator("#vp-status .vp-status").count()

    # the two-image example: its pictures in LEFT and RIGHT, its text in the box
    page.locator("#vp-examples").get_by_text("There is a cat in exactly one").click()
    page.wait_for_selector("#vp-left img")
    page.wait_for_selector("#vp-right img")
    assert box.input_value().startswith("There is a cat in exactly one")

    # the astronaut example, run with Enter
    page.locator("#vp-examples").get_by_text(INSTRUCTION).click()
    page.wait_for_selector("#vp-image img")
    assert box.input_value() == INSTRUCTION
    served.llm.script([EMOJI_PROGRAM])
    box.press("End")
    box.press("Enter")
    assert "Done (Edit, chosen from the text)" in _status(page, "ok")
    _wait_for_trace(page, "FaceDet", "Emoji")
    _shoot(page, served, "10_example.png")

    with page.expect_download() as html_download:
        page.locator("#vp-download-html").click()
    document = Path(html_download.value.path()).read_text(encoding="utf-8")
    assert html_download.value.suggested_filename == "visprog-trace.html"
    assert "visprog-trace" in document and INSTRUCTION in document and "smiling_face_with_sunglasses" in document
    with page.expect_download() as json_download:
        page.locator("#vp-download-json").click()
    data = json.loads(Path(json_download.value.path()).read_text(encoding="utf-8"))
    assert data["schema"] == "visprog.trace/1" and data["ok"] is True
    assert [s["module"] for s in data["steps"]] == ["FaceDet", "Emoji", "Result"][: len(data["steps"])]
