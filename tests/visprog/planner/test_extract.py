"""Pulling the program out of a model's reply."""

from __future__ import annotations

import pytest

from visprog.language.parser import parse
from visprog.planner.extract import extract_program, looks_like_step

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


def test_looks_like_step() -> None:
    assert looks_like_step("BOX0=Loc(image=IMAGE)")
    assert looks_like_step("  ANSWER0 = 'yes'")
    assert looks_like_step("Program: X=1")
    assert not looks_like_step("a == b")
    assert not looks_like_step("Here is the program:")
    assert not looks_like_step("# BOX0=Loc(image=IMAGE)")
