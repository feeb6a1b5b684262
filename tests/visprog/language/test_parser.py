from __future__ import annotations

import pytest

from visprog.errors import ProgramSyntaxError
from visprog.language import syntax
from visprog.language.parser import parse


def test_one_step_per_line_with_spaces_comments_blank_lines_and_trailing_commas() -> None:
    program = parse(
        "# a question about one image\n"
        "\n"
        "  BOX0 =  Loc ( image = IMAGE , object = 'wolf' , )   # trailing comment\n"
        "   # an indented comment\n"
        "ANSWER0=Count(box=BOX0)\r\n"
        "FINAL_RESULT=Result(var=ANSWER0)"
    )
    assert [s.target for s in program.steps] == ["BOX0", "ANSWER0", "FINAL_RESULT"]
    assert [s.line for s in program.steps] == [3, 5, 6]
    call = program.steps[0].call
    assert call is not None and call.module == "Loc"
    assert [a.name for a in call.args] == ["image", "object"]
    assert call.args[1].value == syntax.Literal("wolf", 3, 42)
    assert program.steps[0].source == "BOX0 =  Loc ( image = IMAGE , object = 'wolf' , )   # trailing comment"


def test_values() -> None:
    text = (
        "X=M(a=\"Is this Disney's castle?\", b='it\\'s', c=3, d=-2, e=2.5, f=-0.5e1, "
        "g=True, h=False, i=None, j=IMAGE, k=['x', 1, [2], BOX0,], l=[])\n"
    )
    program = parse(text)
    call = program.steps[0].call
    assert call is not None
    values = {a.name: a.value for a in call.args}
    literals = {k: v.value for k, v in values.items() if isinstance(v, syntax.Literal)}
    assert literals == {
        "a": "Is this Disney's castle?",
        "b": "it's",
        "c": 3,
        "d": -2,
        "e": 2.5,
        "f": -5.0,
        "g": True,
        "h": False,
        "i": None,
    }
    assert isinstance(literals["c"], int) and isinstance(literals["e"], float)
    assert values["j"] == syntax.Ref("IMAGE", 1, text.index("IMAGE") + 1)
    lst = values["k"]
    assert isinstance(lst, syntax.ListValue)
    assert [type(i).__name__ for i in lst.items] == ["Literal", "Literal", "ListValue", "Ref"]
    assert values["l"] == syntax.ListValue((), 1, values["l"].column)


def test_positional_arguments_are_recorded_as_written() -> None:
    """The parser keeps positional arguments unnamed; the checker binds them (test_checker.py)."""
    text = "X=Loc(IMAGE, 'dog', object=3, [1])"
    call = parse(text).steps[0].call
    assert call is not None
    assert call.args == (
        syntax.Arg("", syntax.Ref("IMAGE", 1, 7), 1, 7, positional=True),
        syntax.Arg("", syntax.Literal("dog", 1, 14), 1, 14, positional=True),
        syntax.Arg("object", syntax.Literal(3, 1, 28), 1, 21),
        syntax.Arg("", syntax.ListValue((syntax.Literal(1, 1, 32),), 1, 31), 1, 31, positional=True),
    )
    assert parse("R=Result(A)").steps[0].is_result


def test_bare_result_forms() -> None:
    program = parse("A=Vqa(image=IMAGE, question='q')\nRESULT=A\n")
    assert program.steps[1].expr == syntax.Ref("A", 2, 8)
    assert program.steps[1].is_result
    assert parse("FINAL_ANSWER=Result(var=A)").steps[0].is_result
    assert parse("FINAL_RESULT=RESULT(var=A)").steps[0].is_result
    assert not parse("X=A").steps[0].is_result


def test_empty_and_comment_only_programs_have_no_steps() -> None:
    assert parse("").steps == ()
    assert parse("\n  \n# nothing\n").steps == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("X=Loc(image=IMAGE", "line 1, col 18: missing ')' at the end of the step"),
        ("Loc(image=IMAGE)", "line 1, col 4: a step must assign its result: write NAME=Module(...)"),
        ("X=Loc(IMAGE 'dog')", "line 1, col 13: missing ',' before the string 'dog'"),
        ("X=List(query='a', max 6)", "line 1, col 23: expected '=' after the name, got '6'"),
        ("X=Loc(image=IMAGE object='dog')", "line 1, col 19: missing ',' before 'object'"),
        ("X=Loc(object='dog)", "line 1, col 14: unterminated string: add the closing '"),
        ("X=Loc(a=1) Y=2", "line 1, col 12: one step per line: put 'Y' on a new line"),
        ("Z=[1, 2", "line 1, col 8: missing ']' to close the list"),
    ],
)
def test_syntax_errors_say_where_and_what(text: str, message: str) -> None:
    with pytest.raises(ProgramSyntaxError) as info:
        parse(text)
    assert info.value.messages == [message]
    rendered = str(info.value)
    assert "lark" not in rendered.lower() and "Traceback" not in rendered
    # the caret sits under the reported column
    line, caret = rendered.splitlines()[1:3]
    assert caret.index("^") == info.value.column + 1
    assert line == "  " + text


def test_every_bad_line_is_reported() -> None:
    with pytest.raises(ProgramSyntaxError) as info:
        parse("A=Loc(image=IMAGE, object='dog')\nB=Foo(b=@)\nC=Count(box=A\nD=Result(var=C)\n")
    assert [(d.line, d.column) for d in info.value.diagnostics] == [(2, 9), (3, 14)]
    assert info.value.diagnostics[1].source_line == "C=Count(box=A"


def test_not_text_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse(b"X=1")  # type: ignore[arg-type]
