"""Pulling the program out of a model's reply."""

from __future__ import annotations

import pytest

from visprog.language.parser import parse
from visprog.planner.extract import extract_program

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
