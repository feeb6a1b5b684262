"""Eval's expressions: the syntax tree and the parser.

A template such as ``"'yes' if {ANSWER0} > 0 else 'no'"`` is parsed (grammar
in ``expr.lark``, loaded by :mod:`visprog.language.tokens`) into a tree of
frozen dataclasses. :mod:`visprog.language.expr` binds values to its
placeholders and evaluates it. Syntax errors are :class:`EvalError` with the
1-based column and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lark import Token, Transformer, v_args
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

from visprog.errors import EvalError
from visprog.language.tokens import expr_grammar, placeholder

__all__ = [
    "BinaryOp",
    "BoolOp",
    "Compare",
    "Comparison",
    "Const",
    "IfElse",
    "Node",
    "Not",
    "Sign",
    "Text",
    "Var",
    "parse_tree",
]


# --------------------------------------------------------------------------- tree


@dataclass(frozen=True)
class Node:
    """Base of the expression tree. ``column`` is 1-based in the template text."""


@dataclass(frozen=True)
class Const(Node):
    """A literal: number, string without placeholders, True, False or None."""

    value: Any
    column: int


@dataclass(frozen=True)
class Var(Node):
    """A ``{NAME}`` placeholder."""

    name: str
    column: int


@dataclass(frozen=True)
class Text(Node):
    """A string literal with ``{NAME}`` placeholders inside: literal text and variables."""

    parts: tuple[str | Var, ...]
    column: int


@dataclass(frozen=True)
class Sign(Node):
    """Unary ``-`` or ``+``."""

    op: str
    operand: Node
    column: int


@dataclass(frozen=True)
class BinaryOp(Node):
    """Arithmetic: ``+ - * / // %``."""

    op: str
    left: Node
    right: Node
    column: int


@dataclass(frozen=True)
class Comparison(Node):
    """One link of a comparison chain: ``op right``."""

    op: str
    right: Node
    column: int


@dataclass(frozen=True)
class Compare(Node):
    """``first op1 x1 op2 x2 ...``, chained like Python."""

    first: Node
    rest: tuple[Comparison, ...]
    column: int


@dataclass(frozen=True)
class Not(Node):
    operand: Node
    column: int


@dataclass(frozen=True)
class BoolOp(Node):
    """``and``, ``or`` or ``xor``."""

    op: str
    left: Node
    right: Node
    column: int


@dataclass(frozen=True)
class IfElse(Node):
    """``body if test else orelse``."""

    body: Node
    test: Node
    orelse: Node
    column: int


# --------------------------------------------------------------------------- parsing


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"', "{": "{", "}": "}"}


def _number(text: str) -> int | float:
    if any(c in text for c in ".eE"):
        return float(text)
    try:
        return int(text)
    except ValueError:  # more digits than int() converts
        return float(text)


@v_args(inline=True)
class _Builder(Transformer[Token, Node]):
    """Lark tree to expression tree; records placeholders and bare words as it goes.

    Callbacks never raise: problems are collected and reported by :func:`parse_tree`.
    """

    def __init__(self) -> None:
        super().__init__()
        #: (0-based position in the template, name) of every placeholder, inside strings too
        self.variables: list[tuple[int, str]] = []
        self.bare_words: list[Token] = []

    # literals and names

    def number(self, tok: Token) -> Node:
        return Const(_number(str(tok)), _col(tok))

    def string(self, tok: Token) -> Node:
        raw = str(tok)
        body, offset = raw[1:-1], _start(tok) + 1
        parts: list[str | Var] = []
        chunk: list[str] = []
        placeholders = placeholder()
        i = 0
        while i < len(body):
            c = body[i]
            if c == "\\" and i + 1 < len(body):
                nxt = body[i + 1]
                chunk.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
                continue
            found = placeholders.match(body, i) if c == "{" else None
            if found is None:
                chunk.append(c)
                i += 1
                continue
            if chunk:
                parts.append("".join(chunk))
                chunk = []
            name = found.group()[1:-1]
            self.variables.append((offset + i, name))
            parts.append(Var(name, offset + i + 1))
            i = found.end()
        if chunk:
            parts.append("".join(chunk))
        if not any(isinstance(p, Var) for p in parts):
            return Const("".join(p for p in parts if isinstance(p, str)), _col(tok))
        return Text(tuple(parts), _col(tok))

    def variable(self, tok: Token) -> Node:
        name = str(tok)[1:-1]
        self.variables.append((_start(tok), name))
        return Var(name, _col(tok))

    def true(self, tok: Token) -> Node:
        return Const(True, _col(tok))

    def false(self, tok: Token) -> Node:
        return Const(False, _col(tok))

    def none(self, tok: Token) -> Node:
        return Const(None, _col(tok))

    def bare_name(self, tok: Token) -> Node:
        self.bare_words.append(tok)
        return Const(None, _col(tok))

    # operators

    def sign(self, op: Token, operand: Node) -> Node:
        return Sign(str(op), operand, _col(op))

    def binary(self, left: Node, op: Token, right: Node) -> Node:
        return BinaryOp(str(op), left, right, _col(op))

    def comp_op(self, first: Token, second: Token | None = None) -> Token:
        if second is None:
            return first
        return Token("NOT_IN", "not in", start_pos=first.start_pos, column=first.column)

    def compare(self, first: Node, *rest: Node | Token) -> Node:
        links = tuple(
            Comparison(str(op), right, _col(op))
            for op, right in zip(rest[::2], rest[1::2], strict=True)
            if isinstance(op, Token) and isinstance(right, Node)
        )
        return Compare(first, links, links[0].column)

    def not_(self, op: Token, operand: Node) -> Node:
        return Not(operand, _col(op))

    def and_(self, left: Node, op: Token, right: Node) -> Node:
        return BoolOp("and", left, right, _col(op))

    def or_(self, left: Node, op: Token, right: Node) -> Node:
        return BoolOp("or", left, right, _col(op))

    def xor(self, left: Node, op: Token, right: Node) -> Node:
        return BoolOp("xor", left, right, _col(op))

    def if_else(self, body: Node, if_: Token, test: Node, else_: Token, orelse: Node) -> Node:
        return IfElse(body, test, orelse, _col(if_))


def _start(tok: Token) -> int:
    return tok.start_pos if tok.start_pos is not None else 0


def _col(tok: Token) -> int:
    return _start(tok) + 1


# What the parser may expect next, in words.
_VALUE_STARTS = frozenset({"NUMBER", "STRING", "PLACEHOLDER", "TRUE", "FALSE", "NONE", "_LPAR"})
_OPERATORS = frozenset(
    {"EQ", "NE", "LT", "LE", "GT", "GE", "PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "PERCENT"}
    | {"AND", "OR", "XOR", "NOT", "IF"}
)
_HINTS = {
    "=": "use '==' to compare",
    "&": "use 'and'",
    "|": "use 'or'",
    "^": "use 'xor'",
    "!": "use 'not' or '!='",
}


def _expected(names: set[str] | frozenset[str]) -> str:
    wanted: list[str] = []
    if names & _VALUE_STARTS:
        wanted.append("a value (a number, a 'string', a {VARIABLE}, True/False/None or '(')")
    if names & _OPERATORS and not names & _VALUE_STARTS:
        wanted.append("an operator")
    if "IN" in names and not names & _OPERATORS:
        wanted.append("'in'")
    if "ELSE" in names:
        wanted.append("'else'")
    if "_RPAR" in names:
        wanted.append("')'")
    if "$END" in names:
        wanted.append("the end of the expression")
    return " or ".join(wanted) if wanted else "something else"


def _acceptable(err: UnexpectedToken | UnexpectedCharacters) -> set[str]:
    """The terminals that could come next: exact, unlike LALR's merged lookahead sets."""
    fallback = err.expected if isinstance(err, UnexpectedToken) else err.allowed
    interactive = getattr(err, "interactive_parser", None)
    if interactive is None:
        return set(fallback or ())
    try:
        return set(interactive.accepts())
    except (LarkError, AttributeError):
        return set(fallback or ())


def _syntax_error(text: str, err: UnexpectedInput) -> EvalError:
    pos = err.pos_in_stream if isinstance(err.pos_in_stream, int) else len(text)
    if isinstance(err, UnexpectedToken):
        tok = err.token
        if tok.type == "$END":
            pos = len(text)
            what = "unexpected end of expression"
        else:
            pos = _start(tok)
            what = f"unexpected {str(tok)!r}"
        detail = f"{what}, expected {_expected(_acceptable(err))}"
    elif isinstance(err, UnexpectedCharacters):
        char = text[pos] if pos < len(text) else ""
        if char in ("'", '"'):
            detail = f"unterminated string: no closing {char} on this line"
        elif char == "{":
            detail = "bad placeholder: write a variable as {NAME} (letters, digits and _)"
        elif char == "}":
            detail = "unexpected '}' without a matching '{NAME'"
        else:
            detail = f"unexpected character {char!r}"
            if char in _HINTS:
                detail += f"; {_HINTS[char]}"
            else:
                detail += f", expected {_expected(_acceptable(err))}"
    elif isinstance(err, UnexpectedEOF):
        pos = len(text)
        detail = f"unexpected end of expression, expected {_expected(set(err.expected))}"
    else:  # pragma: no cover - lark has no other UnexpectedInput
        detail = "invalid syntax"
    return EvalError(f"syntax error at column {pos + 1}: {detail}", text, column=pos + 1, detail=detail)


def _bare_word_error(text: str, tok: Token) -> EvalError:
    word, column = str(tok), _col(tok)
    if word.lower() in ("true", "false", "none"):
        hint = f"write {word.capitalize()}"
    else:
        hint = f"write text in quotes ('{word}') and variables in braces ({{{word}}})"
    return EvalError(
        f"unknown name {word!r} at column {column}: {hint}",
        text,
        column=column,
        detail=f"unknown name {word!r}: {hint}",
    )


def parse_tree(text: str) -> tuple[Node, dict[str, int]]:
    """Parse an Eval template: its tree, and the 1-based column of each variable's first
    appearance, in order of first appearance (inside string literals too).

    Raises :class:`EvalError` with the 1-based column and what was expected.
    """
    try:
        tree = expr_grammar().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(text, err) from None
    builder = _Builder()
    try:
        root = builder.transform(tree)
    except RecursionError:
        raise EvalError("expression is nested too deeply", text, column=1) from None
    if builder.bare_words:
        raise _bare_word_error(text, min(builder.bare_words, key=_start))
    columns: dict[str, int] = {}
    for start, name in sorted(builder.variables):
        columns.setdefault(name, start + 1)
    return root, columns
