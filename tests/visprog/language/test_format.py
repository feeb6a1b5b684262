"""The canonical form (``visprog fmt``): what it prints, that printing it again changes nothing,
and that the canonical program checks to the same meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fakes
from tests.fakes import check
from tests.visprog.language.test_properties import mutated_programs, step_programs
from visprog.errors import ProgramError, ProgramSyntaxError
from visprog.language import syntax
from visprog.language.checker import CheckedProgram
from visprog.language.format import format_program, format_step
from visprog.language.parser import parse
from visprog.planner.core import Plan

REGISTRY = fakes.registry()
OK = sorted((Path(__file__).resolve().parents[2] / "programs" / "ok").glob("*.vp"))
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def meaning(checked: CheckedProgram) -> list[Any]:
    """What a checked program means, positions and spelling aside: per step its target, module,
    arguments by name and type; the result step, the inputs and the checker's warnings (the parser's,
    about how the text was written, go: the canonical form writes it so)."""
    steps: list[Any] = []
    for s in checked.steps:
        call = s.step.call
        written = (
            sorted((a.name, syntax.written(a.value)) for a in call.args)
            if call is not None
            else syntax.written(s.step.expr)  # type: ignore[arg-type]
        )
        steps.append((s.step.target, s.module, written, s.type, sorted(s.sources.items(), key=str)))
    return [steps, checked.result, dict(checked.inputs), len(checked.warnings) - len(checked.program.warnings)]


def test_the_canonical_form() -> None:
    text = (
        "\n"
        "# Is there a wolf?\n"
        'BOX0 = LOC( object = "wolf", image=IMAGE, )   # find it\n'
        "\n"
        "\n"
        "   # count them\n"
        "N=Count(BOX0)\n"
        "A=Eval(\"'yes' if {N} > 0 else 'no'\")\n"
        "B=eval('{N} >= 2')\n"
        "Q=Vqa(IMAGE, 'Is this Disney\\'s castle?')\n"
        'X=[1, -2.5, "tab\\there", [True, None], 1e3]\n'
        "FINAL_RESULT=Result(A)\n"
        "\n"
    )
    assert format_program(text, REGISTRY) == (
        "# Is there a wolf?\n"
        "BOX0=Loc(image=IMAGE, object='wolf')  # find it\n"
        "\n"
        "# count them\n"
        "N=Count(box=BOX0)\n"
        "A=Eval(expr=\"'yes' if {N} > 0 else 'no'\")\n"
        "B=Eval(expr='{N} >= 2')\n"
        'Q=Vqa(image=IMAGE, question="Is this Disney\'s castle?")\n'
        "X=[1, -2.5, 'tab\\there', [True, None], 1000.0]\n"
        "FINAL_RESULT=Result(var=A)\n"
    )


def test_without_declarations_the_arguments_stay_as_written() -> None:
    assert format_program("B = LOC(IMAGE,object='wolf')\r\nR=Result(B)") == (
        "B=LOC(IMAGE, object='wolf')\nR=Result(B)\n"
    )


def test_a_checked_program_formats_with_its_declarations() -> None:
    checked = check("B=loc(object='dog', image=IMAGE)\nN=count(B)", registry=REGISTRY)
    assert format_program(checked) == "B=Loc(image=IMAGE, object='dog')\nN=Count(box=B)\n"


def test_calls_the_checker_refuses_keep_their_arguments() -> None:
    text = "B=Loc(IMAGE, 'dog', 3)\nC=Loc(image=IMAGE, 'cat')\nD=Nope(1, a=2)\n"
    assert format_program(text, REGISTRY) == "B=Loc(IMAGE, 'dog', 3)\nC=Loc(image=IMAGE, 'cat')\nD=Nope(1, a=2)\n"


def test_unknown_arguments_come_after_the_declared_ones() -> None:
    assert format_program("A=Vqa(answer='x', question='q', image=IMAGE)", REGISTRY) == (
        "A=Vqa(image=IMAGE, question='q', answer='x')\n"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("dog", "'dog'"),
        ("Disney's", '"Disney\'s"'),
        ("both ' and \"", "'both \\' and \"'"),
        ("a\\b\n\t\r\0", "'a\\\\b\\n\\t\\r\\0'"),
        (3, "3"),
        (-0.5, "-0.5"),
        (1e300, "1e+300"),
        (float("inf"), "1e999"),
        (True, "True"),
        (None, "None"),
    ],
)
def test_values_read_back_as_themselves(value: Any, text: str) -> None:
    literal = syntax.Literal(value, 1, 1)
    assert syntax.written(literal) == text
    step = parse(f"X={text}").steps[0]
    assert isinstance(step.expr, syntax.Literal) and step.expr.value == value


def test_empty_and_comment_only_programs() -> None:
    assert format_program("") == ""
    assert format_program("\n\n  \n") == ""
    assert format_program("\n  # only a comment  \n\n") == "# only a comment\n"


def test_a_program_built_by_hand_prints_its_steps() -> None:
    step = syntax.Step("X", syntax.Literal(1, 1, 3), 1, 1, "X=1")
    program = syntax.Program("", (step, step))
    assert format_program(program) == "X=1\nX=1\n"
    assert format_step(step) == "X=1"


def test_text_that_does_not_parse_is_a_syntax_error() -> None:
    with pytest.raises(ProgramSyntaxError):
        format_program("X=Loc(image=IMAGE")


@pytest.mark.parametrize("path", OK, ids=[p.stem for p in OK])
def test_golden_programs_keep_their_meaning(path: Path) -> None:
    text = path.read_bytes().decode("utf-8")
    canonical = format_program(text, REGISTRY)
    assert format_program(canonical, REGISTRY) == canonical
    assert meaning(check(canonical, registry=REGISTRY)) == meaning(check(text, registry=REGISTRY))
    assert format_program(check(text, registry=REGISTRY)) == canonical


# --------------------------------------------------------------------------- properties

_VALUES = st.sampled_from(["IMAGE", "BOX0", "'wolf'", '"it\'s"', "3", "-1.5", "[]", "['a', 'b']", "'{N} > 1'"])
_ARGS = st.lists(
    st.one_of(
        _VALUES, st.builds(lambda n, v: f"{n}={v}", st.sampled_from(["image", "box", "object", "expr"]), _VALUES)
    ),
    max_size=3,
)
positional_programs = st.lists(
    st.builds(
        lambda target, module, args, space: f"{target}{space}={module}({', '.join(args)})",
        st.sampled_from(["BOX0", "N", "IMAGE0", "FINAL_RESULT"]),
        st.sampled_from(["Loc", "Count", "Crop", "Eval", "Result", "FaceDet", "Nope"]),
        _ARGS,
        st.sampled_from(["", " "]),
    ),
    min_size=1,
    max_size=5,
).map("\n".join)


def _round_trip(text: str) -> None:
    try:
        parse(text)
    except ProgramError:
        return
    for registry in (None, REGISTRY):
        canonical = format_program(text, registry)
        assert format_program(canonical, registry) == canonical
    canonical = format_program(text, REGISTRY)
    try:
        checked = check(text, registry=REGISTRY)
    except ProgramError as e:
        with pytest.raises(type(e)):
            check(canonical, registry=REGISTRY)
        return
    assert meaning(check(canonical, registry=REGISTRY)) == meaning(checked)
    assert format_program(checked) == canonical


@SETTINGS
@given(st.one_of(step_programs, positional_programs))
def test_formatting_is_idempotent_and_keeps_the_meaning(text: str) -> None:
    _round_trip(text)


@SETTINGS
@given(mutated_programs())
def test_formatting_mutated_golden_programs(text: str) -> None:
    _round_trip(text)


def test_a_plan_shows_its_canonical_program() -> None:
    text = "BOX0=LOC(IMAGE, 'dog')\nN=COUNT(BOX0)"
    plan = Plan("gqa", "How many dogs?", text, check(text, registry=REGISTRY))
    assert plan.canonical == "BOX0=Loc(image=IMAGE, object='dog')\nN=Count(box=BOX0)\n"
