"""Pull the program out of what a language model says.

Chat models wrap programs in Markdown fences, label them ("Program:"), and
talk before and after them. :func:`extract_program` keeps the program and
drops the rest; what it keeps goes to the parser unchanged otherwise, so a
broken program still gets its diagnostics (and a repair round).
"""

from __future__ import annotations

import re
import textwrap

__all__ = ["extract_program", "looks_like_step"]

#: ``NAME = something`` (not ``==``): a step, even a broken one.
_STEP = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=(?!=)\s*\S")
_COMMENT = re.compile(r"^\s*#")
#: A leading label such as ``Program:``, ``**Program:**`` or ``Program -``.
_LABEL = re.compile(r"^\s*(?:\*\*|__)?program(?:\*\*|__)?\s*[:\-]\s*(?:\*\*|__)?\s*", re.IGNORECASE)
#: The opening line of a fenced block: three or more backticks or tildes, then any info string.
_FENCE_OPEN = re.compile(r"^\s*(`{3,}|~{3,})")


def looks_like_step(line: str) -> bool:
    """Whether ``line`` looks like a step (``NAME = something``), label or not."""
    return bool(_STEP.match(_LABEL.sub("", line, count=1)))


def _fenced_blocks(lines: list[str]) -> list[list[str]]:
    """The contents of each fenced block, in order; an unclosed fence runs to the end."""
    blocks: list[list[str]] = []
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening.group(1)
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append(body)
        i += 1  # past the closing fence
    return blocks


def _from_first_step(lines: list[str]) -> list[str]:
    """``lines`` from the first step-looking one (its label dropped), or [] when there is none."""
    for i, line in enumerate(lines):
        unlabelled = _LABEL.sub("", line, count=1)
        if _STEP.match(unlabelled):
            return [unlabelled, *lines[i + 1 :]]
    return []


def _finish(lines: list[str]) -> str:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return textwrap.dedent("\n".join(line.rstrip() for line in lines)).strip("\n")


def extract_program(reply: str) -> str:
    """The program in ``reply``; ``""`` when nothing in it looks like a program. Never raises.

    - The first fenced block (any info string, closed or not) that holds a
      step, from its first step to its end.
    - Else, after an optional ``Program:`` label, the contiguous run of lines
      that look like steps (``NAME = something``), comments or blank lines,
      starting at the first step-looking line; chatter before and after is
      dropped.

    Line endings are normalised to ``\\n``.
    """
    if not isinstance(reply, str) or not reply:
        return ""
    text = reply.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    for block in _fenced_blocks(lines):
        program = _from_first_step(block)
        if program:
            return _finish(program)
    run = _from_first_step(lines)
    if not run:
        return ""
    kept = run[:1]
    for line in run[1:]:
        if line.strip() and not _STEP.match(line) and not _COMMENT.match(line):
            break
        kept.append(line)
    return _finish(kept)
