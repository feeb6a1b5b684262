"""The web app's handlers, called directly (no browser): plan and run, re-run an edited program, user errors."""

from __future__ import annotations

import functools
import importlib.resources
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image as PILImage

from tests import fakes
from tests.llm_server import ScriptedServer, serve_scripted
from visprog.apps import webapp_actions
from visprog.apps.webapp import CSS, JS, build_app, launch_options, serve
from visprog.apps.webapp_actions import (
    Outcome,
    Refused,
    infer_task,
    load_uploads,
    plan_and_run,
    run_program,
    task_choices,
    trace_view,
)
from visprog.errors import ConfigError, ModelUnavailableError, VisprogError
from visprog.llm import client_from_options
from visprog.planner.core import Planner
from visprog.running.runtime import Runtime
from visprog.running.tracing import Trace

EMOJI_PROGRAM = (
    "OBJ0=FaceDet(image=IMAGE)\n"
    "IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face_with_sunglasses')\n"
    "FINAL_RESULT=Result(var=IMAGE0)"
)
#: fails at run time: the checker refuses an unknown emoji name written in the program, not one in a variable
FAILING_PROGRAM = (
    "NAME='no_such_emoji_at_all'\n"
    "OBJ0=FaceDet(image=IMAGE)\n"
    "IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji=NAME)\n"
    "FINAL_RESULT=Result(var=IMAGE0)"
)
INSTRUCTION = "Hide the face with sunglasses emoji"


# --- fixtures ---------------------------------------------------------------------------------


@contextmanager
def scripted_llm() -> Iterator[ScriptedServer]:
    """The planner tests' scripted OpenAI-compatible server, on an ephemeral port of 127.0.0.1."""
    with serve_scripted() as scripted:
        yield scripted


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with scripted_llm() as scripted:
        yield scripted


@pytest.fixture
def planner(server: ScriptedServer) -> Planner:
    backend = client_from_options(base_url=server.url, model="tiny", max_retries=0, timeout=5)
    return Planner(backend, registry=fakes.registry(), cache=False)


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    """One runtime for the module: the face detector loads once."""
    return Runtime(modules={"FaceDet": {"backend": "cascade"}})


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    PILImage.fromarray(skimage.data.astronaut()).save(path)
    return path


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _user_text(server: ScriptedServer, request: int = 0) -> str:
    return str(server.requests[request].body["messages"][-1]["content"])


# --- infer_task -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n_images", "task"),
    [
        ("Hide the face with sunglasses emoji", 1, "edit"),
        ("replace the dog with a cat", 1, "edit"),
        ("  Blur the background.", 1, "edit"),
        ("Colour the car red", 1, "edit"),
        ("color the car red", 1, "edit"),
        ("Crop the bird", 1, "edit"),
        ("Put a hat on the man", 1, "edit"),
        ("Change the sky to night", 1, "edit"),
        ("Make the cat blue", 1, "edit"),
        ("remove the person on the left", 1, "edit"),
        ("Tag the main characters of Friends", 1, "tag"),
        ("label the presidents", 1, "tag"),
        ("Identify the players", 1, "tag"),
        ("How many people are there?", 1, "gqa"),
        ("Is the hidden cat black?", 1, "gqa"),  # 'hide' only counts as the first word
        ("What makes this funny?", 1, "gqa"),
        ("Hidden objects: how many?", 1, "gqa"),  # 'hidden' is not 'hide'
        ("", 1, "gqa"),
        ("", 0, "gqa"),
        ("There are two dogs in total.", 2, "nlvr"),
        ("Hide the faces", 2, "nlvr"),  # two images always means a statement about LEFT and RIGHT
        ("Tag the dogs", 3, "nlvr"),
    ],
)
def test_infer_task(text: str, n_images: int, task: str) -> None:
    assert infer_task(text, n_images) == task


def test_infer_task_ignores_none() -> None:
    assert infer_task(None, 1) == "gqa"


# --- plan and run -----------------------------------------------------------------------------


def test_plan_and_run_edits_the_astronaut(
    server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path
) -> None:
    server.script([f"```\n{EMOJI_PROGRAM}\n```"])
    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner, runtime=runtime)

    assert out.ok, out.message
    assert out.title == "Done (Edit)"
    assert out.message.startswith("3 steps in ")
    assert out.task == "edit"
    assert out.program == EMOJI_PROGRAM
    assert out.answer is None
    assert out.image is not None
    assert out.image.size == (512, 512)
    changed = np.abs(_pixels(out.image) - skimage.data.astronaut().astype(np.int16)).sum(axis=2) > 0
    assert 500 < changed.sum() < 512 * 512 // 4  # the face, not the whole picture
    for text in ("FaceDet", "Emoji", "OBJ0", "smiling_face_with_sunglasses"):
        assert text in out.trace_html
    assert "vp-ok" in out.status_html()
    assert len(server.requests) == 1
    assert "Instruction: Hide the face with sunglasses emoji" in _user_text(server)


def test_auto_infers_edit_and_says_so(
    server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path
) -> None:
    server.script([EMOJI_PROGRAM])
    out = plan_and_run(INSTRUCTION, "auto", str(astronaut), planner=planner, runtime=runtime)
    assert out.ok, out.message
    assert out.task == "edit"
    assert out.title == "Done (Edit, chosen from the text)"
    assert "Instruction:" in _user_text(server)


def test_text_answer(server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path) -> None:
    server.script(["ANSWER0=Vqa(image=IMAGE, question='How many people?')\nFINAL_RESULT=Result(var=ANSWER0)"])
    out = plan_and_run("How many people are there?", "auto", str(astronaut), planner=planner, runtime=runtime)
    assert out.ok, out.message
    assert out.task == "gqa"
    assert out.answer == "2"
    assert out.image is None
    assert "Question: How many people are there?" in _user_text(server)


def test_samples_are_voted_on_and_the_status_says_how_planning_went(
    server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path
) -> None:
    ask = "ANSWER0=Vqa(image=IMAGE, question='{q}')\nFINAL_RESULT=Result(var=ANSWER0)"
    fakes.reset()
    fakes.VQA_ANSWERS.update({"a": "yes", "b": "no", "c": "Yes."})
    bad = ask.format(q="a").replace("Vqa(", "Vqaa(")
    server.script([ask.format(q="a"), ask.format(q="b"), bad, ask.format(q="c")])
    out = plan_and_run("Is it?", "gqa", str(astronaut), planner=planner, runtime=runtime, samples=3)
    fakes.reset()
    assert out.ok, out.message
    assert out.answer == "yes" and out.program == ask.format(q="a")
    assert out.message.endswith("; 4 LLM requests (1 repair round); 67% of 3 runs agree")
    assert [r.body.get("temperature") for r in server.requests] == [0.7] * 4  # sampled, not greedy
    refused = plan_and_run("Is it?", "gqa", str(astronaut), planner=planner, samples=0)
    assert (refused.ok, refused.title) == (False, "Samples")


def test_the_task_choices_come_from_the_task_files() -> None:
    # labels say what the user does, not which data set a task comes from
    assert task_choices() == [
        ("Choose from the text", "auto"),
        ("Edit", "edit"),
        ("Ask about one image", "gqa"),
        ("Compare two images", "nlvr"),
        ("Tag", "tag"),
    ]


def test_the_planner_is_created_on_first_request(
    server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path
) -> None:
    made: list[Planner] = []

    def factory() -> Planner:
        made.append(planner)
        return planner

    build_app(planner_factory=factory, runtime=runtime)  # building needs no LLM
    assert made == []
    server.script([EMOJI_PROGRAM])
    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=factory, runtime=runtime)
    assert out.ok, out.message
    assert len(made) == 1


# --- editing and re-running -------------------------------------------------------------------


def test_edited_program_runs_without_the_planner(
    server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path
) -> None:
    server.script([EMOJI_PROGRAM])
    planned = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner, runtime=runtime)
    assert planned.ok and planned.program is not None and planned.image is not None

    edited = planned.program.replace("smiling_face_with_sunglasses", "grinning_face")
    out = run_program(edited, str(astronaut), registry=fakes.registry(), runtime=runtime)

    assert out.ok, out.message
    assert out.title == "Done (edited program)"
    assert out.program is None  # the program box keeps what the user wrote
    assert out.image is not None
    assert "grinning_face" in out.trace_html
    assert not np.array_equal(_pixels(out.image), _pixels(planned.image))
    assert len(server.requests) == 1  # no new request to the LLM


def test_bad_edited_program_shows_the_checker_diagnostics(runtime: Runtime, astronaut: Path) -> None:
    bad = "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoj(image=IMAGE, object=OBJ1)\nFINAL_RESULT=Result(var=IMAGE0)"
    out = run_program(bad, str(astronaut), registry=fakes.registry(), runtime=runtime)
    assert not out.ok
    assert out.title == "The program has 2 check errors"
    lines = out.message.splitlines()
    assert lines[0] == "line 2, col 8: unknown module 'Emoj' (did you mean 'Emoji'?)"
    assert lines[1] == "  IMAGE0=Emoj(image=IMAGE, object=OBJ1)"
    assert lines[2] == "         ^"
    assert "line 2, col 33: undefined variable 'OBJ1' (did you mean 'OBJ0'?)" in lines
    assert out.image is None and out.trace_html == ""
    assert "Traceback" not in out.message
    html = out.status_html()
    assert "vp-error" in html and "&#x27;Emoj&#x27;" in html  # escaped, shown as text


def test_syntax_error_is_a_diagnostic_even_without_an_image(runtime: Runtime) -> None:
    out = run_program("OBJ0=FaceDet(image=IMAGE", None, runtime=runtime)
    assert not out.ok
    assert out.title == "The program has 1 syntax error"
    assert out.message.startswith("line 1, col ")


def test_empty_program(runtime: Runtime) -> None:
    out = run_program("  \n", None, runtime=runtime)
    assert (out.ok, out.title) == (False, "No program")


def test_program_that_reads_a_missing_image(runtime: Runtime, astronaut: Path) -> None:
    out = run_program(EMOJI_PROGRAM, None, str(astronaut), None, registry=fakes.registry(), runtime=runtime)
    assert (out.ok, out.title) == (False, "No image")
    assert "The program reads IMAGE: upload it first." == out.message
    program = (
        "ANSWER0=Vqa(image=LEFT, question='x')\nANSWER1=Vqa(image=RIGHT, question='y')\n"
        + "FINAL_RESULT=Result(var=ANSWER1)"
    )
    out = run_program(program, str(astronaut), registry=fakes.registry(), runtime=runtime)
    assert (out.ok, out.title) == (False, "Images missing")
    assert "LEFT, RIGHT" in out.message and "'Two images'" in out.message


def test_failed_step_keeps_the_partial_trace(runtime: Runtime, astronaut: Path) -> None:
    out = run_program(FAILING_PROGRAM, str(astronaut), registry=fakes.registry(), runtime=runtime)
    assert not out.ok
    assert out.title == "Step IMAGE0 failed"
    assert out.message.startswith("line 3, Emoji (step IMAGE0): ")
    assert "no_such_emoji_at_all" in out.message
    assert "FaceDet" in out.trace_html  # the step before the failure is kept
    assert "Traceback" not in out.message


# --- errors a user can cause ------------------------------------------------------------------


def test_no_image(server: ScriptedServer, planner: Planner, runtime: Runtime) -> None:
    out = plan_and_run(INSTRUCTION, "auto", None, planner=planner, runtime=runtime)
    assert (out.ok, out.title) == (False, "No image")
    assert "Upload an image" in out.message
    assert server.requests == []  # the LLM is not asked for nothing


def test_no_text(server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path) -> None:
    out = plan_and_run("   ", "auto", str(astronaut), planner=planner, runtime=runtime)
    assert (out.ok, out.title) == (False, "Nothing to do")
    assert server.requests == []


def test_verify_needs_two_images(server: ScriptedServer, planner: Planner, astronaut: Path) -> None:
    out = plan_and_run("There are two people.", "nlvr", str(astronaut), str(astronaut), None, planner=planner)
    assert (out.ok, out.title) == (False, "Two images needed")
    assert "upload RIGHT under 'Two images'" in out.message
    assert server.requests == []


def test_two_images_infer_verify(server: ScriptedServer, planner: Planner, astronaut: Path) -> None:
    server.script(
        [
            "ANSWER0=Vqa(image=LEFT, question='How many people?')\n"
            "ANSWER1=Vqa(image=RIGHT, question='How many people?')\n"
            "ANSWER2=Eval(expr=\"'{ANSWER0}' == '{ANSWER1}'\")\n"
            "FINAL_RESULT=Result(var=ANSWER2)"
        ]
    )
    out = plan_and_run("Both images show as many people", "auto", None, str(astronaut), str(astronaut), planner=planner)
    assert out.ok, out.message
    assert out.task == "nlvr"
    assert out.answer == "True"
    assert "Statement:" in _user_text(server)


def test_oversized_file(server: ScriptedServer, planner: Planner, astronaut: Path) -> None:
    size = astronaut.stat().st_size
    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner, max_upload_bytes=100_000)
    assert (out.ok, out.title) == (False, "IMAGE: the file is too large")
    assert out.message == f"The file is {size / 1e6:.1f} MB; the limit is 0.1 MB per image."
    assert server.requests == []
    out = run_program(EMOJI_PROGRAM, str(astronaut), max_upload_bytes=100_000)
    assert (out.ok, out.title) == (False, "IMAGE: the file is too large")


def test_too_many_pixels(server: ScriptedServer, planner: Planner, astronaut: Path) -> None:
    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner, max_pixels=100_000)
    assert (out.ok, out.title) == (False, "IMAGE: the image has too many pixels")
    assert "512x512 = 262,144 pixels, over the limit of 100,000 pixels" in out.message
    assert server.requests == []
    out = run_program(EMOJI_PROGRAM, str(astronaut), max_pixels=100_000)
    assert (out.ok, out.title) == (False, "IMAGE: the image has too many pixels")


def test_file_that_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(Refused, match="not an image Pillow can read") as info:
        load_uploads({"IMAGE": str(path)})
    assert info.value.title == "IMAGE: the image cannot be used"
    out = run_program(EMOJI_PROGRAM, str(path))
    assert (out.ok, out.title) == (False, "IMAGE: the image cannot be used")


def test_planning_error_puts_the_last_attempt_in_the_program_box(
    server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path
) -> None:
    bad = EMOJI_PROGRAM.replace("Emoji(", "Emoj(")
    server.script([bad, bad, bad])
    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner, runtime=runtime)
    assert not out.ok
    assert out.title == "The planner found no valid program"
    assert "after 3 attempt(s)" in out.message
    assert "unknown module 'Emoj' (did you mean 'Emoji'?)" in out.message
    assert out.program == bad
    # the user fixes the typo and runs it
    fixed = run_program(
        out.program.replace("Emoj(", "Emoji("), str(astronaut), registry=fakes.registry(), runtime=runtime
    )
    assert fixed.ok, fixed.message
    assert fixed.image is not None


def test_step_failure_of_a_planned_program(
    server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path
) -> None:
    server.script([FAILING_PROGRAM])
    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner, runtime=runtime)
    assert (out.ok, out.title) == (False, "Step IMAGE0 failed")
    assert out.program == FAILING_PROGRAM  # shown so it can be fixed
    assert "FaceDet" in out.trace_html


def test_unreachable_llm(runtime: Runtime, astronaut: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket_on_a_closed_port() as url:
        backend = client_from_options(base_url=url, model="tiny", max_retries=0, timeout=5)
        planner = Planner(backend, registry=fakes.registry(), cache=False)
        out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner, runtime=runtime)
    assert not out.ok
    assert out.title == "The planner's LLM could not be reached"
    assert url in out.message and "tiny" in out.message
    assert "Traceback" not in out.message


def test_planner_that_cannot_be_created(astronaut: Path) -> None:
    def factory() -> Planner:
        raise ConfigError("planner: style must be one of chat, completion, got 'poem'")

    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=factory)
    assert (out.ok, out.title) == (False, "The planner is not configured")
    assert "style must be one of" in out.message


def test_planner_with_missing_weights(astronaut: Path) -> None:
    def factory() -> Planner:
        raise ModelUnavailableError("planner", "org/tiny-llm", "not in the cache", "visprog models pull")

    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=factory)
    assert (out.ok, out.title) == (False, "The planner failed")
    assert "org/tiny-llm" in out.message and "visprog models pull" in out.message


def test_unexpected_errors_become_messages(astronaut: Path) -> None:
    def factory() -> Planner:
        raise RuntimeError("boom")

    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=factory)
    assert (out.ok, out.title, out.message) == (False, "Something went wrong", "RuntimeError: boom")


# --- the trace view and the app ---------------------------------------------------------------


def test_trace_view_falls_back_to_escaped_text(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(trace: Trace, *, text: str | None = None) -> str:
        raise ValueError("renderer bug")

    monkeypatch.setattr(webapp_actions, "trace_page", broken)  # drawing the page fails: the text is shown
    trace = Trace("X=Eval(expr='<b>')", result="<b>")
    view = trace_view(trace)
    assert view.startswith('<pre class="vp-trace-text"')
    assert "&lt;b&gt;" in view and "<b>" not in view.replace('<pre class="vp-trace-text"', "")
    assert trace_view(None) == ""


def test_trace_view_frames_the_page() -> None:
    view = trace_view(Trace("X=Eval(expr='\"FaceDet\" & <b>')", result='"FaceDet" & <b>'))
    assert view.startswith('<iframe class="vp-trace-frame"')
    assert 'srcdoc="&lt;!DOCTYPE html&gt;' in view and "visprog-trace" in view
    # escaped once for the page and once more for the attribute
    assert "&amp;quot;FaceDet&amp;quot; &amp;amp; &amp;lt;b&amp;gt;" in view and "<b>" not in view


def test_trace_view_passes_the_text_to_the_page() -> None:
    assert "Hide the face" in trace_view(Trace("X=1"), "Hide the face")


def test_the_trace_view_names_the_instruction(
    server: ScriptedServer, planner: Planner, runtime: Runtime, astronaut: Path
) -> None:
    server.script([EMOJI_PROGRAM])
    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner, runtime=runtime)
    assert out.trace_html.startswith('<iframe class="vp-trace-frame"')
    assert INSTRUCTION in out.trace_html


def test_status_html_escapes() -> None:
    html = Outcome(False, "Bad <thing>", "line 1: '<x>'").status_html()
    assert "Bad &lt;thing&gt;" in html and "&#x27;&lt;x&gt;&#x27;" in html
    assert 'role="alert"' in html


def test_build_app_wires_the_components() -> None:
    gr = pytest.importorskip("gradio")
    app = build_app(planner_factory=lambda: pytest.fail("the planner is made on first request"))
    assert isinstance(app, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"vp-image", "vp-left", "vp-right", "vp-text", "vp-task", "vp-plan", "vp-run", "vp-program"} <= ids
    assert {"vp-result", "vp-answer", "vp-trace", "vp-status", "vp-samples"} <= ids
    assert {"vp-download-html", "vp-download-json", "vp-examples", "vp-program-version"} <= ids
    with pytest.raises(ValueError, match="max_upload_bytes"):
        build_app(max_upload_bytes=0)


def test_serve_launches_with_the_upload_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    gr = pytest.importorskip("gradio")
    launched: dict[str, Any] = {}

    @functools.wraps(gr.Blocks.launch)  # keeps the signature the app inspects
    def launch(self: Any, **kwargs: Any) -> None:
        launched.update(kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    serve("127.0.0.1", 7999, max_upload_bytes=1234, planner_factory=lambda: pytest.fail("not at start"))
    assert launched["server_name"] == "127.0.0.1"
    assert launched["server_port"] == 7999
    assert launched["max_file_size"] == 1234
    assert launched["share"] is False
    if "theme" in launched:  # Gradio 6 takes the theme, the style sheet and the page's script in launch()
        assert launched["js"] == JS and "vp-image" in JS
    assert launch_options(99)["max_file_size"] == 99


def test_the_style_sheet_is_package_data() -> None:
    sheet = importlib.resources.files("visprog.apps").joinpath("webapp.css").read_text(encoding="utf-8")
    assert CSS == sheet and "#vp-status" in sheet and ".vp-header" in sheet


def test_without_gradio_the_app_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    with pytest.raises(VisprogError, match=r"pip install 'visprog\[web\]'"):
        build_app()


def test_importing_the_web_app_imports_no_gradio() -> None:
    code = (
        "import sys, visprog, visprog.apps.webapp, visprog.apps.cli\n"
        "bad = [m for m in ('gradio', 'torch', 'playwright') if m in sys.modules]\n"
        "print(json.dumps(bad))"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []


# --- helpers ----------------------------------------------------------------------------------


class socket_on_a_closed_port:
    """A ``http://127.0.0.1:PORT/v1`` URL where nothing listens (the port was bound, then closed)."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc: object) -> None:
        pass
