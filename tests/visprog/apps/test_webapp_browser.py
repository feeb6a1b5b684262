"""The web app in a real browser: headless Chromium (Debian's) driven by Playwright.

The app runs on 127.0.0.1 with the offline backends (FaceDet's cascade) and a
scripted LLM that answers the emoji program. Screenshots are kept in
``$VISPROG_TEST_ARTIFACTS`` (else a temporary folder, printed).
"""

from __future__ import annotations

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
from tests.llm_server import ScriptedServer
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
        app = build_app(planner_factory=lambda: planner, registry=fakes.registry(), runtime=runtime)
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
    assert "Done (edit, inferred from the text)" in status
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
