"""The interpreter's events: what an ``on_event`` listener hears, in which order, and what a raising one does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from visprog.errors import ListenerError, StepError
from visprog.language.signatures import Registry
from visprog.language.values import Image
from visprog.running.events import (
    Event,
    RunFinished,
    RunStarted,
    StepFailed,
    StepFinished,
    StepSkipped,
    StepStarted,
    stream,
)
from visprog.running.interpreter import Interpreter
from visprog.running.tracing import Trace

COUNT = "BOX0=Loc(image=IMAGE, object='wolf')\nANSWER0=Count(box=BOX0)\nRESULT=ANSWER0"
FAILING = (
    "ANSWER0=Vqa(image=IMAGE, question='What is it?')\n"
    "ANSWER1=Eval(expr='{ANSWER0} / 0')\n"
    "FINAL_RESULT=Result(var=ANSWER1)\n"
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


def gqa(k: int) -> str:
    return f"ANSWER0=Vqa(image=IMAGE, question='Question {k}?')\nFINAL_RESULT=Result(var=ANSWER0)"


def steps(events: list[Event]) -> list[tuple[str, int, int]]:
    """(kind, job, step index) of each step event."""
    return [(e.kind, e.job, e.index) for e in events if isinstance(e, (StepStarted, StepFinished, StepFailed))]


def test_a_run_reports_each_step_as_it_goes(registry: Registry, image: Image) -> None:
    events: list[Event] = []
    trace = Interpreter(registry).run(COUNT, {"IMAGE": image}, on_event=events.append)
    assert [e.kind for e in events] == [
        "run_started",
        "step_started", "step_finished",
        "step_started", "step_finished",
        "step_started", "step_finished",
        "run_finished",
    ]  # fmt: skip
    assert events[0] == RunStarted(job=0, program=COUNT, steps=3)
    started, finished = events[3], events[4]
    assert started == StepStarted(job=0, index=1, total=3, target="ANSWER0", module="Count", line=2)
    record = trace.step("ANSWER0")
    assert isinstance(finished, StepFinished)
    assert (finished.index, finished.target, finished.module, finished.line) == (1, "ANSWER0", "Count", 2)
    assert finished.value == 2 and finished.seconds == record.seconds and finished.batch == 1
    assert isinstance(events[2], StepFinished) and events[2].value is trace.values["BOX0"]  # the value itself
    assert events[-1] == RunFinished(job=0, ok=True, seconds=trace.seconds, result=2, error=None)
    # The events change nothing about the run.
    again = Interpreter(registry).run(COUNT, {"IMAGE": image})
    assert [(r.target, r.output) for r in again.records][1:] == [(r.target, r.output) for r in trace.records][1:]
    assert again.result == trace.result and again.result_var == trace.result_var


def test_a_failing_step_is_reported_and_the_steps_that_need_it_are_skipped(registry: Registry, image: Image) -> None:
    fakes.VQA_ANSWERS["What is it?"] = "3"
    events: list[Event] = []
    with pytest.raises(StepError) as info:
        Interpreter(registry).run(FAILING, {"IMAGE": image}, on_event=events.append)
    assert [e.kind for e in events] == [
        "run_started", "step_started", "step_finished", "step_started", "step_failed", "step_skipped", "run_finished",
    ]  # fmt: skip
    assert events[5] == StepSkipped(
        job=0, index=2, total=3, target="FINAL_RESULT", module="Result", line=3, reason="it needs line 2, which failed"
    )
    assert events[5].to_dict()["reason"] == "it needs line 2, which failed"
    failed = events[4]
    assert isinstance(failed, StepFailed)
    assert (failed.index, failed.target, failed.module, failed.line, failed.total) == (1, "ANSWER1", "Eval", 2, 3)
    assert "division by zero" in failed.error and failed.error == info.value.reason
    assert failed.seconds >= 0
    end = events[-1]
    assert isinstance(end, RunFinished) and not end.ok and end.result is None
    assert end.error == str(info.value) and end.error == info.value.trace.error  # type: ignore[union-attr]


def test_run_many_numbers_jobs_and_reports_each_step_of_a_batch(registry: Registry, image: Image) -> None:
    fakes.VQA_ANSWERS["What is it?"] = "3"
    bad_check = "ANSWER0=Vqa(image=IMAGE, questio='What?')\nFINAL_RESULT=Result(var=ANSWER0)"
    jobs = [(gqa(0), {"IMAGE": image}), (bad_check, {"IMAGE": image}), (gqa(1), {"IMAGE": image})]
    jobs.append((FAILING, {"IMAGE": image}))
    events: list[Event] = []
    results = Interpreter(registry).run_many(jobs, on_event=events.append)
    assert fakes.CALLS == [("Vqa", 3)]  # one batched call for the three programs' first steps
    # The job that does not check has no events; the others are numbered by their place in ``jobs``.
    assert [(e.kind, e.job) for e in events if isinstance(e, RunStarted)] == [("run_started", j) for j in (0, 2, 3)]
    assert steps(events) == [
        ("step_started", 0, 0), ("step_started", 2, 0), ("step_started", 3, 0),  # the batch starts together
        ("step_finished", 0, 0), ("step_finished", 2, 0), ("step_finished", 3, 0),
        ("step_started", 0, 1), ("step_finished", 0, 1),
        ("step_started", 2, 1), ("step_finished", 2, 1),
        ("step_started", 3, 1), ("step_failed", 3, 1),
    ]  # fmt: skip
    batch = [e for e in events if isinstance(e, StepFinished) and e.index == 0]
    assert [e.batch for e in batch] == [3, 3, 3] and [e.value for e in batch] == ["yes", "yes", "3"]
    ends = {e.job: e for e in events if isinstance(e, RunFinished)}
    assert set(ends) == {0, 2, 3}
    assert ends[0].ok and ends[0].result == "yes" and ends[2].ok
    assert not ends[3].ok and ends[3].error is not None and "division by zero" in ends[3].error
    # Every job's RunFinished comes after its last step event.
    for job, end in ends.items():
        last = max(k for k, e in enumerate(events) if getattr(e, "job", None) == job and e is not end)
        assert events.index(end) > last
    assert isinstance(results[0], Trace) and isinstance(results[3], StepError)


def test_a_raising_listener_stops_the_run_and_keeps_the_trace(registry: Registry, image: Image) -> None:
    heard: list[Event] = []

    def listener(event: Event) -> None:
        heard.append(event)
        if isinstance(event, StepStarted) and event.target == "ANSWER0":
            raise RuntimeError("the client went away")

    with pytest.raises(ListenerError) as info:
        Interpreter(registry).run(COUNT, {"IMAGE": image}, on_event=listener)
    e = info.value
    assert str(e) == (
        "the run was stopped: the on_event listener raised RuntimeError: the client went away "
        "(on the step_started event)"
    )
    assert isinstance(e.__cause__, RuntimeError) and e.cause is e.__cause__
    assert isinstance(e.event, StepStarted) and e.event.target == "ANSWER0"
    assert heard[-1] is e.event  # nothing was heard after the listener raised
    trace = e.trace
    assert trace is not None and not trace.ok and trace.error == str(e) and trace.seconds > 0
    # The step before it is kept, with its output; the step that was refused never ran.
    assert [r.target for r in trace.records] == ["BOX0"]
    assert len(trace.step("BOX0").output) == 2
    assert fakes.CALLS == [("Loc", 1)]
    assert e.results == [trace]


def test_a_listener_raising_at_the_end_still_gives_the_whole_trace(registry: Registry, image: Image) -> None:
    def listener(event: Event) -> None:
        if isinstance(event, RunFinished):
            raise ValueError("cannot write the log")

    with pytest.raises(ListenerError, match="raised ValueError: cannot write the log") as info:
        Interpreter(registry).run(COUNT, {"IMAGE": image}, on_event=listener)
    trace = info.value.trace
    assert trace is not None and trace.ok and trace.result == 2  # the run had ended: its trace is complete


def test_a_raising_listener_stops_every_job_of_run_many(registry: Registry, image: Image) -> None:
    def listener(event: Event) -> None:
        if isinstance(event, StepFinished) and event.job == 1 and event.index == 0:
            raise KeyError("stop")

    jobs = [(gqa(k), {"IMAGE": image}) for k in range(3)]
    with pytest.raises(ListenerError) as info:
        Interpreter(registry).run_many(jobs, on_event=listener)
    e = info.value
    assert isinstance(e.event, StepFinished) and e.event.job == 1
    assert len(e.results) == 3 and all(isinstance(r, Trace) for r in e.results)
    assert e.trace is e.results[1]
    for r in e.results:
        assert isinstance(r, Trace) and not r.ok and r.error is not None and "KeyError" in r.error
        # the batched first step ran for every job (its records are complete), the rest did not
        assert [rec.target for rec in r.records] == ["ANSWER0"] and r.step("ANSWER0").output == "yes"


def test_stream_iterates_over_the_events_of_a_run(registry: Registry, image: Image) -> None:
    interpreter = Interpreter(registry)
    s = stream(lambda on_event: interpreter.run(COUNT, {"IMAGE": image}, on_event=on_event))
    kinds = [event.kind for event in s]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished" and kinds.count("step_finished") == 3
    assert isinstance(s.result, Trace) and s.result.result == 2

    fakes.VQA_ANSWERS["What is it?"] = "3"
    failing = stream(lambda on_event: interpreter.run(FAILING, {"IMAGE": image}, on_event=on_event))
    seen: list[str] = []
    with pytest.raises(StepError):
        for event in failing:
            seen.append(event.kind)
    assert seen[-3:] == ["step_failed", "step_skipped", "run_finished"]  # every event before the error


def test_events_as_data(registry: Registry, image: Image) -> None:
    events: list[Event] = []
    Interpreter(registry).run(COUNT, {"IMAGE": image}, on_event=events.append)
    data_: list[dict[str, Any]] = [e.to_dict() for e in events]
    assert data_[0] == {"kind": "run_started", "job": 0, "program": COUNT, "steps": 3}
    box = data_[2]
    assert box["kind"] == "step_finished" and box["value"] == "Objects (2)" and box["target"] == "BOX0"
    assert data_[-1]["result"] == 2 and data_[-1]["ok"] is True
