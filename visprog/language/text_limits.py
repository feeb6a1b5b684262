"""The bounds on a program's text, checked before it is read: its size, its number of steps, its lines' length.

A program is untrusted input (a model's reply, a pasted text, an HTTP request):
these bounds keep parsing and checking it a matter of milliseconds to seconds,
whatever it is. Each is a module-level default that :func:`visprog.language.parser.parse`
and :func:`visprog.language.checker.check` take as a keyword argument
(``max_chars=``, ``max_steps=``, ``max_line_length=``); assigning the constant here
changes the default for every caller.
"""

from __future__ import annotations

from collections.abc import Iterator

from visprog.errors import Diagnostic, ProgramSyntaxError

__all__ = ["MAX_CHARS", "MAX_LINE_LENGTH", "MAX_STEPS", "check_text_size"]

#: The most characters a program may have.
MAX_CHARS = 1_000_000
#: The most steps a program may have (lines that are neither blank nor only a comment).
MAX_STEPS = 10_000
#: The most characters one line of a program may have.
MAX_LINE_LENGTH = 10_000

# How much of a line too long to show is shown.
_SHOWN = 80


def _shown(line: str) -> str:
    return line if len(line) <= _SHOWN else line[:_SHOWN] + "..."


def check_text_size(
    text: str, *, max_chars: int | None = None, max_steps: int | None = None, max_line_length: int | None = None
) -> None:
    """Raise :class:`ProgramSyntaxError` when ``text`` is longer than ``max_chars``, has more than
    ``max_steps`` steps or a line longer than ``max_line_length`` (``None``: the module's default).

    Each check reads the text once and stops at the first line past its bound.
    """
    max_chars = MAX_CHARS if max_chars is None else max_chars
    max_steps = MAX_STEPS if max_steps is None else max_steps
    max_line_length = MAX_LINE_LENGTH if max_line_length is None else max_line_length
    if len(text) > max_chars:
        at = text.count("\n", 0, max_chars) + 1
        column = max_chars - (text.rfind("\n", 0, max_chars) + 1) + 1
        message = (
            f"the program is {len(text):,} characters long; programs are limited to {max_chars:,} "
            "(raise the limit with max_chars= or visprog.language.text_limits.MAX_CHARS)"
        )
        raise ProgramSyntaxError([Diagnostic(at, column, message)])
    lines = text.count("\n") + 1
    if lines <= max_steps and len(text) <= max_line_length:
        return  # the common case: nothing to look at line by line
    steps = 0
    for number, line in enumerate(_lines(text), start=1):
        if len(line) > max_line_length:
            message = (
                f"the line is {len(line):,} characters long; lines are limited to "
                f"{max_line_length:,} (raise the limit with max_line_length= or "
                f"visprog.language.text_limits.MAX_LINE_LENGTH): {_shown(line)!r}"
            )
            raise ProgramSyntaxError([Diagnostic(number, max_line_length + 1, message)])
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            steps += 1
            if steps > max_steps:
                message = (
                    f"the program has more than {max_steps:,} steps, from this line on "
                    "(raise the limit with max_steps= or visprog.language.text_limits.MAX_STEPS)"
                )
                raise ProgramSyntaxError([Diagnostic(number, 1, message, _shown(line))])


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` as :func:`visprog.language.syntax.split_lines` reads them, one at a time."""
    start = 0
    while True:
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        yield line[:-1] if line.endswith("\r") else line
        if end < 0:
            return
        start = end + 1
