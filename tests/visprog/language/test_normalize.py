"""Look-alike and invisible characters read as ASCII outside strings."""

from __future__ import annotations

import pytest

from visprog.errors import Diagnostic
from visprog.language.normalize import describe, explain, lookalike_note, normalize


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ("X=Loc(image=IMAGE)", "X=Loc(image=IMAGE)"),
        ("X=\u201ccat\u201d", 'X="cat"'),
        ("X=\u2018cat\u2019", "X='cat'"),
        ("X=\u201edog\u201c", 'X="dog"'),
        ("X=\u2018Disney\u2019s castle\u2019", "X='Disney\u2019s castle'"),
        ("X=\u2018it's\u2019", 'X="it\'s"'),
        ('X=\u201cit\'s "this"\u201d', "X='it\\'s \"this\"'"),
        ("X\u00a0=\u202f1", "X = 1"),
        ("\ufeffX\u200b=\u200d1\u2060", "X=1"),
        ("X=Loc\uff08image\uff1dIMAGE\uff0c object\uff1a1\uff09", "X=Loc(image=IMAGE, object:1)"),
        ("X=\uff02cat\uff02", 'X="cat"'),
        ("X='\u201ckept\u201d\u00a0as\u200bis\uff0c'", "X='\u201ckept\u201d\u00a0as\u200bis\uff0c'"),
        ('X="a\\"\u00a0b"', 'X="a\\"\u00a0b"'),
        ("X=\u2019cat", "X=\u2019cat"),  # unpaired: left for the parser to report
        ("A=\u201c1\u201d\r\nB=\u00a02", 'A="1"\r\nB= 2'),
    ],
)
def test_outside_strings_look_alikes_read_as_ascii(text: str, read: str) -> None:
    assert normalize(text).text == read


def test_every_character_knows_where_it_came_from() -> None:
    text = "\ufeffA\u200b=\u201cx\u201d\nB=1"
    found = normalize(text)
    assert found.text == 'A="x"\nB=1'
    assert [text[i] for i in found.origins] == ["A", "=", "\u201c", "x", "\u201d", "\n", "B", "=", "1"]
    assert found.locate(1, 2, text) == (1, 4)
    assert found.locate(2, 3, text) == (2, 3)
    assert [r.describe() for r in found.replacements] == [
        "U+FEFF ZERO WIDTH NO-BREAK SPACE dropped",
        "U+200B ZERO WIDTH SPACE dropped",
        "U+201C LEFT DOUBLE QUOTATION MARK read as '\"'",
        "U+201D RIGHT DOUBLE QUOTATION MARK read as '\"'",
    ]
    assert (found.replacements[2].line, found.replacements[2].column) == (1, 5)


def test_describe_names_a_character_by_code_point_and_name() -> None:
    assert describe("\u201c") == "U+201C LEFT DOUBLE QUOTATION MARK"
    assert describe("\u00a0") == "U+00A0 NO-BREAK SPACE"


def test_a_diagnostic_names_the_character_that_caused_it() -> None:
    text = "X=Count(box=B\u041eX)"
    note = lookalike_note(text, 13)
    assert note == "the character there is U+041E CYRILLIC CAPITAL LETTER O"
    line = "X=Loc(object='cat\u2019)"
    assert lookalike_note(line, 13) == "col 18 holds U+2019 RIGHT SINGLE QUOTATION MARK, not '"
    assert lookalike_note(line, 13, whole_line=False) == ""
    assert lookalike_note("X=\u200bY Z", 5) == "col 3 holds the invisible U+200B ZERO WIDTH SPACE"
    assert lookalike_note("X=1", 1) == ""


def test_explain_moves_a_diagnostic_to_the_original_text() -> None:
    text = "X=Loc\uff08image=IMAGE\n"
    found = normalize(text)
    moved = found.explain(Diagnostic(1, 6, "unexpected '('", found.text.split("\n")[0]), text)
    assert (moved.line, moved.column, moved.source_line) == (1, 6, "X=Loc\uff08image=IMAGE")
    assert moved.message == "unexpected '(' (the character there is U+FF08 FULLWIDTH LEFT PARENTHESIS, read as '(')"
    assert explain(Diagnostic(1, 1, "m"), "a\nbc", 3).render() == "line 2, col 2: m\n  bc\n   ^"


def test_explaining_again_replaces_the_note_instead_of_adding_one() -> None:
    """The parser names a look-alike in the program; the planner explains the same diagnostic again
    about the reply the program came from: the note is said once, about the reply."""
    program = "X=Loc\uff08image=IMAGE"
    found = normalize(program)
    first = found.explain(Diagnostic(1, 6, "unexpected '('"), program)
    reply = "1. " + program
    again = explain(first, reply, 8, {8})
    assert again.message == "unexpected '(' (the character there is U+FF08 FULLWIDTH LEFT PARENTHESIS, read as '(')"
    assert (again.line, again.column) == (1, 9)
    line = explain(Diagnostic(1, 1, "bad (col 5 holds the invisible U+200B ZERO WIDTH SPACE)"), "X=\u200bY", 0)
    assert line.message == "bad (col 3 holds the invisible U+200B ZERO WIDTH SPACE)"
    kept = explain(Diagnostic(1, 1, "bad (the character there is U+200B ZERO WIDTH SPACE)"), "X=1", 0)
    assert kept.message == "bad (the character there is U+200B ZERO WIDTH SPACE)"  # no new note: kept as it was
