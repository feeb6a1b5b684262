"""Tests for ``Batcher``: programs of many threads share batched module calls; each gets its own trace or error."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from visprog.errors import ProgramCheckError, StepError
from visprog.language.signatures import Registry, module
from visprog.planner.tasks import input_names
from visprog.running.batcher import Batcher, BatcherClosed
from visprog.running.events import Event, RunFinished, StepFinished
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Context
from visprog.running.tracing import Trace

#: Wait(seconds=...) calls, one entry per call: how many argument sets it got
WAITS: list[int] = []
#: Gate() blocks until this is set
GATE = threading.Event()


def _wait_batch(calls: Sequence[dict[str, Any]], ctx: Context) -> list[str]:
    WAITS.append(len(calls))
    time.sleep(max(c["seconds"] for c in calls))
    return ["waited"] * len(calls)


@module(batch=_wait_batch)
def Wait(seconds: float, after: str | None = None) -> str:
    """Sleep a while (a slow model call).

    Args:
        seconds: how long.
        after: a value to wait for first (makes a chain of steps).
    """
    WAITS.append(1)
    time.sleep(seconds)
    return "waited"


@module
def Gate(value: str) -> str:
    """Block until the test opens the gate.

    Args:
        value: passed through.
    """
    assert GATE.wait(10)
    return value


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    fakes.reset()
    WAITS.clear()
    GATE.clear()
    yield
    GATE.set()
    fakes.reset()


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = fakes.registry()
    reg.register_all([Wait, Gate], source="tests")
    return reg


@pytest.fixture
def batcher(registry: Registry) -> Iterator[Batcher]:
    with Batcher(Interpreter(registry, known_inputs=input_names()), window=0.05) as b:
        yield b


@pytest.fixture(scope="module")
def image() -> Any:
    return PILImage.fromarray(data.astronaut())


def gqa(k: int) -> str:
    return f"ANSWER0=Vqa(image=IMAGE, question='Question {k}?')\nFINAL_RESULT=Result(var=ANSWER0)"


def test_concurrent_callers_share_module_calls_and_keep_their_own_traces(batcher: Batcher, image: Any) -> None:
    for k in range(8):
        fakes.VQA_ANSWERS[f"Question {k}?"] = f"answer {k}"
    start = threading.Barrier(8)

    def ask(k: int) -> Trace:
        start.wait()
        return batcher.run(gqa(k), {"IMAGE": image})

    with ThreadPoolExecutor(8) as pool:
        traces = list(pool.map(ask, range(8)))
    assert [t.result for t in traces] == [f"answer {k}" for k in range(8)]
    assert [t.source.splitlines()[0] for t in traces] == [gqa(k).splitlines()[0] for k in range(8)]
    assert all(len(t.records) == 2 and t.ok for t in traces)
    vqa_calls = [n for name, n in fakes.CALLS if name == "Vqa"]
    assert sum(vqa_calls) == 8 and max(vqa_calls) > 1  # fewer calls than programs: batched across callers
    assert {r.batch for t in traces for r in t.records if r.module == "Vqa"} == set(vqa_calls)


def test_a_failing_program_fails_alone(batcher: Batcher, image: Any) -> None:
    bad = "ANSWER0=Vqa(image=IMAGE, question='How many?')\nX=Eval(expr='{ANSWER0} / 0')\nFINAL_RESULT=Result(var=X)"
    futures = [batcher.submit(p, {"IMAGE": image}) for p in (gqa(1), bad, gqa(2))]
    assert futures[0].result(5).result == "yes" and futures[2].result(5).result == "yes"
    error = futures[1].exception(5)
    assert isinstance(error, StepError) and error.line == 2 and "zero" in error.reason
    assert error.trace is not None and [r.module for r in error.trace.records] == ["Vqa", "Eval"]
    assert [n for name, n in fakes.CALLS if name == "Vqa"] == [3]


def test_a_program_checks_on_the_callers_thread(batcher: Batcher, image: Any) -> None:
    with pytest.raises(ProgramCheckError, match="Nope"):
        batcher.submit("X=Nope(image=IMAGE)\nFINAL_RESULT=Result(var=X)", {"IMAGE": image})
    with pytest.raises(ProgramCheckError, match="reads the input LEFT, which was not given"):
        batcher.submit("X=Vqa(image=LEFT, question='q')\nFINAL_RESULT=Result(var=X)", {"IMAGE": image})
    assert batcher.run(gqa(0), {"IMAGE": image}).ok  # and the batcher goes on


def test_a_program_arriving_mid_run_joins_the_next_round_not_the_end(batcher: Batcher) -> None:
    chain = "W0=Wait(seconds=0.1)\n" + "\n".join(f"W{k}=Wait(seconds=0.1, after=W{k - 1})" for k in range(1, 6))
    chain += "\nFINAL_RESULT=Result(var=W5)"
    long = batcher.submit(chain, {})
    time.sleep(0.15)  # the long program is on its second step
    short = batcher.run("W=Wait(seconds=0.1)\nFINAL_RESULT=Result(var=W)", {})
    assert short.ok and not long.done()  # it ended while the long one still ran
    assert 2 in WAITS  # and its step shared a call with one of the long program's steps
    assert long.result(5).ok


def test_events_are_numbered_per_caller_and_a_raising_listener_stops_nothing(batcher: Batcher, image: Any) -> None:
    heard: list[Event] = []

    def angry(event: Event) -> None:
        raise RuntimeError("listener broke")

    other = batcher.submit(gqa(3), {"IMAGE": image}, on_event=angry)
    results = batcher.run_many([(gqa(1), {"IMAGE": image}), (gqa(2), {"IMAGE": image})], on_event=heard.append)
    assert all(isinstance(r, Trace) and r.ok for r in results)
    assert other.result(5).ok
    finished = [e for e in heard if isinstance(e, RunFinished)]
    assert sorted(e.job for e in finished) == [0, 1]
    assert {e.job for e in heard if isinstance(e, StepFinished)} == {0, 1}


def test_run_many_gives_each_job_its_result_or_error(batcher: Batcher, image: Any) -> None:
    results = batcher.run_many([(gqa(1), {"IMAGE": image}), ("X=Nope()", {"IMAGE": image})])
    assert isinstance(results[0], Trace) and isinstance(results[1], ProgramCheckError)


def test_a_cancelled_program_that_had_not_started_never_runs(batcher: Batcher) -> None:
    blocker = batcher.submit("X=Gate(value='a')\nFINAL_RESULT=Result(var=X)", {})
    time.sleep(0.1)  # the gate step runs now
    waiting = batcher.submit("W=Wait(seconds=0.01)\nFINAL_RESULT=Result(var=W)", {})
    assert waiting.cancel()
    GATE.set()
    assert blocker.result(5).result == "a"
    assert batcher.run("X=Gate(value='b')\nFINAL_RESULT=Result(var=X)", {}).result == "b"
    assert WAITS == []


def test_run_times_out_and_a_closed_batcher_refuses(registry: Registry) -> None:
    b = Batcher(Interpreter(registry), window=0)
    with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
        b.run("X=Gate(value='a')\nFINAL_RESULT=Result(var=X)", {}, timeout=0.05)
    GATE.set()
    b.close(5)
    assert not b.alive
    with pytest.raises(BatcherClosed, match="closed"):
        b.submit("X=Gate(value='a')\nFINAL_RESULT=Result(var=X)", {})


def test_window_must_not_be_negative(registry: Registry) -> None:
    with pytest.raises(ValueError, match="window"):
        Batcher(Interpreter(registry), window=-1)


def test_closing_lets_every_program_given_run_to_its_end(registry: Registry) -> None:
    """Closed while one program runs and another waits: both end with their traces (none is left unanswered)."""
    batcher = Batcher(Interpreter(registry, known_inputs=input_names()), window=0.0)
    first = batcher.submit("A=Gate(value='one')\nFINAL_RESULT=Result(var=A)", {})
    time.sleep(0.2)  # the first is running, blocked in Gate
    second = batcher.submit("B=Wait(seconds=0.01)\nFINAL_RESULT=Result(var=B)", {})
    closing = threading.Thread(target=batcher.close)
    closing.start()
    time.sleep(0.1)
    GATE.set()
    closing.join(10)
    assert first.result(10).result == "one"
    assert second.result(10).result == "waited"
    assert batcher.load == (0, 0) and not batcher.alive
