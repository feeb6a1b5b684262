"""Pulling the program out of a model's reply."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import fakes
from visprog.errors import Diagnostic, ProgramCheckError, ProgramSyntaxError
from visprog.language.parser import parse
from visprog.planner.extract import extract_candidates, extract_program, read_reply

PROGRAM = "BOX0=Loc(image=IMAGE, object='cat')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"


@pytest.mark.parametrize(
    "reply",
    [
        PROGRAM,
        f"{PROGRAM}\n",
        f"\n\n{PROGRAM}\n\n",
        f"```\n{PROGRAM}\n```",
        f"```python\n{PROGRAM}\n```",
        f"~~~visprog\n{PROGRAM}\n~~~",
        f"Sure! Here is the program:\n\n```python\n{PROGRAM}\n```\n\nIt counts the cats.",
        f"Here it is:\n```\nProgram:\n{PROGRAM}\n```",
        f"```\n{PROGRAM}",  # the closing fence never came (stop string, token limit)
        f"Program:\n{PROGRAM}",
        f"Program: {PROGRAM}",
        f"**Program:**\n{PROGRAM}",
        f"Here is the program you asked for.\n{PROGRAM}\nThis program counts the cats in the image.",
        f"Let me think.\n\n{PROGRAM}\n\nI hope this helps!",
        "  BOX0=Loc(image=IMAGE, object='cat')\n  ANSWER0=Count(box=BOX0)\n  FINAL_RESULT=Result(var=ANSWER0)",
    ],
)
def test_the_program_is_found(reply: str) -> None:
    assert extract_program(reply) == PROGRAM


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_windows_and_old_mac_line_endings_are_normalised(newline: str) -> None:
    reply = f"Here:{newline}```{newline}{PROGRAM}{newline}```{newline}Done."
    assert extract_program(reply.replace("\n", newline)) == PROGRAM
    assert extract_program(f"Program:{newline}{PROGRAM.replace(chr(10), newline)}{newline}Bye") == PROGRAM


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   \n\n ",
        "I cannot help with that.",
        "The answer is yes.\nThere are 2 cats.",
        "```\nno program here\n```",
        '{"choices": [ this is not json',
        "if a == b: print(a)",
    ],
)
def test_nothing_that_looks_like_a_program_gives_empty_text(reply: str) -> None:
    assert extract_program(reply) == ""


def test_not_a_string_gives_empty_text() -> None:
    assert extract_program(None) == ""  # type: ignore[arg-type]


def test_the_first_fenced_block_with_a_step_wins() -> None:
    reply = (
        "First the idea:\n```text\nfind the cat, then count\n```\n"
        f"Then the program:\n```python\n{PROGRAM}\n```\n"
        "Or this one:\n```\nFINAL_RESULT=Result(var=IMAGE)\n```"
    )
    assert extract_program(reply) == PROGRAM


def test_a_fenced_program_is_kept_whole_even_when_broken() -> None:
    broken = "BOX0=Loc(image=IMAGE, object='cat')\nthis line is wrong\nFINAL_RESULT=Result(var=BOX0)"
    assert extract_program(f"```\n{broken}\n```") == broken


def test_comments_and_blank_lines_inside_the_program_are_kept() -> None:
    program = "# find the cat\nBOX0=Loc(image=IMAGE, object='cat')\n\n# and count\nANSWER0=Count(box=BOX0)"
    assert extract_program(f"Program:\n{program}\n\nThat's all.") == program.split("\n", 1)[1]


def test_unfenced_chatter_ends_the_program() -> None:
    reply = f"{PROGRAM}\nNote: Count returns a number.\nEXTRA=Result(var=BOX0)"
    assert extract_program(reply) == PROGRAM


def test_the_extracted_program_parses() -> None:
    reply = f"Sure!\r\n```python\r\n{PROGRAM.replace(chr(10), chr(13) + chr(10))}\r\n```\r\nDone."
    program = parse(extract_program(reply))
    assert [step.target for step in program.steps] == ["BOX0", "ANSWER0", "FINAL_RESULT"]


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("BOX0=Loc(image=IMAGE)", "BOX0=Loc(image=IMAGE)"),
        ("  ANSWER0 = 'yes'", "ANSWER0 = 'yes'"),
        ("Program: X=1", "X=1"),
        ("ANSWER0 = 'unterminated", "ANSWER0 = 'unterminated"),  # broken, but a step: the parser says why
        ("X = # nothing yet", "X = # nothing yet"),
        ("a == b", ""),
        ("a ==b", ""),
        ("X =", ""),
        ("Here is the program:", ""),
        ("Answer: yes = no", ""),
        ("# BOX0=Loc(image=IMAGE)", ""),
    ],
)
def test_a_line_is_a_step_when_its_tokens_read_name_equals_something(line: str, kept: str) -> None:
    assert extract_program(line) == kept


def test_comments_between_steps_are_kept_and_chatter_after_them_dropped() -> None:
    reply = "BOX0=Loc(image=IMAGE, object='cat')\n   # count them\nANSWER0=Count(box=BOX0)\nThat is all.\nX=1"
    assert extract_program(reply) == "BOX0=Loc(image=IMAGE, object='cat')\n   # count them\nANSWER0=Count(box=BOX0)"


# --- the shapes chat models answer in ---------------------------------------------------------------

STEPS = PROGRAM.split("\n")


@pytest.mark.parametrize(
    "reply",
    [
        "\n".join(f"{i}. {s}" for i, s in enumerate(STEPS, 1)),
        "\n".join(f"{i}) {s}" for i, s in enumerate(STEPS, 1)),
        "\n".join(f"Step {i}: {s}" for i, s in enumerate(STEPS, 1)),
        "\n".join(f"- {s}" for s in STEPS),
        "\n".join(f"* {s}" for s in STEPS),
        "\n".join(f"`{s}`" for s in STEPS),
        "\n".join(f"{i}. `{s}` does step {i}" for i, s in enumerate(STEPS, 1)),
        "\n".join(f"{s};" for s in STEPS),
        "\n".join(f"- `{s};`" for s in STEPS),
    ],
)
def test_list_markers_backticks_and_semicolons_are_dropped(reply: str) -> None:
    assert extract_program(reply) == PROGRAM


@pytest.mark.parametrize(
    "reply",
    [
        '{"program": "' + PROGRAM.replace("\n", "\\n") + '"}',
        '```json\n{"program": "' + PROGRAM.replace("\n", "\\n") + '"}\n```',
        "[" + ", ".join(f'"{s}"' for s in STEPS) + "]",
        '{"steps": [' + ", ".join(f'"{s}"' for s in STEPS) + "]}",
        'Here:\n{\n  "steps": [' + ", ".join(f'"{s}"' for s in STEPS) + "]\n}\nThat is all.",
    ],
)
def test_a_json_reply_yields_its_program(reply: str) -> None:
    assert extract_program(reply) == PROGRAM


def test_json_without_steps_is_not_a_program() -> None:
    assert extract_program('{"answer": "yes"}') == ""
    assert extract_program("[1, 2, 3]") == ""


def test_a_call_over_several_lines_is_one_step() -> None:
    reply = (
        "BOX0=Loc(\n    image=IMAGE,  # the input\n    object='cat'\n)\n"
        "ANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"
    )
    assert extract_program(reply) == PROGRAM


def test_an_open_string_continues_on_the_next_line() -> None:
    reply = "ANSWER0=Vqa(image=IMAGE, question='What color is\n   the cat?')\nFINAL_RESULT=Result(var=ANSWER0)"
    assert extract_program(reply).split("\n")[0] == "ANSWER0=Vqa(image=IMAGE, question='What color is the cat?')"


def test_an_unclosed_call_does_not_swallow_the_next_step() -> None:
    reply = "BOX0=Loc(image=IMAGE, object='cat'\nANSWER0=Count(box=BOX0)"
    assert extract_program(reply) == reply


def test_typographic_quotes_and_invisible_characters_read_as_ascii() -> None:
    reply = "\ufeffBOX0\u200b=Loc\uff08image=IMAGE\uff0c\u00a0object=\u201ccat\u201d)\nANSWER0=Count(box=BOX0)"
    assert extract_program(reply) == 'BOX0=Loc(image=IMAGE, object="cat")\nANSWER0=Count(box=BOX0)'


def test_every_fenced_block_is_a_candidate_in_order() -> None:
    reply = f"```\nX=Loc(image=IMAGE)\n```\ntext\n```json\n[\"ANSWER0='yes'\"]\n```\n```\n{PROGRAM}\n```"
    assert [c.program for c in extract_candidates(reply)] == ["X=Loc(image=IMAGE)", "ANSWER0='yes'", PROGRAM]


def _check(program: str) -> str:
    parse(program)
    if "BOX9" in program:
        raise ProgramCheckError([Diagnostic(1, 1, "first"), Diagnostic(2, 1, "second")])
    if "BOX8" in program:
        raise ProgramCheckError([Diagnostic(1, 1, "only")])
    return program


def test_the_first_candidate_that_checks_wins() -> None:
    reply = "```\nA=Count(box=BOX9)\n```\n```\nB=Count(box=BOX0)\n```\n```\nC=Count(box=BOX0)\n```"
    reading = read_reply(reply, _check)
    assert (reading.program, reading.value, reading.error, reading.candidates) == (
        "B=Count(box=BOX0)",
        "B=Count(box=BOX0)",
        None,
        3,
    )
    assert reading.result() == "B=Count(box=BOX0)"


def test_when_none_checks_the_fewest_diagnostics_are_kept() -> None:
    reply = "```\nA=Count(box=BOX9)\n```\n```\nB=Count(box=BOX8)\n```"
    reading = read_reply(reply, _check)
    assert reading.program == "B=Count(box=BOX8)"
    assert reading.error is not None and reading.error.render() == "line 5, col 1: only\n  B=Count(box=BOX8)\n  ^"
    with pytest.raises(ProgramCheckError):
        reading.result()


def test_no_program_reads_as_empty() -> None:
    reading = read_reply("I cannot see the image.", _check)
    assert (reading.program, reading.value, reading.error, reading.candidates) == ("", None, None, 0)
    with pytest.raises(ValueError, match="no program"):
        reading.result()


def test_diagnostics_point_into_the_reply() -> None:
    reply = "Here:\n1. BOX0=Loc(image=IMAGE,\n      object='cat')\n2. ANSWER0=Count(box=BOX0 box=BOX0)\n"
    error = read_reply(reply, lambda p: parse(p)).error
    assert isinstance(error, ProgramSyntaxError)
    (d,) = error.diagnostics
    assert (d.line, d.column, d.source_line) == (4, 27, "2. ANSWER0=Count(box=BOX0 box=BOX0)")
    assert "missing ','" in d.message
    error = read_reply("Here:\n1. BOX0=Loc(image=IMAGE,\n      object=='cat')\n", lambda p: parse(p)).error
    assert error is not None
    (d,) = error.diagnostics
    assert (d.line, d.column, d.source_line) == (3, 14, "      object=='cat')")


def test_an_error_at_the_end_of_a_joined_step_points_to_its_last_line() -> None:
    reply = "BOX0=Loc(image=IMAGE,\n    object='cat'\nANSWER0=Count(box=BOX0)"
    error = read_reply(reply, lambda p: parse(p)).error
    assert error is not None
    assert error.messages == ["line 2, col 17: missing ')' at the end of the step"]


def test_a_look_alike_character_is_named_in_the_diagnostic() -> None:
    error = read_reply("X=Loc(image=IMAGE, object='cat\u2019)", lambda p: parse(p)).error
    assert error is not None
    assert error.messages == [
        "line 1, col 27: unterminated string: add the closing '"
        " (col 31 holds U+2019 RIGHT SINGLE QUOTATION MARK, not ')"
    ]
    error = read_reply("X=Count(box=B\u041eX)", lambda p: parse(p)).error
    assert error is not None and "(the character there is U+041E CYRILLIC CAPITAL LETTER O)" in error.messages[0]


def test_check_errors_name_no_character_of_the_line() -> None:
    reply = "ANSWER0=Vqa(image=IMAGE, question='Is it Disney\u2019s castle?', extra=1)"
    error = read_reply(reply, lambda p: fakes.check(p, registry=fakes.registry())).error
    assert error is not None
    assert "unknown argument 'extra'" in error.render()
    assert "U+2019" not in error.render()


_PIECES = st.sampled_from(
    [
        *"XAB=()[],'\"#;`-*1. \n\r{}:\\",
        "\u201c",
        "\u201d",
        "\u2018",
        "\u2019",
        "\u00a0",
        "\u200b",
        "\ufeff",
        "\uff08",
        "\uff09",
        "\uff0c",
        "\uff02",
        "```",
        "```json\n",
        "Loc",
        "Program:",
        '"program": ',
        '"steps": ',
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_any_reply_is_read_without_an_exception_and_maps_into_itself(reply: str) -> None:
    for candidate in extract_candidates(reply):
        assert len(candidate.origins) == len(candidate.program)
        assert all(0 <= i <= len(reply) for i in candidate.origins)
    reading = read_reply(reply, parse)
    if reading.error is not None:
        for d in reading.error.diagnostics:
            assert 1 <= d.line <= reply.count("\n") + reply.count("\r") + 1
