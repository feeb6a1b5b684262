"""Static checks of Eval expressions against the types of their variables."""

from __future__ import annotations

import pytest

from visprog.language.expr import parse_template
from visprog.language.expr_check import static_check
from visprog.language.values import Type

TYPES = {"BOX0": Type.OBJECTS, "N": Type.INT, "R": Type.FLOAT, "A": Type.STR, "IMAGE": Type.IMAGE, "L": Type.LIST_STR}


@pytest.mark.parametrize(
    ("text", "column", "expected"),
    [
        (
            "{BOX0} > 0",
            1,
            "{BOX0} holds objects, not a number (compared with a number using '>'): count them with Count(box=BOX0)",
        ),
        ("1 + BOX0", 5, "BOX0 holds objects, not a number (in '+'): count them with Count(box=BOX0)"),
        ("-{BOX0}", 2, "holds objects, not a number (in '-')"),
        ("{N} == {BOX0}", 8, "compared with a number using '=='"),
        ("{IMAGE} * 2", 1, "{IMAGE} is an image, not a number (in '*')"),
        ("{N} > 'many'", 5, "the text 'many' is compared with a number using '>'"),
        ("'cat' != {R}", 7, "the text 'cat' is never equal to a number: '!=' is always true"),
        ("{N} == 'cat'", 5, "'==' is always false"),
        ("len({L}) < 'x'", 10, "the text 'x' is compared with a number"),
        ("{N} == yes", 8, "unknown name 'yes': it is no variable; write text in quotes ('yes')"),
        ("'a' if {A} else {N} + (1 + {BOX0})", 28, "holds objects"),
    ],
)
def test_problems_name_what_and_where(text: str, column: int, expected: str) -> None:
    problems = static_check(parse_template(text), TYPES)
    assert len(problems) == 1, problems
    assert problems[0].column == column
    assert expected in (problems[0].detail or "")
    assert f"column {column}" in str(problems[0])


@pytest.mark.parametrize(
    "text",
    [
        "len({BOX0}) > 0",
        "{A} > 2",  # an answer may read as a number at run time
        "{N} == 'two'",  # text that reads as a number
        "{N} == 'yes'",
        "{A} == 'cat'",
        "'x' * {N}",
        "{BOX0} and {N} > 1",
        "N + R > 1 and A in L",
        "{UNKNOWN} > 0",  # placeholders without a value are the checker's own report
        "{BOX0}[0]",
    ],
)
def test_sound_expressions_have_no_problems(text: str) -> None:
    assert static_check(parse_template(text), TYPES) == []


def test_problems_come_in_column_order() -> None:
    problems = static_check(parse_template("x + {BOX0} > 'many'"), TYPES)
    assert [p.column for p in problems] == sorted(p.column for p in problems)
    assert len(problems) == 2


def test_bare_names_assigned_elsewhere_are_left_to_the_caller() -> None:
    expression = parse_template("ANSWER0 and ANSWER2 and yes")
    problems = static_check(expression, {"ANSWER0": Type.STR}, elsewhere={"ANSWER2", "IMAGE"})
    assert [p.detail for p in problems] == [
        "unknown name 'yes': it is no variable; write text in quotes ('yes') and variables in braces ({yes})"
    ]
    assert problems[0].column == 25
