"""Program text to :class:`visprog.language.syntax.Program`.

The grammar lives in ``grammar.lark`` (LALR). Lark's errors never reach the
user: they become :class:`~visprog.errors.ProgramSyntaxError` with the line,
the column, the source line with a caret and what was expected. When a
program has several bad lines, every one is reported.
"""

from __future__ import annotations

import re
from typing import Any

from lark import Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from visprog.errors import Diagnostic, ProgramSyntaxError
from visprog.language import syntax
from visprog.language.tokens import grammar, lexer

__all__ = ["MAX_LIST_DEPTH", "parse"]


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


def _number(text: str) -> int | float:
    if re.search(r"[.eE]", text):
        return float(text)
    try:
        return int(text)
    except ValueError:  # more digits than Python converts: as large as a float gets
        return float(text)


@v_args(inline=True)
class _ToAst(Transformer[Token, Any]):
    """One method per grammar rule; positions come from the tokens."""

    def __init__(self, lines: list[str], line_offset: int = 0) -> None:
        super().__init__()
        self._lines = lines
        self._offset = line_offset

    def _line(self, token: Token) -> int:
        return (token.line or 1) + self._offset

    def string(self, tok: Token) -> syntax.Literal:
        return syntax.Literal(_unquote(str(tok)), self._line(tok), tok.column or 1)

    def number(self, tok: Token) -> syntax.Literal:
        return syntax.Literal(_number(str(tok)), self._line(tok), tok.column or 1)

    def name(self, tok: Token) -> syntax.Literal | syntax.Ref:
        if str(tok) in syntax.CONSTANTS:
            return syntax.Literal(syntax.CONSTANTS[str(tok)], self._line(tok), tok.column or 1)
        return syntax.Ref(str(tok), self._line(tok), tok.column or 1)

    def list(self, bracket: Token, *items: syntax.Value | None) -> syntax.ListValue:
        values = tuple(i for i in items if i is not None)
        return syntax.ListValue(values, self._line(bracket), bracket.column or 1)

    def named_arg(self, name: Token, value: syntax.Value) -> syntax.Arg:
        return syntax.Arg(str(name), value, self._line(name), name.column or 1)

    def positional_arg(self, value: syntax.Value) -> syntax.Arg:
        return syntax.Arg("", value, value.line, value.column, positional=True)

    def call(self, name: Token, *args: syntax.Arg | None) -> syntax.Call:
        return syntax.Call(str(name), tuple(a for a in args if a is not None), self._line(name), name.column or 1)

    def _step(self, target: Token, expr: syntax.Call | syntax.Value) -> syntax.Step:
        line = self._line(target)
        return syntax.Step(str(target), expr, line, target.column or 1, self._lines[line - 1].strip())

    call_step = _step
    value_step = _step

    def program(self, *steps: syntax.Step) -> tuple[syntax.Step, ...]:
        return steps

    def line(self, *steps: syntax.Step) -> tuple[syntax.Step, ...]:
        return steps


_TERMINALS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "EQUAL": "'='",
    "COMMA": "','",
    "_NL": "the end of the line",
    "$END": "the end of the line",
}


def _describe(token: Token) -> str:
    if token.type in ("$END", "_NL"):
        return "the end of the line"
    if token.type == "STRING":
        return f"the string {token}"
    return f"'{token}'"


#: The tokens a value starts with.
_VALUE_STARTS = frozenset({"NAME", "STRING", "NUMBER", "LSQB"})


def _variable_before(text: str, line: int, col: int) -> bool:
    """Whether the name just before ``col`` is written like a variable (``IMAGE``, ``BOX0``), not
    like an argument's name (``max``)."""
    lines = syntax.split_lines(text)
    before = lines[line - 1][: col - 1] if 0 < line <= len(lines) else ""
    written = [t for t in lexer().line(before) if t.kind not in ("WS", "COMMENT")]
    return bool(written) and written[-1].kind == "NAME" and written[-1].text.isupper()


def _expected(names: set[str]) -> str:
    words = sorted({_TERMINALS.get(n, n) for n in names})
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _message(err: UnexpectedInput, text: str) -> tuple[int, int, str]:
    """(line, column, message) for one Lark error on one line of text."""
    line, col = err.line or 1, err.column or 1
    if isinstance(err, UnexpectedCharacters):
        lines = syntax.split_lines(text)
        src = lines[line - 1] if 0 < line <= len(lines) else ""
        ch = src[col - 1] if 0 < col <= len(src) else ""
        if ch == "\r":
            return line, col, "a carriage return inside a line: end lines with \\n or \\r\\n"
        if ch in "'\"":
            return line, col, f"unterminated string: add the closing {ch}"
        allowed = _expected(set(err.allowed or ()))
        return line, col, f"unexpected character '{ch}'" + (f", expected {allowed}" if allowed else "")
    if isinstance(err, UnexpectedToken):
        tok: Token = err.token
        expected: set[str] = set(err.expected)
        if tok.type in ("$END", "_NL"):
            lines = syntax.split_lines(text)
            src = lines[line - 1] if 0 < line <= len(lines) else ""
            line, col = line, len(src.rstrip()) + 1
            if "RPAR" in expected:
                return line, col, "missing ')' at the end of the step"
            if "RSQB" in expected:
                return line, col, "missing ']' to close the list"
        if expected == {"EQUAL"}:
            if tok.type == "LPAR":
                return line, col, "a step must assign its result: write NAME=Module(...)"
            return line, col, f"expected '=' after the name, got {_describe(tok)}"
        if tok.type == "NAME" and expected & {"_NL", "$END"}:
            return line, col, f"one step per line: put '{tok}' on a new line"
        if tok.type in _VALUE_STARTS and {"COMMA", "EQUAL"} <= expected and not _variable_before(text, line, col):
            # `max 6` after an argument's name: most likely `max=6`
            return line, col, f"expected '=' after the name, got {_describe(tok)}"
        if tok.type in _VALUE_STARTS and "COMMA" in expected:
            return line, col, f"missing ',' before {_describe(tok)}"
        if tok.type in ("$END", "_NL"):
            return line, col, f"unexpected end of the line, expected {_expected(expected)}"
        if tok.type == "EQUAL" and "RPAR" in expected:
            return line, col, "unexpected '=': an argument value must be a string, number, name or list"
        return line, col, f"unexpected {_describe(tok)}, expected {_expected(expected)}"
    if isinstance(err, UnexpectedEOF):
        return line, col, f"unexpected end of the program, expected {_expected(set(err.expected))}"
    return line, col, str(err).splitlines()[0]


def _parse_line(text: str, number: int, lines: list[str]) -> tuple[tuple[syntax.Step, ...], Diagnostic | None]:
    try:
        tree = grammar().parse(text, start="line")
    except UnexpectedInput as e:
        _, col, msg = _message(e, text)
        return (), Diagnostic(number, col, msg, text)
    return _ToAst(lines, number - 1).transform(tree), None


MAX_LIST_DEPTH = 32


_NESTING = {"LSQB": 1, "RSQB": -1}


def _too_deep(lines: list[str]) -> list[Diagnostic]:
    """Lists nested deeper than MAX_LIST_DEPTH (checked before parsing, which recurses)."""
    out = []
    for number, line in enumerate(lines, start=1):
        if line.count("[") <= MAX_LIST_DEPTH:
            continue  # too few brackets to nest that deep
        depth = 0
        for token in lexer().line(line, number):
            depth += _NESTING.get(token.kind, 0)
            if depth > MAX_LIST_DEPTH:
                out.append(Diagnostic(number, token.column, f"lists nested more than {MAX_LIST_DEPTH} deep", line))
                break
    return out


def parse(text: str) -> syntax.Program:
    """Parse a whole program. Raises :class:`ProgramSyntaxError` listing every bad line."""
    if not isinstance(text, str):
        raise TypeError(f"a program is text, got {type(text).__name__}")
    lines = syntax.split_lines(text)
    too_deep = _too_deep(lines)
    if too_deep:
        raise ProgramSyntaxError(too_deep)
    try:
        tree = grammar().parse(text + "\n", start="program")
    except UnexpectedInput as first:
        diagnostics = []
        for number, line in enumerate(lines, start=1):
            _, diag = _parse_line(line, number, lines)
            if diag is not None:
                diagnostics.append(diag)
        if not diagnostics:  # only fails as a whole: report Lark's position
            at, col, msg = _message(first, text)
            diagnostics.append(Diagnostic(at, col, msg, lines[min(at, len(lines)) - 1]))
        raise ProgramSyntaxError(diagnostics) from None
    steps = _ToAst(lines).transform(tree)
    return syntax.Program(text, tuple(steps))
