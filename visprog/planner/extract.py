"""Pull the program out of what a language model says.

Chat models wrap programs in Markdown fences, label them (``Program:``),
number or bullet their lines, put steps in single backticks, answer in JSON,
end steps with ``;``, split a call over several lines, type typographic
quotes, and talk before and after. :func:`extract_candidates` reads every
program a reply offers, in order, each as one step per line; what it keeps
goes to the parser, so a broken program still gets its diagnostics (and a
repair round). :func:`read_reply` checks the candidates in turn: the first
that checks wins; when none does, the one with the fewest diagnostics is kept,
its diagnostics pointing into the reply (line, column, source line) and naming
any look-alike or invisible character that caused them.

Steps are told from chatter with :mod:`visprog.language.tokens` (the
grammar's own terminals); the regular expressions here only read list
markers, labels and fences.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from visprog.errors import ProgramCheckError, ProgramError, ProgramSyntaxError
from visprog.language.normalize import explain, normalize
from visprog.language.tokens import ERROR, Token, lexer

__all__ = ["Extracted", "Reading", "extract_candidates", "extract_program", "read_reply"]

T = TypeVar("T")

#: A leading label such as ``Program:``, ``**Program:**`` or ``Program -``.
_LABEL = re.compile(r"^\s*(?:\*\*|__)?program(?:\*\*|__)?\s*[:\-]\s*(?:\*\*|__)?\s*", re.IGNORECASE)
#: A list marker: ``1.``, ``1)``, ``Step 1:``, ``-``, ``*``, ``+``, ``•``, followed by a space.
_MARKER = re.compile(r"^\s*(?:(?:step\s*)?\d{1,3}\s*[.):]|[-*+\u2022])\s+", re.IGNORECASE)
#: The opening line of a fenced block: three or more backticks or tildes, then any info string.
_FENCE_OPEN = re.compile(r"^\s*(`{3,}|~{3,})")
#: A JSON string token.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
#: The keys of a JSON object that hold the program.
_JSON_KEYS = ("program", "steps", "code")
#: The most lines one continued step may take.
_MAX_CONTINUATION = 40
_OPEN = {"LPAR": 1, "LSQB": 1, "RPAR": -1, "RSQB": -1}


@dataclass(frozen=True)
class _Line:
    """Text with, for each character, its index in the reply (``end``: where the line ends there)."""

    text: str
    origins: Sequence[int]
    end: int

    def cut(self, start: int, stop: int | None = None) -> _Line:
        stop = len(self.text) if stop is None else stop
        if start == 0 and stop == len(self.text):
            return self
        end = self.origins[stop] if stop < len(self.text) else self.end
        return _Line(self.text[start:stop], self.origins[start:stop], end)

    def strip(self) -> _Line:
        left = len(self.text) - len(self.text.lstrip())
        return self.cut(left, len(self.text.rstrip()))


def _join(a: _Line, sep: str, b: _Line) -> _Line:
    return _Line(a.text + sep + b.text, (*a.origins, *(a.end,) * len(sep), *b.origins), b.end)


@dataclass(frozen=True)
class Extracted:
    """One program found in a reply: its text, one step per line, and where each character came from."""

    program: str
    reply: str
    origins: tuple[int, ...]
    replaced: frozenset[int] = frozenset()

    def locate(self, error: ProgramError) -> ProgramError:
        """``error`` (about :attr:`program`) with each diagnostic pointing into the reply: line,
        column and source line there, and the look-alike or invisible character that caused it named."""
        syntax = isinstance(error, ProgramSyntaxError)
        moved = [
            explain(d, self.reply, self._index(d.line, d.column), self.replaced, whole_line=syntax)
            for d in error.diagnostics
        ]
        if isinstance(error, ProgramCheckError):
            return ProgramCheckError(moved, error.missing_inputs)
        return type(error)(moved)

    def _index(self, line: int, column: int) -> int:
        lines = self.program.split("\n")
        line = min(max(line, 1), len(lines))
        start = sum(len(t) + 1 for t in lines[: line - 1])
        text = lines[line - 1]
        at = max(column, 1) - 1
        if at < len(text):
            return self.origins[start + at]
        if text:
            return self.origins[start + len(text) - 1] + 1
        return self.origins[start] if start < len(self.origins) else len(self.reply)


@dataclass(frozen=True)
class Reading(Generic[T]):
    """What :func:`read_reply` made of a reply: the program kept (``""`` when there was none), and
    either what the check returned for it or its error (pointing into the reply)."""

    program: str
    value: T | None = None
    error: ProgramError | None = None
    candidates: int = 0

    def result(self) -> T:
        """The check's value; raises the error when the program did not check."""
        if self.error is not None:
            raise self.error
        if self.value is None:
            raise ValueError("the reply holds no program")
        return self.value


# --- lines of the reply ---------------------------------------------------------------------------


def _reply_lines(reply: str) -> list[_Line]:
    """The reply's lines (``\\r\\n``, ``\\r`` or ``\\n`` ends one), outside strings read as ASCII."""
    out = []
    start = 0
    for m in re.finditer(r"\r\n|\r|\n", reply):
        out.append(_normalized(reply[start : m.start()], range(start, m.start()), m.start()))
        start = m.end()
    out.append(_normalized(reply[start:], range(start, len(reply)), len(reply)))
    return out


def _normalized(text: str, origins: Sequence[int], end: int) -> _Line:
    if text.isascii():
        return _Line(text, origins, end)
    found = normalize(text)
    return _Line(found.text, tuple(origins[i] if i < len(origins) else end for i in found.origins), end)


def _tokens(text: str, limit: int | None = None) -> list[Token]:
    """The tokens of ``text`` in the language (the first ``limit``), whitespace left out."""
    tokens = (t for t in lexer().line(text.lstrip()) if t.kind != "WS")
    return list(tokens if limit is None else itertools.islice(tokens, limit))


def _is_step(text: str) -> bool:
    """``NAME = something`` (not ``NAME == ...``): a step, even a broken one."""
    if "=" not in text:
        return False
    tokens = _tokens(text, 3)
    if len(tokens) < 3 or tokens[0].kind != "NAME" or tokens[1].kind != "EQUAL":
        return False
    return not (tokens[2].kind == "EQUAL" and tokens[2].column == tokens[1].column + 1)


def _is_call_step(text: str) -> bool:
    """``NAME = NAME (``: a step that calls a module; never the continuation of an earlier line."""
    kinds = [t.kind for t in _tokens(text, 4)]
    return kinds == ["NAME", "EQUAL", "NAME", "LPAR"]


def _is_comment(text: str) -> bool:
    tokens = _tokens(text, 1)
    return bool(tokens) and tokens[0].kind == "COMMENT"


def _clean(line: _Line) -> _Line:
    """``line`` without its list marker, ``Program:`` label, single backticks around it or trailing ``;``."""
    m = _MARKER.match(line.text)
    if m:
        line = line.cut(m.end())
    m = _LABEL.match(line.text)
    if m:
        line = line.cut(m.end())
    stripped = line.text.lstrip()
    if stripped.startswith("`") and not stripped.startswith("```"):
        start = len(line.text) - len(stripped) + 1
        close = line.text.find("`", start)
        line = line.cut(start, close if close >= 0 else None)
    tokens = _tokens(line.text) if ";" in line.text else []
    while tokens and tokens[-1].kind == "COMMENT":
        tokens.pop()
    if tokens and tokens[-1].kind == ERROR and tokens[-1].text == ";":
        offset = len(line.text) - len(line.text.lstrip())
        at = offset + tokens[-1].column - 1
        line = _Line(line.text[:at] + line.text[at + 1 :], (*line.origins[:at], *line.origins[at + 1 :]), line.end)
    return line


def _openness(text: str) -> tuple[bool, int]:
    """Whether ``text`` ends inside a call, list or string, and where a trailing comment starts (-1: none)."""
    if text.count("(") == text.count(")") and text.count("[") == text.count("]") and "#" not in text:
        if text.count("'") % 2 == 0 and text.count('"') % 2 == 0:
            return False, -1  # balanced as written: closed (a bracket inside a string may fool this; the parser tells)
    depth = 0
    comment = -1
    for token in lexer().line(text):
        if token.kind == ERROR and token.text in "'\"":
            return True, -1
        if token.kind == "COMMENT":
            comment = token.column - 1
        depth += _OPEN.get(token.kind, 0)
    return depth > 0, comment


def _continued(lines: list[_Line]) -> list[tuple[_Line, bool]]:
    """``lines``, each with whether it is a step; a step that leaves a call, list or string open is
    joined with the lines that continue it (never a blank line, nor one that is a module call of its own)."""
    out: list[tuple[_Line, bool]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not _is_step(line.text):
            out.append((line, False))
            continue
        taken = 0
        while i < len(lines) and taken < _MAX_CONTINUATION:
            is_open, comment = _openness(line.text)
            if not is_open:
                break
            following = lines[i]
            if not following.text.strip() or _is_call_step(following.text) or following.text.lstrip().startswith("```"):
                break
            if comment >= 0:
                line = line.cut(0, comment)
            head, tail = line.cut(0, len(line.text.rstrip())), following.strip()
            sep = "" if head.text.endswith(("(", "[")) or tail.text.startswith((")", "]")) else " "
            line = _join(head, sep, tail)
            i += 1
            taken += 1
        out.append((line, True))
    return out


def _finish(lines: list[_Line], reply: str) -> Extracted:
    """The program of ``lines``: trailing blank lines dropped, lines right-stripped and dedented."""
    lines = [line.cut(0, len(line.text.rstrip())) for line in lines]
    while lines and not lines[-1].text:
        lines.pop()
    while lines and not lines[0].text:
        lines.pop(0)
    indents = [len(line.text) - len(line.text.lstrip()) for line in lines if line.text]
    margin = min(indents, default=0)
    if margin:
        lines = [line.cut(min(margin, len(line.text))) for line in lines]
    text = "\n".join(line.text for line in lines)
    origins: list[int] = []
    for k, line in enumerate(lines):
        if k:
            origins.append(lines[k - 1].end)
        origins.extend(line.origins)
    return Extracted(text, reply, tuple(origins))


def _from_first_step(lines: list[_Line]) -> list[_Line]:
    """``lines`` (cleaned and joined) from the first step, or [] when there is none."""
    joined = _continued([_clean(line) for line in lines])
    for i, (_, step) in enumerate(joined):
        if step:
            return [line for line, _ in joined[i:]]
    return []


def _runs(lines: list[_Line]) -> list[list[_Line]]:
    """Each run of steps, comments and blank lines, from a step on; chatter ends a run."""
    joined = _continued([_clean(line) for line in lines])
    runs: list[list[_Line]] = []
    current: list[_Line] = []
    for line, step in joined:
        if step:
            current.append(line)
        elif current and (not line.text.strip() or _is_comment(line.text)):
            current.append(line)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


# --- fenced blocks and JSON ------------------------------------------------------------------------


def _fenced_blocks(lines: list[_Line]) -> list[list[_Line]]:
    """The contents of each fenced block, in order; an unclosed fence runs to the end."""
    blocks: list[list[_Line]] = []
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i].text)
        if opening is None:
            i += 1
            continue
        fence = opening.group(1)
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[_Line] = []
        i += 1
        while i < len(lines) and not closing.match(lines[i].text):
            body.append(lines[i])
            i += 1
        blocks.append(body)
        i += 1  # past the closing fence
    return blocks


def _json_strings(reply: str, start: int, stop: int) -> list[_Line]:
    """Every JSON string between ``start`` and ``stop`` of the reply, decoded, with each
    character's index in the reply."""
    out = []
    for m in _JSON_STRING.finditer(reply, start, stop):
        chars: list[str] = []
        origins: list[int] = []
        i, end = m.start() + 1, m.end() - 1
        while i < end:
            ch = reply[i]
            if ch == "\\" and i + 1 < end:
                code = reply[i + 1]
                if code == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", reply[i + 2 : i + 6]):
                    chars.append(chr(int(reply[i + 2 : i + 6], 16)))
                    origins.append(i)
                    i += 6
                    continue
                chars.append(_JSON_ESCAPES.get(code, code))
                origins.append(i)
                i += 2
                continue
            chars.append(ch)
            origins.append(i)
            i += 1
        text = "".join(chars)
        if re.search(r"[\ud800-\udfff]", text):  # surrogate pairs: read as JSON reads them
            text = json.loads(m.group())
            origins = [m.start() + 1] * len(text)
        out.append(_Line(text, tuple(origins), m.end() - 1))
    return out


def _json_steps(value: Any) -> list[str] | None:
    """The steps a JSON value holds: a list of strings, or an object's ``program`` / ``steps`` / ``code``."""
    if isinstance(value, dict):
        for key in _JSON_KEYS:
            for k, v in value.items():
                if isinstance(k, str) and k.lower() == key:
                    return _json_steps(v)
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _json_program(reply: str, lines: list[_Line]) -> list[_Line] | None:
    """The program of a JSON value that starts on one of ``lines``, as lines of the reply; None when
    there is no such value or it holds no steps."""
    for line in lines:
        stripped = line.text.lstrip()
        if not stripped.startswith(("{", "[")):
            continue
        start = line.origins[len(line.text) - len(stripped)]
        try:
            value, stop = json.JSONDecoder().raw_decode(reply, start)
        except ValueError:
            return None
        steps = _json_steps(value)
        if not steps:
            return None
        strings = iter(_json_strings(reply, start, stop))
        out: list[_Line] = []
        for step in steps:
            found = next((s for s in strings if s.text == step), None)
            if found is None:
                return None
            pieces = found.text.split("\n")
            at = 0
            for piece in pieces:
                origins = found.origins[at : at + len(piece)]
                end = found.origins[at + len(piece)] if at + len(piece) < len(found.origins) else found.end
                out.append(_normalized(piece, origins, end))
                at += len(piece) + 1
        return out
    return None


# --- the public functions --------------------------------------------------------------------------


def extract_candidates(reply: str) -> list[Extracted]:
    """Every program ``reply`` offers, in order; ``[]`` when nothing in it looks like one. Never raises.

    - Each fenced block (any info string, closed or not) that holds a step,
      from its first step to its end, or that holds JSON with steps.
    - Else a JSON reply: ``{"program": "..."}``, a list of step strings, or
      ``{"steps": [...]}``.
    - Else each run of lines that look like steps (``NAME = something``),
      comments or blank lines, from a step on (after an optional
      ``Program:`` label); chatter before, between and after is dropped.

    In every case list markers (``1.``, ``1)``, ``-``, ``*``), single backticks
    around a step and a trailing ``;`` are dropped; a step that leaves a call,
    list or string open is joined with the lines that continue it; typographic
    quotes, no-break and zero-width spaces and full-width punctuation outside
    strings read as ASCII (:mod:`visprog.language.normalize`). Line endings
    become ``\\n``.
    """
    if not isinstance(reply, str) or not reply:
        return []
    lines = _reply_lines(reply)
    found: list[Extracted] = []
    for block in _fenced_blocks(lines):
        program = _json_program(reply, block[:1] if block else [])
        if program is not None:
            program = _from_first_step(program)
        else:
            program = _from_first_step(block)
        if program:
            found.append(_finish(program, reply))
    if found:
        return found
    program = _json_program(reply, lines)
    if program is not None and _from_first_step(program):
        return [_finish(_from_first_step(program), reply)]
    return [_finish(run, reply) for run in _runs(lines)]


def extract_program(reply: str) -> str:
    """The first program in ``reply`` (see :func:`extract_candidates`); ``""`` when there is none."""
    candidates = extract_candidates(reply)
    return candidates[0].program if candidates else ""


def read_reply(reply: str, check: Callable[[str], T]) -> Reading[T]:
    """The program of ``reply`` that ``check`` accepts: the first candidate that checks wins; when
    none does, the one with the fewest diagnostics is kept, with its error pointing into the reply.

    ``check`` takes a program's text and raises :class:`~visprog.errors.ProgramError` when it is wrong.
    """
    candidates: Sequence[Extracted] = extract_candidates(reply)
    best: tuple[Extracted, ProgramError] | None = None
    for candidate in candidates:
        try:
            value = check(candidate.program)
        except ProgramError as e:
            located = candidate.locate(e)
            if best is None or len(located.diagnostics) < len(best[1].diagnostics):
                best = (candidate, located)
        else:
            return Reading(candidate.program, value, None, len(candidates))
    if best is None:
        return Reading("", None, None, 0)
    return Reading(best[0].program, None, best[1], len(candidates))
