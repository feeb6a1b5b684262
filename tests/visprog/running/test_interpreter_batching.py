"""Tests for ``Interpreter.run_many``: many programs, one engine, batches across programs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from visprog.errors import ProgramCheckError, StepError
from visprog.language.signatures import Registry, module
from visprog.language.values import Image
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Context
from visprog.running.tracing import Trace

NLVR = """\
ANSWER0=Vqa(image=LEFT, question='How many wolves are in the image?')
ANSWER1=Vqa(image=RIGHT, question='How many wolves are in the image?')
ANSWER2=Vqa(image=LEFT, question='Is it snowing?')
ANSWER3=Vqa(image=RIGHT, question='Is it snowing?')
ANSWER4=Eval(expr='{ANSWER0} + {ANSWER1} == 4 and ({ANSWER2} xor {ANSWER3})')
FINAL_ANSWER=Result(var=ANSWER4)
"""

CHAIN = """\
BOX0=Loc(image=IMAGE, object='{obj}')
IMAGE0=Crop(image=IMAGE, box=BOX0)
ANSWER0=Vqa(image=IMAGE0, question='What is the {obj} doing?')
FINAL_RESULT=Result(var=ANSWER0)
"""


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    fakes.reset()
    yield
    fakes.reset()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return fakes.registry()


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    return {"LEFT": PILImage.fromarray(data.astronaut()), "RIGHT": PILImage.fromarray(data.chelsea())}


def gqa(k: int) -> str:
    return f"ANSWER0=Vqa(image=IMAGE, question='Question {k}?')\nFINAL_RESULT=Result(var=ANSWER0)"


def traces(results: list[Trace | Any]) -> list[Trace]:
    assert all(isinstance(r, Trace) for r in results), results
    return list(results)


def test_eight_programs_are_one_vqa_call(registry: Registry, images: dict[str, Image]) -> None:
    for k in range(8):
        fakes.VQA_ANSWERS[f"Question {k}?"] = f"answer {k}"
    jobs = [(gqa(k), {"IMAGE": images["LEFT"]}) for k in range(8)]
    results = traces(Interpreter(registry).run_many(jobs))
    assert fakes.CALLS == [("Vqa", 8)]
    assert [t.result for t in results] == [f"answer {k}" for k in range(8)]
    assert all(t.records[0].batch == 8 for t in results)
    fakes.reset()
    Interpreter(registry, max_batch=3).run_many(jobs)
    assert fakes.CALLS == [("Vqa", 3), ("Vqa", 3), ("Vqa", 2)]


def test_four_nlvr_programs_are_one_call_of_sixteen(registry: Registry, images: dict[str, Image]) -> None:
    fakes.VQA_ANSWERS["Is it snowing?"] = "no"
    fakes.VQA_ANSWERS["How many wolves are in the image?"] = "two"
    results = traces(Interpreter(registry).run_many([(NLVR, images)] * 4))
    assert fakes.CALLS == [("Vqa", 16)]
    assert [t.result for t in results] == [False] * 4
    assert len({id(t) for t in results}) == 4  # one trace per job


def test_dependent_steps_keep_each_programs_order(registry: Registry, images: dict[str, Image]) -> None:
    jobs = [(CHAIN.format(obj=obj), {"IMAGE": images["LEFT"]}) for obj in ("dog", "wolf", "cat")]
    results = traces(Interpreter(registry).run_many(jobs))
    # every program's Loc before its Vqa; across programs, one Loc call and one Vqa call
    assert fakes.CALLS == [("Loc", 3), ("Vqa", 3)]
    for t in results:
        assert [r.target for r in t.records] == ["BOX0", "IMAGE0", "ANSWER0", "FINAL_RESULT"]
        crop = t.step("IMAGE0")
        assert t.step("ANSWER0").inputs["image"] is crop.output


def test_results_equal_running_each_program_alone(registry: Registry, images: dict[str, Image]) -> None:
    fakes.VQA_ANSWERS["Is it snowing?"] = "no"
    fakes.VQA_ANSWERS["How many wolves are in the image?"] = "2"
    programs = [
        (NLVR, images),
        (CHAIN.format(obj="wolf"), {"IMAGE": images["RIGHT"]}),
        (gqa(1), {"IMAGE": images["LEFT"]}),
        ("BOX0=Loc(image=IMAGE, object='wolf')\nANSWER0=Count(box=BOX0)\nRESULT=ANSWER0", {"IMAGE": images["LEFT"]}),
    ]
    interpreter = Interpreter(registry)
    together = traces(interpreter.run_many(programs))
    alone = [interpreter.run(p, inputs) for p, inputs in programs]
    for t, u in zip(together, alone, strict=True):
        assert t.result == u.result and t.result_var == u.result_var
        assert [(r.target, r.module, r.error) for r in t.records] == [(r.target, r.module, r.error) for r in u.records]
        assert list(t.values) == list(u.values)
    assert [t.result for t in together] == [False, "yes", "yes", 2]


def test_a_failing_program_does_not_stop_the_others(registry: Registry, images: dict[str, Image]) -> None:
    failing = (
        "ANSWER0=Vqa(image=IMAGE, question='What is it?')\n"
        "ANSWER1=Eval(expr='{ANSWER0} / 0')\n"
        "FINAL_RESULT=Result(var=ANSWER1)\n"
    )
    fakes.VQA_ANSWERS["What is it?"] = "3"
    bad_check = "ANSWER0=Vqa(image=IMAGE, questio='What?')\nFINAL_RESULT=Result(var=ANSWER0)"
    jobs = [
        (gqa(0), {"IMAGE": images["LEFT"]}),
        (failing, {"IMAGE": images["LEFT"]}),
        (bad_check, {"IMAGE": images["LEFT"]}),
    ]
    jobs.append((gqa(1), {"IMAGE": images["RIGHT"]}))
    ok0, failed, unchecked, ok1 = Interpreter(registry).run_many(jobs)
    assert isinstance(ok0, Trace) and ok0.ok and ok0.result == "yes"
    assert isinstance(ok1, Trace) and ok1.ok and ok1.result == "yes"
    assert fakes.CALLS == [("Vqa", 3)]
    assert isinstance(failed, StepError)
    assert (failed.line, failed.module, failed.target) == (2, "Eval", "ANSWER1")
    assert str(failed).startswith("line 2, Eval (step ANSWER1) failed: division by zero")
    assert failed.trace is not None and not failed.trace.ok
    assert failed.partial_results["ANSWER0"] == "3" and "FINAL_RESULT" not in failed.trace.values
    assert isinstance(unchecked, ProgramCheckError)
    assert "questio" in str(unchecked)


def test_a_wrong_output_fails_only_its_program(registry: Registry, images: dict[str, Image]) -> None:
    programs = [gqa(k) for k in range(3)]
    results = Interpreter(registry).run_many([(p, {"IMAGE": images["LEFT"]}) for p in programs])
    assert all(isinstance(r, Trace) for r in results)
    fakes.VQA_ANSWERS["Question 1?"] = None  # type: ignore[assignment]  # Vqa returns a wrong value
    results = Interpreter(registry).run_many([(p, {"IMAGE": images["LEFT"]}) for p in programs])
    assert isinstance(results[1], StepError) and "Vqa returned a wrong value" in str(results[1])
    assert isinstance(results[0], Trace) and isinstance(results[2], Trace)


ASK_CALLS: list[int] = []


def _broken_batch(calls: Sequence[dict[str, Any]], ctx: Context) -> list[str]:
    ASK_CALLS.append(len(calls))
    raise RuntimeError("out of memory")


@module(batch=_broken_batch)
def Ask(image: Image, question: str) -> str:
    """Answer a question (the batched implementation always fails; an empty question fails alone).

    Args:
        image: the image.
        question: the question.
    """
    ASK_CALLS.append(1)
    if not question.strip():
        raise ValueError("Ask: the question is empty")
    return f"answer to {question}"


def _ask(question: str) -> str:
    return f"ANSWER0=Ask(image=IMAGE, question='{question}')\nFINAL_RESULT=Result(var=ANSWER0)"


@pytest.fixture
def ask_registry() -> Iterator[Registry]:
    registry = fakes.registry()
    registry.register(Ask)
    ASK_CALLS.clear()
    yield registry
    ASK_CALLS.clear()


def test_a_failing_batch_call_is_retried_one_by_one(ask_registry: Registry, images: dict[str, Image]) -> None:
    jobs = [(_ask(q), {"IMAGE": images["LEFT"]}) for q in ("Q1?", " ", "Q3?")]
    ok1, failed, ok3 = Interpreter(ask_registry).run_many(jobs)
    assert ASK_CALLS == [3, 1, 1, 1]  # the batch of three failed, then each ran alone
    assert isinstance(ok1, Trace) and ok1.result == "answer to Q1?" and ok1.step("ANSWER0").batch == 1
    assert isinstance(ok3, Trace) and ok3.result == "answer to Q3?"
    assert isinstance(failed, StepError)  # only the program whose own call fails
    assert "ValueError: Ask: the question is empty (at " in str(failed) and "in a batch" not in str(failed)


def test_every_call_failing_gives_each_job_its_own_step_error(ask_registry: Registry, images: dict[str, Image]) -> None:
    results = Interpreter(ask_registry).run_many([(_ask(" "), {"IMAGE": images["LEFT"]})] * 3)
    errors = [r for r in results if isinstance(r, StepError)]
    assert len(errors) == 3 and len({id(e) for e in errors}) == 3
    for e in errors:
        assert "Ask: the question is empty" in str(e)
        assert e.trace is not None and e.trace.step("ANSWER0").error is not None
    assert len({id(e.trace) for e in errors}) == 3


def test_steps_of_one_program_in_a_failed_batch_keep_their_outputs(
    ask_registry: Registry, images: dict[str, Image]
) -> None:
    program = (
        "A=Ask(image=IMAGE, question='Q1?')\nB=Ask(image=IMAGE, question=' ')\nC=Ask(image=IMAGE, question='Q3?')\n"
        "FINAL_RESULT=Result(var=A)"
    )
    with pytest.raises(StepError) as info:
        Interpreter(ask_registry).run(program, {"IMAGE": images["LEFT"]})
    trace = info.value.trace
    assert trace is not None and info.value.target == "B"
    assert trace.step("A").output == "answer to Q1?" and trace.step("C").output == "answer to Q3?"
    # FINAL_RESULT needs A, not B: it ran after B failed
    assert trace.step("B").error is not None and trace.values["FINAL_RESULT"] == "answer to Q1?"
    assert trace.skipped == [] and [r.target for r in trace.records] == ["A", "B", "C", "FINAL_RESULT"]


def test_run_many_of_nothing(registry: Registry) -> None:
    assert Interpreter(registry).run_many([]) == []
