"""Hostile programs and replies do bounded work: Eval growth, deep nesting, huge texts and replies.

Each input here once took minutes, gigabytes or a traceback; each must now end at once with a clear error.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from tests import fakes
from visprog.errors import EvalError, ProgramCheckError, ProgramSyntaxError, StepError
from visprog.language import text_limits
from visprog.language.checker import check
from visprog.language.expr import evaluate
from visprog.language.values import describe_value
from visprog.planner.core import MAX_FEEDBACK_CHARS, Planner, PlanningError
from visprog.planner.scripted import ScriptedLLM
from visprog.running.interpreter import Interpreter

GOOD = "BOX0=Loc(image=IMAGE, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"


def chain(first: str, step: str, n: int) -> str:
    """``A0=Eval(expr=first)`` then ``n`` steps ``Ak=Eval(expr=step)`` with ``{P}`` the step before."""
    lines = [f'A0=Eval(expr="{first}")']
    lines += [f'A{k}=Eval(expr="{step.replace("{P}", f"{{A{k - 1}}}")}")' for k in range(1, n + 1)]
    return "\n".join([*lines, f"FINAL_RESULT=Result(var=A{n})"])


def run_bounded(program: str) -> StepError:
    """Run ``program``, which must fail: in under a second, and without large memory."""
    interpreter = Interpreter(fakes.registry())
    started = time.perf_counter()
    with pytest.raises(StepError) as info:
        interpreter.run(program, {})
    assert time.perf_counter() - started < 1.0
    tracemalloc.start()
    try:
        with pytest.raises(StepError):
            interpreter.run(program, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000_000
    return info.value


@pytest.mark.parametrize(
    ("first", "step", "fails_at", "says"),
    [
        ("3", "{P} * {P}", 14, "a number of more than 14,000 bits"),
        ("'ab'", "{P} + {P}", 19, "text is limited to 1,000,000"),
        ("'ab'", "'{P}{P}'", 19, "text is limited to 1,000,000"),
        ("[1]", "{P} + {P}", 20, "lists are limited to 1,000,000"),
        ("[1]", "[{P}, {P}]", 19, "counting those of the lists inside it; lists are limited to 1,000,000"),
        ("[[1, 2]]", "{P} * 2", 19, "counting those of the lists inside it; lists are limited to 1,000,000"),
    ],
)
def test_eval_growth_fails_at_the_step_that_crosses_the_bound(first: str, step: str, fails_at: int, says: str) -> None:
    error = run_bounded(chain(first, step, 30))
    assert f"(step A{fails_at})" in str(error)
    assert says in str(error)


def test_a_value_too_large_to_print_is_shown_shortened() -> None:
    assert describe_value(10**5000) == "int <int of about 5,001 digits>"
    shared = [1]
    for _ in range(64):  # 2**64 leaves: printing it whole would never end
        shared = [shared, shared]
    started = time.perf_counter()
    text = describe_value(shared)
    assert time.perf_counter() - started < 0.5
    assert text.startswith("list [[[[") and text.endswith("...") and len(text) <= 1_000
    long = describe_value(["x" * 100_000])
    assert long.startswith("list[str] ['xxx") and len(long) <= 1_000
    assert describe_value([1, "a", [2.5, None]]) == "list [1, 'a', [2.5, None]]"


@pytest.mark.parametrize("shape", ["1 if 1 else {E}", "({E}) if 1 else 2", "1 if ({E}) else 2"])
def test_nested_conditionals_are_nested_too_deeply(shape: str) -> None:
    expression = "1"
    for _ in range(500):
        expression = shape.replace("{E}", expression)
    with pytest.raises(EvalError, match="nested too deeply"):
        evaluate(expression, {})
    program = f'A=Eval(expr="{expression}")\nFINAL_RESULT=Result(var=A)'
    with pytest.raises(ProgramCheckError) as info:
        check(program, [], registry=fakes.registry())
    assert "expression is nested too deeply" in str(info.value)
    assert len(str(info.value)) < 2 * len(program) + 500  # the diagnostic, not a traceback


def test_fifty_megabytes_of_steps_are_refused_at_once() -> None:
    started = time.perf_counter()
    with pytest.raises(ProgramSyntaxError, match=r"programs are limited to 1,000,000 .*max_chars="):
        check("A=B\n" * 12_500_000, [], registry=fakes.registry())
    assert time.perf_counter() - started < 1.0


def test_too_many_steps_and_too_long_lines_are_refused_with_where_and_the_limit() -> None:
    many = "A=Eval(expr='1')\n" * (text_limits.MAX_STEPS + 1)
    with pytest.raises(ProgramSyntaxError) as info:
        check(many, [], registry=fakes.registry())
    [diagnostic] = info.value.diagnostics
    assert (diagnostic.line, diagnostic.column) == (text_limits.MAX_STEPS + 1, 1)
    assert "more than 10,000 steps" in diagnostic.message and "max_steps=" in diagnostic.message
    check(many + "FINAL_RESULT=Result(var=A)", [], registry=fakes.registry(), max_steps=20_000)

    wide = f"A=Eval(expr=\"'{'x' * 12_000}'\")\nFINAL_RESULT=Result(var=A)"
    with pytest.raises(ProgramSyntaxError) as info:
        check(wide, [], registry=fakes.registry())
    [diagnostic] = info.value.diagnostics
    assert (diagnostic.line, diagnostic.column) == (1, 10_001)
    assert "the line is 12,017 characters long; lines are limited to 10,000" in diagnostic.message
    assert len(str(info.value)) < 400  # the line is shown shortened
    check(wide, [], registry=fakes.registry(), max_line_length=20_000)


def test_a_huge_reply_is_refused_unread_and_never_sent_back() -> None:
    huge = "A=B\n" * 12_499_999 + "A=B"  # 50 MB
    backend = ScriptedLLM([huge, huge, huge])
    planner = Planner(backend, registry=fakes.registry(), cache=False, repair_rounds=2)
    started = time.perf_counter()
    with pytest.raises(PlanningError) as info:
        planner.plan("gqa", "How many dogs are there?")
    assert time.perf_counter() - started < 5.0
    assert "The reply is 49,999,999 bytes long; replies are limited to 1,000,000" in str(info.value)
    assert len(str(info.value)) < 10_000
    for request in backend.requests:  # what each request sent back is bounded, not doubled
        assert sum(len(m["content"]) for m in request) < 2 * MAX_FEEDBACK_CHARS + 50_000
    assert len(backend.requests) == 3


def test_the_reply_limit_is_a_planner_setting() -> None:
    reply = f"```\n{GOOD}\n```"
    planner = Planner(ScriptedLLM([reply]), registry=fakes.registry(), cache=False, max_reply_bytes=1_000)
    assert planner.plan("gqa", "How many dogs are there?").program == GOOD
    small = Planner(
        ScriptedLLM([reply, reply]), registry=fakes.registry(), cache=False, max_reply_bytes=20, repair_rounds=1
    )
    with pytest.raises(PlanningError, match="replies are limited to 20"):
        small.plan("gqa", "How many dogs are there?")
    with pytest.raises(ValueError, match="max_reply_bytes"):
        Planner(ScriptedLLM([]), registry=fakes.registry(), cache=False, max_reply_bytes=0)


def test_a_repair_round_sends_back_a_long_reply_shortened() -> None:
    long = GOOD.replace("Count(", "Counter(") + "\n" + "# chatter\n" * 5_000  # 50 KB, under the reply limit
    backend = ScriptedLLM([long, GOOD])
    planner = Planner(backend, registry=fakes.registry(), cache=False)
    assert planner.plan("gqa", "How many dogs are there?").program == GOOD
    sent_back = backend.requests[1][-2]["content"]
    assert sent_back.startswith(long[:1_000]) and len(sent_back) < MAX_FEEDBACK_CHARS + 100
    assert "more characters left out" in sent_back
