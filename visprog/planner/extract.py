"""Pull the program out of what a language model says.

Chat models wrap programs in Markdown fences, label them ("Program:"), and
talk before and after them. :func:`extract_program` keeps the program and
drops the rest; what it keeps goes to the parser unchanged otherwise, so a
broken program still gets its diagnostics (and a repair round).
"""

from __future__ import annotations

import itertools
import re
import textwrap

from visprog.language.tokens import Token, lexer

__all__ = ["extract_program"]

#: A leading label such as ``Program:``, ``**Program:**`` or ``Program -``.
_LABEL = re.compile(r"^\s*(?:\*\*|__)?program(?:\*\*|__)?\s*[:\-]\s*(?:\*\*|__)?\s*", re.IGNORECASE)
#: The opening line of a fenced block: three or more backticks or tildes, then any info string.
_FENCE_OPEN = re.compile(r"^\s*(`{3,}|~{3,})")


def _tokens(line: str, limit: int) -> list[Token]:
    """The first ``limit`` tokens of ``line`` in the language, whitespace left out (their
    columns still tell which tokens touch)."""
    return list(itertools.islice((t for t in lexer().line(line.lstrip()) if t.kind != "WS"), limit))


def _is_step(line: str) -> bool:
    """``NAME = something`` (not ``NAME == ...``): a step, even a broken one."""
    tokens = _tokens(line, 3)
    if len(tokens) < 3 or tokens[0].kind != "NAME" or tokens[1].kind != "EQUAL":
        return False
    return not (tokens[2].kind == "EQUAL" and tokens[2].column == tokens[1].column + 1)


def _is_comment(line: str) -> bool:
    """Whether ``line`` is a comment of the language (``# ...``), indented or not."""
    tokens = _tokens(line, 1)
    return bool(tokens) and tokens[0].kind == "COMMENT"


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
        if _is_step(unlabelled):
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
        if line.strip() and not _is_step(line) and not _is_comment(line):
            break
        kept.append(line)
    return _finish(kept)
