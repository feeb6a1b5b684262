"""Program text to :class:`visprog.language.syntax.Program`.

The grammar lives in ``grammar.lark`` (LALR). Lark's errors never reach the
user: they become :class:`~visprog.errors.ProgramSyntaxError` with the line,
the column, the source line with a caret and what was expected. When a
program has several bad lines, every one is reported.

Text as people paste it is read as they meant it:

- Outside strings, typographic quotes, no-break and zero-width spaces, a byte
  order mark and full-width punctuation read as ASCII
  (:func:`visprog.language.normalize.normalize`; only text with a non-ASCII
  character is looked at). Lines, columns and source lines, in diagnostics and
  in the parsed program, point into the text as written, and a diagnostic
  caused by such a character names it (``U+201C LEFT DOUBLE QUOTATION MARK``).
- An apostrophe between letters that ends a single-quoted string early
  (``'Is this Disney's castle?'``) is read as part of the string when that is
  the reading that parses, with a warning (:attr:`~visprog.language.syntax.Program.warnings`);
  when the line does not parse either way, the diagnostic says where the
  string ends and gives both fixes (``\\'`` or the other quote).

``Program.source`` is the text as written.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

from lark import Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from visprog.errors import Diagnostic, ProgramSyntaxError
from visprog.language import syntax
from visprog.language.normalize import Normalized, explain, normalize
from visprog.language.text_limits import check_text_size
from visprog.language.tokens import grammar, lexer

__all__ = ["MAX_APOSTROPHES", "MAX_LIST_DEPTH", "parse"]


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

    def __init__(self, lines: list[str], line_offset: int = 0, where: _Where | None = None) -> None:
        super().__init__()
        self._lines = lines
        self._offset = line_offset
        self._where = where

    def _line(self, token: Token) -> int:
        return (token.line or 1) + self._offset

    def _column(self, token: Token) -> int:
        if self._where is None:
            return token.column or 1
        return self._where.column(self._line(token), token.column or 1)

    def string(self, tok: Token) -> syntax.Literal:
        return syntax.Literal(_unquote(str(tok)), self._line(tok), self._column(tok))

    def number(self, tok: Token) -> syntax.Literal:
        return syntax.Literal(_number(str(tok)), self._line(tok), self._column(tok))

    def name(self, tok: Token) -> syntax.Literal | syntax.Ref:
        if str(tok) in syntax.CONSTANTS:
            return syntax.Literal(syntax.CONSTANTS[str(tok)], self._line(tok), self._column(tok))
        return syntax.Ref(str(tok), self._line(tok), self._column(tok))

    def list(self, bracket: Token, *items: syntax.Value | None) -> syntax.ListValue:
        values = tuple(i for i in items if i is not None)
        return syntax.ListValue(values, self._line(bracket), self._column(bracket))

    def named_arg(self, name: Token, value: syntax.Value) -> syntax.Arg:
        return syntax.Arg(str(name), value, self._line(name), self._column(name))

    def positional_arg(self, value: syntax.Value) -> syntax.Arg:
        return syntax.Arg("", value, value.line, value.column, positional=True)

    def call(self, name: Token, *args: syntax.Arg | None) -> syntax.Call:
        return syntax.Call(str(name), tuple(a for a in args if a is not None), self._line(name), self._column(name))

    def _step(self, target: Token, expr: syntax.Call | syntax.Value) -> syntax.Step:
        line = self._line(target)
        return syntax.Step(str(target), expr, line, self._column(target), self._lines[line - 1].strip())

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


class _Where:
    """Where the characters of the text as parsed are in the text as written: the text was read as
    ASCII (``normalized``), and backslashes were added before apostrophes (``added``, per line the
    0-based indexes of the backslashes in the line as parsed)."""

    def __init__(self, original: str, normalized: Normalized | None) -> None:
        self.original = original
        self.normalized = normalized
        self.added: dict[int, list[int]] = {}
        self._starts: list[int] = []  # where each line starts in the normalized text
        self._original_starts: list[int] = []  # ... and in the original
        self._replaced: frozenset[int] = frozenset()
        if normalized is not None:
            self._starts = [0, *(m.end() for m in re.finditer("\n", normalized.text))]
            self._original_starts = [0, *(m.end() for m in re.finditer("\n", original))]
            self._replaced = frozenset(r.index for r in normalized.replacements)

    def _unescaped(self, line: int, column: int) -> int:
        """The 1-based column in the normalized line of ``column`` of the line as parsed."""
        added = self.added.get(line)
        return column - bisect.bisect_left(added, column - 1) if added else column

    def index(self, line: int, column: int) -> int:
        """The 0-based index in the original text of ``line``, ``column`` of the text as parsed."""
        column = self._unescaped(line, column)
        if self.normalized is None:
            starts = self._original_starts or [0, *(m.end() for m in re.finditer("\n", self.original))]
            self._original_starts = starts
            start = starts[min(max(line, 1), len(starts)) - 1]
            stop = self.original.find("\n", start)
            stop = len(self.original) if stop < 0 else stop
            return min(start + max(column, 1) - 1, stop)
        text, origins = self.normalized.text, self.normalized.origins
        start = self._starts[min(max(line, 1), len(self._starts)) - 1]
        stop = text.find("\n", start)
        stop = len(text) if stop < 0 else stop
        at = start + max(column, 1) - 1
        if at < stop:
            return origins[at]
        if stop > start:  # past the end of the line: just after its last character
            return origins[stop - 1] + 1
        return origins[start] if start < len(origins) else len(self.original)

    def column(self, line: int, column: int) -> int:
        """The 1-based column in the original line of ``column`` of the line as parsed."""
        if self.normalized is None:
            return self._unescaped(line, column)
        index = self.index(line, column)
        return index - self._original_starts[min(max(line, 1), len(self._original_starts)) - 1] + 1

    def diagnostic(self, d: Diagnostic, *, whole_line: bool = True) -> Diagnostic:
        """``d`` (about the text as parsed) placed in the text as written; a syntax error caused by a
        look-alike or invisible character names it (``whole_line``: see
        :func:`~visprog.language.normalize.lookalike_note`)."""
        if self.normalized is None:
            lines = syntax.split_lines(self.original)
            source = lines[d.line - 1] if 0 < d.line <= len(lines) else d.source_line
            return Diagnostic(d.line, self._unescaped(d.line, d.column), d.message, source)
        return explain(d, self.original, self.index(d.line, d.column), self._replaced, whole_line=whole_line)


# --- an apostrophe that ends a string early ---------------------------------------------------------

#: At most this many apostrophes a line are read as part of a string (each costs one lexing of the line).
MAX_APOSTROPHES = 8


def _early_end(line: str) -> int:
    """The index of the first apostrophe between letters that ends a single-quoted string, or -1."""
    for token in lexer().line(line):
        if token.kind == "STRING" and token.text[0] == "'":
            end = token.column + len(token.text) - 2  # 0-based index of the closing quote
            if 0 < end < len(line) - 1 and line[end - 1].isalpha() and line[end + 1].isalpha():
                return end
    return -1


def _escape_apostrophes(line: str) -> tuple[str, list[int]]:
    """``line`` with each apostrophe that ends a single-quoted string early escaped (``\'``), at most
    :data:`MAX_APOSTROPHES`, and the indexes of the added backslashes in the returned line."""
    added: list[int] = []
    for _ in range(MAX_APOSTROPHES):
        at = _early_end(line)
        if at < 0:
            break
        line = line[:at] + "\\" + line[at:]
        added.append(at)
    return line, added


def _quoted(body: str, quote: str) -> str:
    return quote + body.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def _apostrophes(fixed: str, added: list[int], number: int, *, accepted: bool) -> list[Diagnostic]:
    """One diagnostic per string that an apostrophe ended early (at that apostrophe, in the line as
    parsed): a warning when the line was ``accepted`` with the apostrophes read as part of their
    strings, else an error. Both say where the string ended and give both ways to write it."""
    strings = [t for t in lexer().line(fixed) if t.kind == "STRING"]
    out: list[Diagnostic] = []
    done: set[int] = set()
    for at in added:
        if at in done:
            continue
        word_start, word_stop = at, at + 2
        while word_start > 0 and fixed[word_start - 1].isalnum():
            word_start -= 1
        while word_stop < len(fixed) and fixed[word_stop].isalnum():
            word_stop += 1
        word = fixed[word_start:at] + fixed[at + 1 : word_stop]
        whole = next((t for t in strings if t.column - 1 < at < t.column - 1 + len(t.text)), None)
        if whole is not None:
            start = whole.column - 1
            early = fixed[start:at] + "'"
            done.update(a for a in added if start < a < start + len(whole.text))
            value = _unquote(whole.text)
            both = f"{_quoted(value, chr(39))} or {_quoted(value, chr(34))}"
        else:  # the string does not end on this line, even so
            start = fixed.rfind("'", 0, at)
            early = fixed[start:at] + "'"
            both = "\\' for an apostrophe inside a string, or use double quotes"
        if accepted and whole is not None:
            start = whole.column - 1
            written = "".join(c for k, c in enumerate(whole.text, start=start) if k not in added)
            message = f'read {written} as one string (as written, it ends at the apostrophe in "{word}"): write {both}'
        else:
            message = f'the string {early} ends early, at the apostrophe in "{word}": write {both}'
        out.append(Diagnostic(number, at + 1, message, fixed))
    return out


def _bad_line(
    line: str, number: int, lines: list[str], where: _Where
) -> tuple[str, list[Diagnostic], list[Diagnostic]]:
    """A line that does not parse as written: the line to parse instead (apostrophes that end a
    string early read as part of it, when that parses), with warnings, or the diagnostics."""
    _, diag = _parse_line(line, number, lines)
    if diag is None:
        return line, [], []
    fixed, added = _escape_apostrophes(line)
    if not added:
        return line, [], [diag]
    _, again = _parse_line(fixed, number, lines)
    where.added[number] = added
    if again is None:
        return fixed, _apostrophes(fixed, added, number, accepted=True), []
    found = _apostrophes(fixed, added, number, accepted=False)
    if all(d.column != again.column for d in found):
        found.append(again)
    return fixed, [], sorted(found, key=lambda d: d.column)


def parse(
    text: str, *, max_chars: int | None = None, max_steps: int | None = None, max_line_length: int | None = None
) -> syntax.Program:
    """Parse a whole program. Raises :class:`ProgramSyntaxError` listing every bad line.

    Text with a non-ASCII character is read with look-alike and invisible characters outside strings
    as ASCII; an apostrophe that ends a string early is read as part of it when only that parses (with
    a warning). See the module's documentation.

    ``max_chars``, ``max_steps`` and ``max_line_length`` bound the text, checked before it is read
    (default: :mod:`visprog.language.text_limits`'s ``MAX_CHARS``, ``MAX_STEPS`` and ``MAX_LINE_LENGTH``).
    """
    if not isinstance(text, str):
        raise TypeError(f"a program is text, got {type(text).__name__}")
    check_text_size(text, max_chars=max_chars, max_steps=max_steps, max_line_length=max_line_length)
    normalized = None if text.isascii() else normalize(text)
    read = text if normalized is None else normalized.text
    lines = syntax.split_lines(read)
    too_deep = _too_deep(lines)
    if too_deep:
        where = _Where(text, normalized)
        raise ProgramSyntaxError([where.diagnostic(d) for d in too_deep])
    original_lines = lines if normalized is None else syntax.split_lines(text)
    try:
        tree = grammar().parse(read + "\n", start="program")
    except UnexpectedInput as first:
        where = _Where(text, normalized)
        diagnostics: list[Diagnostic] = []
        warnings: list[Diagnostic] = []
        pieces = read.split("\n")
        for number, line in enumerate(lines, start=1):
            fixed, warned, bad = _bad_line(line, number, original_lines, where)
            diagnostics.extend(bad)
            warnings.extend(warned)
            if fixed is not line:
                pieces[number - 1] = fixed + pieces[number - 1][len(line) :]
        if diagnostics:
            raise ProgramSyntaxError([where.diagnostic(d) for d in diagnostics]) from None
        fixed_text = "\n".join(pieces)
        try:
            tree = grammar().parse(fixed_text + "\n", start="program")
        except UnexpectedInput as whole:  # only fails as a whole: report Lark's position
            error = whole if warnings else first
            at, col, msg = _message(error, fixed_text if warnings else read)
            fixed_lines = syntax.split_lines(fixed_text if warnings else read)
            diagnostic = Diagnostic(at, col, msg, fixed_lines[min(at, len(fixed_lines)) - 1])
            raise ProgramSyntaxError([where.diagnostic(diagnostic)]) from None
        steps = _ToAst(original_lines, where=where).transform(tree)
        return syntax.Program(text, tuple(steps), tuple(where.diagnostic(w, whole_line=False) for w in warnings))
    steps = _ToAst(original_lines, where=None if normalized is None else _Where(text, normalized)).transform(tree)
    return syntax.Program(text, tuple(steps))
