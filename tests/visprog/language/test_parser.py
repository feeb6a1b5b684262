from __future__ import annotations

import time

import pytest

from visprog.errors import ProgramSyntaxError
from visprog.language import parser, syntax
from visprog.language.format import format_program
from visprog.language.parser import MAX_APOSTROPHES, parse


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


# --- an apostrophe that ends a single-quoted string early ----------------------------------------


def test_an_apostrophe_between_letters_is_read_as_part_of_the_string_with_a_warning() -> None:
    text = "A=Vqa(image=IMAGE, question='Is this Disney's castle?')\nR=Result(var=A)"
    program = parse(text)
    call = program.steps[0].call
    assert call is not None
    assert call.args[1].value == syntax.Literal("Is this Disney's castle?", 1, 29)
    assert program.steps[0].source == "A=Vqa(image=IMAGE, question='Is this Disney's castle?')"
    assert program.source == text
    [warning] = program.warnings
    assert (warning.line, warning.column) == (1, text.index("'s") + 1)
    assert warning.message == (
        "read 'Is this Disney's castle?' as one string (as written, it ends at the apostrophe in \"Disney's\"): "
        "write 'Is this Disney\\'s castle?' or \"Is this Disney's castle?\""
    )
    assert warning.source_line == text.splitlines()[0]
    # columns after the apostrophe point into the text as written
    assert parse("A=F(x='it's', y=B)").steps[0].expr == syntax.Call(
        "F",
        (
            syntax.Arg("x", syntax.Literal("it's", 1, 7), 1, 5),
            syntax.Arg("y", syntax.Ref("B", 1, 17), 1, 15),
        ),
        1,
        3,
    )


def test_each_string_ended_early_gets_one_warning() -> None:
    program = parse("A=F(q='Bob's and Ann's dog', x='it's')\nB=F(q='fine')\n")
    call = program.steps[0].call
    assert call is not None
    assert [a.value for a in call.args] == [
        syntax.Literal("Bob's and Ann's dog", 1, 7),
        syntax.Literal("it's", 1, 32),
    ]
    assert [(w.line, w.column) for w in program.warnings] == [(1, 11), (1, 35)]
    assert program.warnings[0].message.startswith("read 'Bob's and Ann's dog' as one string")


def test_apostrophes_that_need_no_reading_give_no_warning() -> None:
    program = parse("A=F(q=\"Bob's\", r='it\\'s')  # Bob's\n")
    assert not program.warnings
    call = program.steps[0].call
    assert call is not None
    assert [a.value for a in call.args] == [syntax.Literal("Bob's", 1, 7), syntax.Literal("it's", 1, 18)]


def test_an_apostrophe_on_a_line_that_does_not_parse_either_way_is_explained() -> None:
    with pytest.raises(ProgramSyntaxError) as info:
        parse("A=Vqa(image=IMAGE question='Is this Disney's castle?')")
    assert info.value.messages == [
        "line 1, col 19: missing ',' before 'question'",
        "line 1, col 43: the string 'Is this Disney' ends early, at the apostrophe in \"Disney's\": "
        "write 'Is this Disney\\'s castle?' or \"Is this Disney's castle?\"",
    ]
    with pytest.raises(ProgramSyntaxError) as info:
        parse("A=Vqa(question='the wolf's color)")
    assert info.value.messages == [
        "line 1, col 16: unterminated string: add the closing '",
        "line 1, col 25: the string 'the wolf' ends early, at the apostrophe in \"wolf's\": "
        "write \\' for an apostrophe inside a string, or use double quotes",
    ]


def test_reading_apostrophes_is_bounded() -> None:
    """At most MAX_APOSTROPHES a line, each one lexing of the line: a long line stays fast."""
    many = "A=F(q='" + "x'y " * (MAX_APOSTROPHES + 1) + "')"
    with pytest.raises(ProgramSyntaxError):
        parse(many)
    enough = "A=F(q='" + "x'y " * MAX_APOSTROPHES + "')"
    assert len(parse(enough).warnings) == 1
    long = "A=F(q='" + "x'y " * 20_000 + "')\n" * 3
    started = time.perf_counter()
    with pytest.raises(ProgramSyntaxError):
        parse(long)
    assert time.perf_counter() - started < 2


# --- look-alike and invisible characters ---------------------------------------------------------


def test_typographic_quotes_and_full_width_punctuation_read_as_ascii() -> None:
    text = (
        "\ufeffA\uff1dVqa\uff08image\uff1dIMAGE\uff0c\u00a0question\uff1d\u201cIs it Bob\u2019s?\u201d\uff09\n"
        "R=Result(var=A)"
    )
    program = parse(text)
    assert program.source == text
    step = program.steps[0]
    assert step.source == text.splitlines()[0].strip()
    assert (step.line, step.column) == (1, 2)  # after the byte order mark
    call = step.call
    assert call is not None and (call.line, call.column) == (1, 4)
    assert call.args == (
        syntax.Arg("image", syntax.Ref("IMAGE", 1, 14), 1, 8),
        syntax.Arg("question", syntax.Literal("Is it Bob\u2019s?", 1, 30), 1, 21),
    )
    assert not program.warnings
    assert format_program(program) == "A=Vqa(image=IMAGE, question='Is it Bob\u2019s?')\nR=Result(var=A)\n"


def test_a_diagnostic_caused_by_a_look_alike_names_it_where_it_was_written() -> None:
    with pytest.raises(ProgramSyntaxError) as info:
        parse("A\u00a0=\u00a0Loc(image=IMAGE, object=\u201cdog)\n")
    [d] = info.value.diagnostics
    assert (d.line, d.column) == (1, 29)
    assert d.source_line == "A\u00a0=\u00a0Loc(image=IMAGE, object=\u201cdog)"
    assert d.message.endswith("(the character there is U+201C LEFT DOUBLE QUOTATION MARK)")
    with pytest.raises(ProgramSyntaxError) as info:
        parse("A\uff1d1\nB=Count(box=B\u041eX)")
    assert info.value.messages == [
        "line 2, col 14: unexpected character '\u041e', expected ')', ',' or ']' "
        "(the character there is U+041E CYRILLIC CAPITAL LETTER O)"
    ]


def test_an_apostrophe_after_a_look_alike_maps_to_the_text_as_written() -> None:
    program = parse("A=F(q=\u201cx\u201d,\u200br='it's')")
    [warning] = program.warnings
    assert (warning.line, warning.column) == (1, 17)
    assert warning.source_line == "A=F(q=\u201cx\u201d,\u200br='it's')"


def test_ascii_text_is_not_normalized(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(text: str) -> None:
        raise AssertionError("normalize called on ASCII text")

    monkeypatch.setattr(parser, "normalize", fail)
    assert len(parse("A=Loc(image=IMAGE, object='dog')\nR=Result(var=A)").steps) == 2
