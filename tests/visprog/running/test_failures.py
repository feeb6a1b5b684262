"""After a failing step: the steps that do not need it still run, the ones that do are skipped, the trace and its
text say which, and an exception raised in a module's code names the file and line it was raised at."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from visprog.errors import StepError
from visprog.language.signatures import ModuleSpec, Registry
from visprog.language.values import Image
from visprog.running.events import Event, RunFinished, StepFailed, StepFinished, StepSkipped, StepStarted
from visprog.running.interpreter import Interpreter
from visprog.running.tracing import Skipped, Trace

# Line 2 fails; lines 3 and 6 do not need it, lines 4, 5 and 7 do (5 and 7 through 4).
MIXED = (
    "OBJ0=Loc(image=IMAGE, object='face')\n"
    "ANSWER0=Eval(expr='1/0')\n"
    "IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face')\n"
    "ANSWER1=Eval(expr='{ANSWER0} + 1')\n"
    "ANSWER2=Eval(expr='{ANSWER1} * 2')\n"
    "N=Count(box=OBJ0)\n"
    "FINAL_RESULT=Result(var=ANSWER2)\n"
)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    fakes.reset()
    yield
    fakes.reset()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return fakes.registry()


@pytest.fixture(scope="module")
def image() -> Image:
    return PILImage.fromarray(data.astronaut())


def failure(registry: Registry, program: str, image: Image, events: list[Event] | None = None) -> StepError:
    with pytest.raises(StepError) as info:
        Interpreter(registry).run(program, {"IMAGE": image}, on_event=None if events is None else events.append)
    return info.value


def last_line(trace: Trace | None) -> str:
    assert trace is not None
    return trace.to_text().rsplit("\n", 1)[-1]


# --- the run goes on -------------------------------------------------------------------------------


def test_steps_that_do_not_need_the_failed_one_still_run(registry: Registry, image: Image) -> None:
    events: list[Event] = []
    e = failure(registry, MIXED, image, events)
    # The error is the failing step's, as before.
    assert (e.line, e.module, e.target) == (2, "Eval", "ANSWER0")
    assert str(e).startswith("line 2, Eval (step ANSWER0) failed: division by zero")
    trace = e.trace
    assert trace is not None and not trace.ok and trace.error == str(e)
    # In the order they ran: the independent steps after the failed one.
    assert [(r.line, r.ok) for r in trace.records] == [(1, True), (2, False), (3, True), (6, True)]
    assert trace.step("IMAGE0").output.size == image.size and trace.step("N").output == 1
    assert trace.skipped == [
        Skipped(3, 4, "ANSWER1", "Eval", "ANSWER1=Eval(expr='{ANSWER0} + 1')", (2,)),
        Skipped(4, 5, "ANSWER2", "Eval", "ANSWER2=Eval(expr='{ANSWER1} * 2')", (2,)),
        Skipped(6, 7, "FINAL_RESULT", "Result", "FINAL_RESULT=Result(var=ANSWER2)", (2,)),
    ]
    # The Python API's partial results hold what ran after the failure too.
    assert set(e.partial_results) == {"IMAGE", "OBJ0", "IMAGE0", "N"}
    # Events: the steps after the failure start and finish; the skipped ones say why; then the end.
    kinds = [(ev.kind, getattr(ev, "line", None)) for ev in events]
    assert kinds == [
        ("run_started", None),
        ("step_started", 1), ("step_finished", 1), ("step_started", 2), ("step_failed", 2),
        ("step_started", 3), ("step_finished", 3), ("step_started", 6), ("step_finished", 6),
        ("step_skipped", 4), ("step_skipped", 5), ("step_skipped", 7),
        ("run_finished", None),
    ]  # fmt: skip
    skipped = [ev for ev in events if isinstance(ev, StepSkipped)]
    assert {ev.reason for ev in skipped} == {"it needs line 2, which failed"}
    assert (skipped[0].index, skipped[0].total, skipped[0].target, skipped[0].module) == (3, 7, "ANSWER1", "Eval")
    end = events[-1]
    assert isinstance(end, RunFinished) and not end.ok and end.error == str(e)


def test_the_trace_text_says_what_ran_after_the_failure_and_what_did_not(registry: Registry, image: Image) -> None:
    trace = failure(registry, MIXED, image).trace
    assert last_line(trace) == (
        "run failed at line 2 (Eval); ran after it: lines 3, 6 (independent of it); "
        "not run: lines 4, 5, 7 (they need line 2)"
    )
    # Read back from JSON, the trace says the same.
    assert trace is not None
    back = Trace.from_json(trace.to_json())
    assert back.skipped == trace.skipped and back.to_text() == trace.to_text()
    assert trace.to_dict()["skipped"][0] == {
        "index": 3, "line": 4, "target": "ANSWER1", "module": "Eval",
        "source": "ANSWER1=Eval(expr='{ANSWER0} + 1')", "needs": [2],
    }  # fmt: skip
    # A trace written before "skipped" existed reads as having none.
    old = trace.to_dict()
    del old["skipped"]
    assert Trace.from_dict(old).skipped == []


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        pytest.param(  # the last step fails, every other one ran before it
            "OBJ0=Loc(image=IMAGE, object='dog')\nN=Count(box=OBJ0)\nANSWER0=Eval(expr='{N} / 0')",
            "run failed at line 3 (Eval); no step ran after it",
            id="nothing-after",
        ),
        pytest.param(  # the first step fails, nothing needs it
            "ANSWER0=Eval(expr='1/0')\nOBJ0=Loc(image=IMAGE, object='dog')\nN=Count(box=OBJ0)\n"
            "FINAL_RESULT=Result(var=N)",
            "run failed at line 1 (Eval); ran after it: lines 2, 3, 4 (independent of it)",
            id="only-independent",
        ),
        pytest.param(  # everything after it needs it
            "OBJ0=Loc(image=IMAGE, object='dog')\nN=Count(box=OBJ0)\nANSWER0=Eval(expr='{N} / 0')\n"
            "ANSWER1=Eval(expr='{ANSWER0} + 1')\nFINAL_RESULT=Result(var=ANSWER1)",
            "run failed at line 3 (Eval); not run: lines 4, 5 (they need line 3)",
            id="only-dependent",
        ),
        pytest.param(
            "ANSWER0=Eval(expr='1/0')\nFINAL_RESULT=Result(var=ANSWER0)",
            "run failed at line 1 (Eval); not run: line 2 (it needs line 1)",
            id="one-dependent",
        ),
        pytest.param(  # a second, independent failure: its own dependents are named with it
            "ANSWER0=Eval(expr='1/0')\nANSWER1=Eval(expr='2/0')\nANSWER2=Eval(expr='{ANSWER0} + {ANSWER1}')\n"
            "ANSWER3=Eval(expr='{ANSWER1} + 1')\nFINAL_RESULT=Result(var=ANSWER2)",
            "run failed at line 1 (Eval); ran after it: line 2 (independent of it; line 2 failed too); "
            "not run: lines 3, 5 (they need lines 1 and 2), line 4 (it needs line 2)",
            id="two-failures",
        ),
    ],
)
def test_the_wording_matches_what_ran(registry: Registry, image: Image, program: str, expected: str) -> None:
    e = failure(registry, program, image)
    assert last_line(e.trace) == expected
    assert e.trace is not None and e.trace.after_failure() == expected.split("; ", 1)[1]


def test_a_failure_in_one_job_of_run_many_leaves_the_others_and_its_batch_alone(
    registry: Registry, image: Image
) -> None:
    failing = (
        "ANSWER0=Eval(expr='1/0')\nANSWER1=Vqa(image=IMAGE, question='Is it red?')\nFINAL_RESULT=Result(var=ANSWER0)"
    )
    fine = "ANSWER1=Vqa(image=IMAGE, question='What is it?')\nFINAL_RESULT=Result(var=ANSWER1)"
    events: list[Event] = []
    results = Interpreter(registry).run_many(
        [(failing, {"IMAGE": image}), (fine, {"IMAGE": image})], on_event=events.append
    )
    assert fakes.CALLS == [("Vqa", 2)]  # the failed job's independent Vqa step still shared the batched call
    failed, ok = results
    assert isinstance(ok, Trace) and ok.result == "yes" and ok.step("ANSWER1").batch == 2
    assert isinstance(failed, StepError) and failed.trace is not None
    assert failed.trace.step("ANSWER1").output == "yes" and failed.trace.step("ANSWER1").batch == 2
    assert [k.target for k in failed.trace.skipped] == ["FINAL_RESULT"]
    assert [(ev.kind, ev.job) for ev in events if isinstance(ev, (StepSkipped, StepFailed))] == [
        ("step_failed", 0), ("step_skipped", 0),
    ]  # fmt: skip
    started = [ev.job for ev in events if isinstance(ev, StepStarted) and ev.target == "ANSWER1"]
    finished = [ev.job for ev in events if isinstance(ev, StepFinished) and ev.target == "ANSWER1"]
    assert started == finished == [0, 1]


# --- the trace text ----------------------------------------------------------------------------------


def test_the_trace_text_keeps_the_programs_names_and_shows_the_result_once(registry: Registry, image: Image) -> None:
    program = (
        "OBJ0=Loc(image=IMAGE, object='face')\n"
        "IMAGE1=Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face')\n"
        "N=Count(OBJ0)\n"
        "ANSWER0=Eval(expr=\"'one' if {N} == 1 else 'many'\")\n"
        "ANSWER1=ANSWER0\n"
        "FINAL_RESULT=Result(var=ANSWER1)\n"
    )
    trace = Interpreter(registry).run(program, {"IMAGE": image})
    steps = [r.summary().split("\n") for r in sorted(trace.records, key=lambda r: r.index)]
    assert [lines[0] for lines in steps] == [
        "line  1  OBJ0 = Loc(image=IMAGE [512x512], object='face')",
        "line  2  IMAGE1 = Emoji(image=IMAGE [512x512], object=OBJ0 [Objects (1)], emoji='smiling_face')",
        "line  3  N = Count(box=OBJ0 [Objects (1)])",  # a positional argument gets its parameter's name
        "line  4  ANSWER0 = Eval(expr=\"'one' if {N} == 1 else 'many'\" [N=1])",  # the template as written
        "line  5  ANSWER1=ANSWER0",  # a bare assignment as written
        "line  6  FINAL_RESULT = Result(var=ANSWER1)",  # its value is its output: shown once
    ]
    assert [lines[1].split("  (")[0].strip() for lines in steps] == [
        "-> Objects (1)", "-> Image 512x512", "-> int 1", "-> str 'one'", "-> str 'one'", "-> str 'one'",
    ]  # fmt: skip
    text = trace.to_text()
    assert text.endswith(f"\nresult: FINAL_RESULT (line 6), total {trace.seconds * 1000:.1f} ms")
    assert "result: str" not in text
    assert Trace.from_json(trace.to_json()).to_text() == text


def test_a_step_that_failed_before_its_call_shows_its_arguments_as_written(registry: Registry, image: Image) -> None:
    # 'lots' does not convert to List's int parameter: the step fails before List is called
    program = "N=Eval(expr=\"'lots'\")\nL=List(query='names', max=N)\nFINAL_RESULT=Result(var=L)"
    e = failure(registry, program, image)
    assert e.trace is not None
    failed = e.trace.step("L")
    assert failed.inputs == {}
    assert failed.summary().split("\n") == [
        "line  2  L = List(query='names', max=N)",
        "         FAILED: argument 'max': expected int, got str 'lots'",
    ]
    # An Eval step that fails in its expression shows the values it was given.
    fakes.VQA_ANSWERS["How many?"] = "3"
    e = failure(registry, "N=Vqa(image=IMAGE, question='How many?')\nM=Eval(expr='{N} / 0')", image)
    assert e.trace is not None
    assert e.trace.step("M").summary().split("\n") == [
        "line  2  M = Eval(expr='{N} / 0' [N='3'])",
        "         FAILED: division by zero in '/' at column 5 in expression '{N} / 0'",
    ]


def test_a_source_that_does_not_parse_falls_back_to_the_values() -> None:
    from visprog.running.tracing import StepRecord

    record = StepRecord(0, 1, "X", "F", "X=F(", inputs={"a": 2}, output="b")
    assert record.summary().split("\n")[0] == "line  1  X = F(a=int 2)"


# --- where a module's exception was raised ---------------------------------------------------------

PLUGIN = """\
from visprog import module
from visprog.language.values import Image
from PIL import Image as PILImage


def _check(name):
    if name == "bad":
        raise ValueError("bad thing")
    return name


@module
def Stamp(image: Image, name: str) -> Image:
    '''Stamp a name on an image (or fail).

    Args:
        image: the image.
        name: the name.
    '''
    _check(name)
    if name == "mode":
        return PILImage.new("no such mode", (2, 2))  # raised inside PIL
    return image
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[ModuleType]:
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("visprog_test_my_plugin", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def test_an_exception_in_a_modules_code_names_its_file_and_line(plugin: ModuleType, image: Image) -> None:
    registry = fakes.registry()
    stamp = plugin.Stamp
    assert isinstance(stamp, ModuleSpec)
    registry.register(stamp)
    path = plugin.__file__
    lines = PLUGIN.split("\n")
    raised = lines.index('        raise ValueError("bad thing")') + 1
    called = lines.index('        return PILImage.new("no such mode", (2, 2))  # raised inside PIL') + 1
    e = failure(registry, "IMAGE0=Stamp(image=IMAGE, name='bad')\nFINAL_RESULT=Result(var=IMAGE0)", image)
    assert e.reason == f"ValueError: bad thing (at {path}:{raised})"  # the innermost line of the module's file
    assert str(e).startswith(f"line 1, Stamp (step IMAGE0) failed: ValueError: bad thing (at {path}:{raised})")
    assert isinstance(e.cause, ValueError) and e.__cause__ is e.cause  # the whole traceback is still there
    # Raised inside a library the module calls: the module's line that called it.
    e = failure(registry, "IMAGE0=Stamp(image=IMAGE, name='mode')\nFINAL_RESULT=Result(var=IMAGE0)", image)
    assert e.reason.startswith("ValueError: ") and e.reason.endswith(f" (at {path}:{called})")


def test_an_exception_in_a_built_in_module_names_its_file_and_line(registry: Registry, image: Image) -> None:
    import visprog.modules.image_ops as image_ops

    source = Path(image_ops.__file__).read_text(encoding="utf-8").split("\n")
    line = source.index("        raise ValueError(check_emoji(name))") + 1  # in the helper Emoji calls
    program = (
        "NAME='no_such_emoji_at_all'\nOBJ0=Loc(image=IMAGE, object='face')\n"
        "IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji=NAME)"
    )
    e = failure(registry, program, image)
    assert e.reason.startswith("ValueError: unknown emoji 'no_such_emoji_at_all'")
    assert e.reason.endswith(f" (at {image_ops.__file__}:{line})")


def test_a_modules_own_error_message_is_left_as_it_is(registry: Registry, image: Image) -> None:
    # Eval's errors are visprog's own (EvalError): they say what is wrong in the program, not where in Python
    e = failure(registry, "ANSWER0=Eval(expr='1/0')", image)
    assert e.reason.startswith("division by zero") and " (at " not in str(e)


def test_the_html_page_says_the_same(registry: Registry, image: Image) -> None:
    from visprog.presentation.report import trace_html

    trace = failure(registry, MIXED, image).trace
    assert trace is not None
    page = trace_html(trace)
    assert (
        'The run failed at <a href="#line-2">line 2 (Eval)</a>; ran after it: lines 3, 6 (independent of it); '
        "not run: lines 4, 5, 7 (they need line 2).</p>"
    ) in page
    # the steps that ran after it have their cards; the program marks the lines that did not run
    for line in (1, 2, 3, 6):
        assert f'id="line-{line}"' in page
    for line in (4, 5, 7):
        assert f'id="line-{line}"' not in page
