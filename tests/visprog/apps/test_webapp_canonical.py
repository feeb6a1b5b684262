"""The web app shows the canonical program that ran, not the model's reply as written (handlers called directly).

The model answers the way chat models do: numbered lines, spaces around ``=``,
VisProg's upper-case module names, positional arguments, typographic quotes.
The program box, the trace page and the step error all show the planner's
canonical program (:func:`visprog.language.format.format_program`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import skimage.data
from PIL import Image as PILImage

from tests import fakes
from tests.llm_server import ScriptedServer, serve_scripted
from visprog.apps.webapp_actions import Outcome, plan_and_run
from visprog.llm import client_from_options
from visprog.planner.cache import PlanCache
from visprog.planner.core import Planner
from visprog.running.runtime import Runtime

#: The canonical program of REPLY.
EMOJI_PROGRAM = (
    "OBJ0=FaceDet(image=IMAGE)\n"
    "IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face_with_sunglasses')\n"
    "FINAL_RESULT=Result(var=IMAGE0)"
)
REPLY = (
    "Sure! Here is the program:\n"
    "1. OBJ0 = FACEDET(IMAGE)\n"
    "2. IMAGE0 = EMOJI(IMAGE, OBJ0, \u201csmiling_face_with_sunglasses\u201d)\n"
    "3. FINAL_RESULT = RESULT(IMAGE0)\n"
    "It hides each face behind the emoji."
)
#: The canonical program of FAILING_REPLY: fails at run time (the emoji name is in a variable, not checked).
FAILING_PROGRAM = (
    "NAME='no_such_emoji_at_all'\n"
    "OBJ0=FaceDet(image=IMAGE)\n"
    "IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji=NAME)\n"
    "FINAL_RESULT=Result(var=IMAGE0)"
)
FAILING_REPLY = (
    "```\n"
    "NAME = \u2018no_such_emoji_at_all\u2019\n"
    "OBJ0 = FaceDet(IMAGE)\n"
    "IMAGE0 = EMOJI(IMAGE, OBJ0, emoji = NAME)\n"
    "FINAL_RESULT = Result(IMAGE0)\n"
    "```"
)
INSTRUCTION = "Hide the face with sunglasses emoji"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with serve_scripted() as scripted:
        yield scripted


def planner_for(server: ScriptedServer, cache: PlanCache | None = None) -> Planner:
    backend = client_from_options(base_url=server.url, model="tiny", max_retries=0, timeout=5)
    return Planner(backend, registry=fakes.registry(), cache=cache or False)


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    """One runtime for the module: the face detector loads once."""
    return Runtime(modules={"FaceDet": {"backend": "cascade"}})


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    PILImage.fromarray(skimage.data.astronaut()).save(path)
    return path


def page_text(out: Outcome) -> str:
    """The text of the trace page the app shows (the frame's document, its markup removed)."""
    document = re.search(r'srcdoc="([^"]*)"', out.trace_html)
    assert document is not None, out.trace_html[:200]
    page = html.unescape(document.group(1))
    page = re.sub(r"<style.*?</style>|<script.*?</script>", "", page, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def assert_shows_canonical(out: Outcome, program: str, reply: str) -> None:
    assert out.program == program
    text = page_text(out)
    for line in program.splitlines():
        assert line in text, f"the trace page does not show {line!r}"
    for written in ("FACEDET", "EMOJI(", "RESULT(", " = ", "\u201c", "\u2018", "1. "):
        if written in reply:
            assert written not in text, f"the trace page shows {written!r} as the model wrote it"


def test_a_planned_program_is_shown_in_canonical_form(
    server: ScriptedServer, runtime: Runtime, astronaut: Path
) -> None:
    server.script([REPLY])
    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner_for(server), runtime=runtime)
    assert out.ok, out.message
    assert out.image is not None
    assert_shows_canonical(out, EMOJI_PROGRAM, REPLY)


def test_a_planned_program_that_fails_is_shown_in_canonical_form(
    server: ScriptedServer, runtime: Runtime, astronaut: Path
) -> None:
    server.script([FAILING_REPLY])
    out = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner_for(server), runtime=runtime)
    assert not out.ok and out.title == "Step IMAGE0 failed"
    # the step error points at the canonical line the program box shows
    assert "line 3, Emoji (step IMAGE0)" in out.message
    assert "\n  IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji=NAME)\n" in out.message
    assert_shows_canonical(out, FAILING_PROGRAM, FAILING_REPLY)


def test_a_program_from_the_plan_cache_is_shown_in_canonical_form(
    server: ScriptedServer, runtime: Runtime, astronaut: Path, tmp_path: Path
) -> None:
    cache = PlanCache(tmp_path / "plans.sqlite")
    server.script([REPLY])
    first = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner_for(server, cache), runtime=runtime)
    again = plan_and_run(INSTRUCTION, "edit", str(astronaut), planner=planner_for(server, cache), runtime=runtime)
    assert first.ok and again.ok, (first.message, again.message)
    assert len(server.requests) == 1 and again.message.endswith("; 1 program from the plan cache")
    assert_shows_canonical(again, EMOJI_PROGRAM, REPLY)
