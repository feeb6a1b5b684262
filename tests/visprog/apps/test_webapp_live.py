"""The web app's live view, status panel, files and queued runs, called directly (no browser, no Gradio).

The live view turns a request's events (planner, interpreter, model loading)
into the status panel and the step cards; the handlers hand it every event as
it happens. The status panel wraps messages except source lines with their
carets. The examples ship with their pictures; traces are written for download.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import pytest
import skimage.data
from PIL import Image as PILImage

from tests import fakes
from visprog.apps.webapp_actions import (
    UPLOAD_ERROR,
    Outcome,
    Refused,
    load_uploads,
    plan_and_run,
    program_to_run,
    run_program,
)
from visprog.apps.webapp_files import EXAMPLES, TraceFiles, example_path, example_rows
from visprog.apps.webapp_live import LiveView, follow, megabytes, step_card
from visprog.apps.webapp_status import message_blocks, status_panel
from visprog.errors import ImageError
from visprog.language.signatures import module
from visprog.language.values import Image
from visprog.planner.events import CacheHit, PlanFailed, Planned, RepairRound, ReplyReceived, RequestSent, Voted
from visprog.planner.scripted import scripted_planner
from visprog.running.events import (
    Event,
    ModelDownload,
    ModelLoaded,
    ModelLoading,
    RunFinished,
    RunStarted,
    StepFailed,
    StepFinished,
    StepSkipped,
    StepStarted,
    stream,
)
from visprog.running.hub import Placement, load_model
from visprog.running.images import load_image
from visprog.running.runtime import Context, Runtime
from visprog.running.tracing import Trace

HERE = str(Path(__file__).resolve().parent)  # a folder: a model "loaded" from it asks nothing of the hub
PROGRAM = "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='grinning_face')\nRESULT=IMAGE0"


def _scale(model_id: str, placement: Placement) -> float:
    time.sleep(0.01)
    return 0.5


@module()
def Weigh(image: Image, ctx: Context) -> int:
    """How heavy the image looks (a model loaded on first use, for the model events).

    Args:
        image: the image to weigh.
    """
    return round(image.size[0] * load_model(ctx, _scale, model_id=HERE, on_device=False))


@pytest.fixture
def registry() -> Any:
    reg = fakes.registry()
    reg.register_all([Weigh], source="tests")
    return reg


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "small.png"
    PILImage.new("RGB", (64, 48), "white").save(path)
    return path


def _titles(view: LiveView, events: list[Event]) -> list[str]:
    seen = []
    for event in events:
        view.add(event)
        seen.append(view.title)
    return seen


# --- the status panel -------------------------------------------------------------------------


def test_source_lines_and_carets_are_kept_apart_from_the_text() -> None:
    message = (
        "line 2, col 8: unknown module 'Emoj' (did you mean 'Emoji'?)\n"
        "  IMAGE0=Emoj(image=IMAGE)\n"
        "         ^\n"
        "line 3, col 1: undefined variable 'X'\n"
        "  RESULT=X\n"
        "         ^~~\n"
        "\n"
        "The last attempt is in the program box."
    )
    assert message_blocks(message) == [
        (False, "line 2, col 8: unknown module 'Emoj' (did you mean 'Emoji'?)"),
        (True, "  IMAGE0=Emoj(image=IMAGE)\n         ^"),
        (False, "line 3, col 1: undefined variable 'X'"),
        (True, "  RESULT=X\n         ^~~"),
        (False, "\nThe last attempt is in the program box."),
    ]
    assert message_blocks("one line") == [(False, "one line")]
    assert message_blocks("^ alone") == [(False, "^ alone")]  # a caret line needs a line above it


def test_the_panel_wraps_text_and_keeps_source_lines_unwrapped() -> None:
    panel = status_panel("error", "The program has 1 check error", "line 1, col 3: bad <thing>\n  X=<y>\n    ^")
    assert panel.count('class="vp-source"') == 1 and panel.count('class="vp-message"') == 1
    source = panel[panel.index('class="vp-source"') :]
    assert "white-space:pre;" in source.split(">")[0] and "overflow-x:auto" in source.split(">")[0]
    text = panel[panel.index('class="vp-message"') :].split(">")[0]
    assert "white-space:pre-wrap" in text and "overflow-wrap:anywhere" in text
    assert "bad &lt;thing&gt;" in panel and "X=&lt;y&gt;" in panel and "<y>" not in panel
    assert 'role="alert"' in panel and "vp-error" in panel


def test_a_busy_panel_is_polite_and_may_show_progress() -> None:
    panel = status_panel("busy", "Downloading", "org/model", progress=(5, 10), classes="x")
    assert 'class="vp-status vp-busy x"' in panel and 'aria-live="polite"' in panel and 'role="status"' in panel
    assert '<progress class="vp-progress"' in panel and 'value="5" max="10"' in panel
    assert 'value="' not in status_panel("busy", "Downloading", progress=(5, None))  # size unknown: moving only


def test_an_outcome_about_uploads_is_marked_so_a_good_upload_clears_it() -> None:
    assert UPLOAD_ERROR in Outcome(False, "IMAGE: the image cannot be used", uploads=True).status_html()
    assert UPLOAD_ERROR not in Outcome(False, "The program has 1 check error").status_html()


# --- the live view ----------------------------------------------------------------------------


def test_planning_is_told_stage_by_stage() -> None:
    diagnostics = "line 1, col 1: unknown module 'Emoj'\n  X=Emoj()\n  ^\nline 2, col 1: undefined variable 'Y'"
    view = LiveView()
    titles = _titles(
        view,
        [
            RequestSent("edit", "Hide it", 0, 1, 3),
            ReplyReceived("edit", 0, 1, "X=Emoj()", "X=Emoj()", 1.25),
            RepairRound("edit", 0, 1, diagnostics),
        ],
    )
    assert titles == [
        "Planning: asking the LLM for a program",
        "Planning: the LLM answered in 1.2 s; checking the program",
        "Planning: repair round 1: the program has 2 errors",
    ]
    assert view.detail == diagnostics
    assert "unknown module &#x27;Emoj&#x27;" in view.status_html()
    view.add(RequestSent("edit", "Hide it", 0, 2, 5))
    assert view.title == "Planning: repair round 1: asking for a fixed program"
    assert view.detail == diagnostics  # the diagnostics stay while the fixed program is awaited
    view.add(Planned("edit", 0, PROGRAM, 2))
    assert view.program == PROGRAM and view.title == "Planned after 2 requests: the program checks"
    view.add(CacheHit("edit", 0, PROGRAM))
    assert view.title == "Planning: a program from the plan cache"
    view.add(Planned("edit", 0, PROGRAM, 0))
    assert view.title == "Planned from the plan cache: the program checks"
    view.add(RepairRound("edit", 0, 1, "The reply contains no program."))
    assert view.title == "Planning: repair round 2: no program that checks"


def test_samples_are_named() -> None:
    view = LiveView(samples=3)
    assert _titles(view, [RequestSent("gqa", "q", 1, 1, 3), PlanFailed("gqa", 2, 3, "no program")]) == [
        "Planning: asking the LLM for a program (sample 2 of 3)",
        "Planning failed (sample 3 of 3)",
    ]
    view.add(RunStarted(1, "A=Vqa(image=IMAGE, question='q')\nRESULT=A", 2))
    view.add(StepStarted(1, 0, 2, "A", "Vqa", 1))
    assert view.title == "Run 2, step 1 of 2: A = Vqa (line 1)"
    view.add(StepFinished(1, 0, 2, "A", "Vqa", 1, "yes", 0.5))
    assert "run 2, step 1 of 2" in view.trace_html()
    view.add(Voted(("yes", "yes", "no"), "yes", 2 / 3, 3))
    assert view.title == "Voting: 67% of 3 runs agree on yes"


def test_steps_show_as_they_run_with_a_card_each() -> None:
    source = "OBJ0=FaceDet(image=IMAGE)\nNAME='x'\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji=NAME)\nRESULT=IMAGE0"
    picture = PILImage.new("RGB", (640, 320), "red")
    view = LiveView()
    assert view.trace_html("nothing yet") == "nothing yet"
    titles = _titles(
        view,
        [
            RunStarted(0, source, 4),
            StepStarted(0, 0, 4, "OBJ0", "FaceDet", 1),
            StepFinished(0, 0, 4, "OBJ0", "FaceDet", 1, picture, 0.123),
            StepStarted(0, 2, 4, "IMAGE0", "Emoji", 3),
            StepFailed(0, 2, 4, "IMAGE0", "Emoji", 3, "no emoji named 'x' <here>", 0.01),
            StepSkipped(0, 3, 4, "RESULT", "=", 4, "needs IMAGE0 (line 3), which failed"),
            RunFinished(0, False, 0.2, error="step IMAGE0 failed"),
        ],
    )
    assert titles == [
        "Running: 4 steps",
        "Step 1 of 4: OBJ0 = FaceDet (line 1)",
        "Step 1 of 4 done: OBJ0 = FaceDet (line 1)",
        "Step 3 of 4: IMAGE0 = Emoji (line 3)",
        "Step 3 of 4 failed: IMAGE0 = Emoji (line 3)",
        "Step 4 of 4 skipped: RESULT=IMAGE0 (line 4)",  # a bare assignment, as written
        "Run failed",
    ]
    cards = view.trace_html()
    assert cards.count('class="vp-step-card') == 3
    assert 'data-target="OBJ0"' in cards and "OBJ0=FaceDet(image=IMAGE)" in cards  # the line as written
    assert 'src="data:image/jpeg;base64,' in cards and 'width="160" height="80"' in cards  # a thumbnail
    assert "vp-step-failed" in cards and "no emoji named &#x27;x&#x27; &lt;here&gt;" in cards
    assert "vp-step-skipped" in cards and "not run" in cards and "needs IMAGE0 (line 3)" in cards


def test_a_card_describes_what_is_not_a_picture() -> None:
    card = step_card(index=1, total=3, target="ANSWER0", module="Vqa", line=2, source="", seconds=0.5, value="two")
    assert "step 2 of 3 · line 2 · Vqa · 0.50 s" in card and "ANSWER0 = &#x27;two&#x27;" in card
    assert "ANSWER0=Vqa(...)" in card  # no source line known: the step's shape


def test_model_loads_are_told_inside_their_step() -> None:
    view = LiveView()
    view.add(RunStarted(0, "OBJ0=Loc(image=IMAGE, object='dog')", 1))
    view.add(StepStarted(0, 0, 1, "OBJ0", "Loc", 1))
    view.add(ModelLoading("Loc", "google/owlv2", "cuda"))
    assert (view.title, view.detail) == (
        "Step 1 of 1: OBJ0 = Loc (line 1)",
        "Loading model google/owlv2 for Loc on cuda",
    )
    view.add(ModelDownload("Loc", "google/owlv2", 312_400_000, 1_700_000_000))
    assert view.detail == "Downloading google/owlv2 for Loc: 312.4 MB of 1.7 GB (18%)"
    assert view.progress == (312_400_000, 1_700_000_000)
    assert 'value="312400000" max="1700000000"' in view.status_html()
    view.add(ModelDownload("Loc", "google/owlv2", 2_000, None))
    assert view.detail == "Downloading google/owlv2 for Loc: 2 KB" and view.progress == (2_000, None)
    view.add(ModelLoaded("Loc", "google/owlv2", 3.25))
    assert view.detail == "Loaded google/owlv2 for Loc in 3.2 s" and view.progress is None
    outside = LiveView()
    outside.add(ModelLoading("List", "qwen", "cpu"))  # a load outside any step: the title itself
    assert outside.title == "Loading model qwen for List on cpu"


def test_unknown_events_change_nothing() -> None:
    class Other(Event):
        kind = "something_else"

    view = LiveView("Starting")
    assert view.add(Other()) is False and view.title == "Starting"


def test_megabytes() -> None:
    assert [megabytes(n) for n in (0, 999, 1_500_000, 2_250_000_000)] == ["0 KB", "1 KB", "1.5 MB", "2.2 GB"]


def test_follow_tells_each_change_and_download_progress_at_most_so_often() -> None:
    def work(on_event: Any) -> str:
        on_event(StepStarted(0, 0, 1, "A", "Loc", 1))
        for done in range(10):
            on_event(ModelDownload("Loc", "m", done, 10))
        on_event(Other())
        on_event(StepFinished(0, 0, 1, "A", "Loc", 1, 1, 0.1))
        return "done"

    class Other(Event):
        kind = "other"

    view = LiveView()
    events = stream(work)
    changes = sum(1 for _ in follow(events, view, every=60.0))
    assert changes == 3  # the step starting, the first download report, the step finishing
    assert events.result == "done" and view.cards

    def broken(on_event: Any) -> None:
        on_event(StepStarted(0, 0, 1, "A", "Loc", 1))
        raise RuntimeError("boom")

    failing = stream(broken)
    with pytest.raises(RuntimeError, match="boom"):
        for _ in follow(failing, LiveView()):
            pass


# --- the handlers tell their events -----------------------------------------------------------


def test_an_edited_program_tells_its_steps_and_model_loads(registry: Any, picture: Path) -> None:
    heard: list[Event] = []
    program = "ANSWER0=Weigh(image=IMAGE)\nFINAL_RESULT=Result(var=ANSWER0)"
    runtime = Runtime(device_request="cpu", progress=False)
    out = run_program(program, str(picture), registry=registry, runtime=runtime, on_event=heard.append)
    assert out.ok, out.message
    assert out.answer == "32" and out.trace is not None and out.trace.result == 32
    kinds = [e.kind for e in heard]
    assert kinds[:4] == ["run_started", "step_started", "model_loading", "model_loaded"]
    assert kinds[-1] == "run_finished"
    view = LiveView()
    for event in heard:
        view.add(event)
    assert "Weigh" in view.trace_html() and view.title == "Run finished"


def test_plan_and_run_tells_planning_steps_and_model_loads(registry: Any, picture: Path) -> None:
    bad = "ANSWER0=Weighh(image=IMAGE)\nFINAL_RESULT=Result(var=ANSWER0)"
    good = bad.replace("Weighh", "Weigh")
    planner = scripted_planner([bad, good], registry=registry)
    runtime = Runtime(device_request="cpu", progress=False)
    view = LiveView()
    titles: list[str] = []

    def listen(event: Event) -> None:
        view.add(event)
        titles.append(view.title)

    out = plan_and_run("How heavy?", "gqa", str(picture), planner=planner, runtime=runtime, on_event=listen)
    assert out.ok, out.message
    assert out.title == "Done (Ask about one image)" and out.answer == "32"
    assert out.message.endswith("; 2 LLM requests (1 repair round)")
    assert "Planning: repair round 1: the program has 1 error" in titles
    assert "Step 1 of 2: ANSWER0 = Weigh (line 1)" in titles
    assert any("Weigh" in card for card in view.cards)


# --- uploads as the CLI reads them ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", b"not a picture"),
        ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'),  # Pillow reads no SVG
        ("photo.jpg", b"\xff\xd8\xff\xe0 truncated"),
    ],
)
def test_a_file_that_cannot_be_read_gets_the_clis_message(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as cli:
        load_image(path)  # what the CLI does with the file
    with pytest.raises(Refused) as web:
        load_uploads({"IMAGE": str(path)})
    assert web.value.title == "IMAGE: the image cannot be used" and web.value.uploads
    assert web.value.message == str(cli.value).replace(str(path), name)  # the same message, the file as uploaded
    out = run_program(PROGRAM, str(path), registry=fakes.registry())
    assert (out.ok, out.title, out.message) == (False, web.value.title, web.value.message)
    assert UPLOAD_ERROR in out.status_html()


# --- queued runs ------------------------------------------------------------------------------


def test_a_queued_run_runs_what_the_program_box_shows_when_it_starts() -> None:
    # nothing written since the button was pressed: what the user sent
    assert program_to_run("X=1", 0, None) == "X=1"
    assert program_to_run("X=1", 2, (2, "Y=2")) == "X=1"
    # a plan finished while the run waited and wrote its program into the box: that runs
    assert program_to_run("X=1", 2, (3, "Y=2")) == "Y=2"
    assert program_to_run(None, None, (1, "Y=2")) == "Y=2"
    assert program_to_run(None, None, None) == ""


# --- examples and downloads -------------------------------------------------------------------


def test_the_examples_ship_with_their_pictures() -> None:
    rows = example_rows()
    assert len(rows) == len(EXAMPLES) >= 4
    total = 0
    for example, (image, left, right, text) in zip(EXAMPLES, rows, strict=True):
        assert text == example.text
        pictures = [p for p in (image, left, right) if p is not None]
        assert pictures and (image is None) == (left is not None and right is not None)
        for path in pictures:
            total += Path(path).stat().st_size
            with PILImage.open(path) as shown:
                assert shown.format == "JPEG" and max(shown.size) <= 800
    assert total < 400_000
    # made from scikit-image's sample pictures
    with PILImage.open(example_path("chelsea.jpg")) as cat:
        assert cat.size[::-1] == skimage.data.chelsea().shape[:2]
    with pytest.raises(FileNotFoundError, match="missing from the package"):
        example_path("nothing.jpg")
    texts = {e.text: e for e in EXAMPLES}
    assert texts["Hide the face with sunglasses emoji"].image == "astronaut.jpg"


def test_trace_files_are_the_page_and_the_json(tmp_path: Path) -> None:
    files = TraceFiles(tmp_path, keep=2)
    trace = Trace("X=Eval(expr='1 + 1')", result=2)
    page, data = files.write(trace, "What is <one> plus one?")
    assert (page.name, data.name) == ("visprog-trace.html", "visprog-trace.json")
    assert "visprog-trace" in page.read_text(encoding="utf-8")
    assert html.escape("What is <one> plus one?") in page.read_text(encoding="utf-8")
    assert Trace.from_json(data.read_text(encoding="utf-8")).result == 2
    assert json.loads(data.read_text(encoding="utf-8"))["schema"] == "visprog.trace/1"
    later = [files.write(trace) for _ in range(2)]
    assert not page.exists() and all(p.exists() and d.exists() for p, d in later)  # only the newest are kept
    with pytest.raises(ValueError, match="keep"):
        TraceFiles(tmp_path, keep=0)


def test_an_outcome_carries_its_trace_for_download(registry: Any, picture: Path) -> None:
    program = "ANSWER0=Weigh(image=IMAGE)\nFINAL_RESULT=Result(var=ANSWER0)"
    runtime = Runtime(device_request="cpu", progress=False)
    out = run_program(program, str(picture), registry=registry, runtime=runtime)
    assert out.trace is not None and out.trace.source == program
    failing = (
        "NAME='nope'\nOBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji=NAME)\nRESULT=IMAGE0"
    )
    runtime = Runtime(modules={"FaceDet": {"backend": "cascade"}})
    failed = run_program(failing, str(picture), registry=fakes.registry(), runtime=runtime)
    assert not failed.ok and failed.trace is not None and not failed.trace.ok  # the partial trace, for download
