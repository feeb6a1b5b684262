"""Eval's expressions: the syntax tree and the parser.

A template such as ``"'yes' if {ANSWER0} > 0 else 'no'"`` is parsed (grammar
in ``expr.lark``, loaded by :mod:`visprog.language.tokens`) into a tree of
frozen dataclasses. :mod:`visprog.language.expr` binds values to its
placeholders and evaluates it. Syntax errors are :class:`EvalError` with the
1-based column and what was expected.

A bare ``NAME`` is a variable like ``{NAME}`` (marked ``bare`` so a missing one
can be told apart from a typo'd placeholder); ``f(...)`` names one of
:data:`FUNCTIONS` and ``x.m(...)`` one of :data:`METHODS`, both checked here,
with their number of arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lark import Token, Transformer, v_args
from lark.exceptions import UnexpectedInput, VisitError

from visprog.errors import EvalError
from visprog.language.expr_errors import syntax_error
from visprog.language.tokens import expr_grammar, placeholder

__all__ = [
    "FUNCTIONS",
    "METHODS",
    "BinaryOp",
    "BoolOp",
    "Call",
    "Compare",
    "Comparison",
    "Const",
    "IfElse",
    "Index",
    "ListExpr",
    "Method",
    "Node",
    "Not",
    "Sign",
    "Slice",
    "Text",
    "Var",
    "parse_tree",
]

#: Eval's functions and how many arguments each takes (least, most; None: any number).
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "int": (1, 1),
    "float": (1, 1),
    "str": (1, 1),
    "bool": (1, 1),
    "len": (1, 1),
    "abs": (1, 1),
    "min": (1, None),
    "max": (1, None),
    "round": (1, 2),
    "sum": (1, 2),
    "any": (1, 1),
    "all": (1, 1),
}
#: The methods of text and how many arguments each takes.
METHODS: dict[str, tuple[int, int | None]] = {
    "lower": (0, 0),
    "upper": (0, 0),
    "strip": (0, 1),
    "title": (0, 0),
    "startswith": (1, 1),
    "endswith": (1, 1),
    "replace": (2, 3),
    "split": (0, 2),
}


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
    """A ``{NAME}`` placeholder, or a bare ``NAME`` (``bare``) that means the same."""

    name: str
    column: int
    bare: bool = False


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


@dataclass(frozen=True)
class ListExpr(Node):
    """``[a, b, ...]`` or a tuple ``(a, b, ...)``: both make a list."""

    items: tuple[Node, ...]
    column: int


@dataclass(frozen=True)
class Index(Node):
    """``target[index]``."""

    target: Node
    index: Node
    column: int


@dataclass(frozen=True)
class Slice(Node):
    """``target[lower:upper:step]``, each part optional."""

    target: Node
    lower: Node | None
    upper: Node | None
    step: Node | None
    column: int


@dataclass(frozen=True)
class Call(Node):
    """``name(args)``, ``name`` one of :data:`FUNCTIONS`."""

    name: str
    args: tuple[Node, ...]
    column: int


@dataclass(frozen=True)
class Method(Node):
    """``target.name(args)``, ``name`` one of :data:`METHODS`."""

    target: Node
    name: str
    args: tuple[Node, ...]
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
        #: (0-based position in the template, name, bare) of every variable, inside strings too
        self.variables: list[tuple[int, str, bool]] = []
        #: (0-based position, what is wrong) of every problem the grammar lets through
        self.problems: list[tuple[int, str, str]] = []

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
            self.variables.append((offset + i, name, False))
            parts.append(Var(name, offset + i + 1))
            i = found.end()
        if chunk:
            parts.append("".join(chunk))
        if not any(isinstance(p, Var) for p in parts):
            return Const("".join(p for p in parts if isinstance(p, str)), _col(tok))
        return Text(tuple(parts), _col(tok))

    def variable(self, tok: Token) -> Node:
        name = str(tok)[1:-1]
        self.variables.append((_start(tok), name, False))
        return Var(name, _col(tok))

    def true(self, tok: Token) -> Node:
        return Const(True, _col(tok))

    def false(self, tok: Token) -> Node:
        return Const(False, _col(tok))

    def none(self, tok: Token) -> Node:
        return Const(None, _col(tok))

    def bare_name(self, tok: Token) -> Node:
        word = str(tok)
        if word.lower() in ("true", "false", "none"):
            self.problems.append((_start(tok), f"unknown name {word!r}", f"write {word.capitalize()}"))
        self.variables.append((_start(tok), word, True))
        return Var(word, _col(tok), bare=True)

    def arguments(self, *items: Node) -> tuple[Node, ...]:
        return items

    def slice_part(self, item: Node | None = None) -> Node | None:
        return item

    def call(self, name: Token, args: tuple[Node, ...]) -> Node:
        self.arity(name, args, FUNCTIONS, f"{name}()", "unknown function", "Eval's functions are")
        return Call(str(name), args, _col(name))

    def method(self, target: Node, dot: Token, name: Token, args: tuple[Node, ...]) -> Node:
        self.arity(name, args, METHODS, f".{name}()", "unknown method", "text has the methods")
        return Method(target, str(name), args, _col(dot))

    def arity(self, name: Token, args: tuple[Node, ...], table: dict[str, tuple[int, int | None]], *words: str) -> None:
        shown, unknown, known = words
        if str(name) not in table:
            names = ", ".join(f".{n}()" if table is METHODS else n for n in table)
            self.problems.append((_start(name), f"{unknown} {shown}", f"{known} {names}"))
            return
        least, most = table[str(name)]
        if least <= len(args) and (most is None or len(args) <= most):
            return
        if most is None:
            wanted = f"at least {least}"
        else:
            wanted = f"{least}" if least == most else f"{least} {'or' if most == least + 1 else 'to'} {most}"
        plural = "" if wanted == "1" else "s"
        self.problems.append((_start(name), f"{shown} takes {wanted} argument{plural}, got {len(args)}", ""))

    def list_(self, bracket: Token, items: tuple[Node, ...]) -> Node:
        return ListExpr(items, _col(bracket))

    def tuple_(self, first: Node, rest: tuple[Node, ...]) -> Node:
        return ListExpr((first, *rest), _column(first))

    def empty_tuple(self) -> Node:
        return ListExpr((), 1)

    def index(self, target: Node, bracket: Token, item: Node) -> Node:
        return Index(target, item, _col(bracket))

    def slice(self, target: Node, bracket: Token, *parts: Node | Token | None) -> Node:
        lower, upper, step = [p for p in parts if not isinstance(p, Token)][:3] + [None] * (len(parts) < 5)
        return Slice(target, lower, upper, step, _col(bracket))

    # operators

    def sign(self, op: Token, operand: Node) -> Node:
        return Sign(str(op), operand, _col(op))

    def binary(self, left: Node, op: Token, right: Node) -> Node:
        return BinaryOp(str(op), left, right, _col(op))

    def comp_op(self, first: Token, second: Token | None = None) -> Token:
        if second is None:
            return first
        text = "is not" if first.type == "IS" else "not in"
        return Token(text.upper().replace(" ", "_"), text, start_pos=first.start_pos, column=first.column)

    def compare(self, first: Node, *rest: Node | Token) -> Node:
        links = tuple(
            Comparison(str(op), right, _col(op))
            for op, right in zip(rest[::2], rest[1::2], strict=True)
            if isinstance(op, Token) and isinstance(right, Node)
        )
        left = first
        for link in links:
            if link.op in ("is", "is not") and not (_singleton(left) or _singleton(link.right)):
                hint = "use '==' or '!=' for other values"
                self.problems.append((link.column - 1, f"'{link.op}' compares with True, False or None", hint))
            left = link.right
        return Compare(first, links, links[0].column)

    def not_(self, op: Token, operand: Node) -> Node:
        return Not(operand, _col(op))

    def and_(self, left: Node, op: Token, right: Node) -> Node:
        return BoolOp("and", left, right, _col(op))

    def or_(self, left: Node, op: Token, right: Node) -> Node:
        return BoolOp("or", left, right, _col(op))

    def xor(self, left: Node, op: Token, right: Node) -> Node:
        return BoolOp("^" if op.type == "CARET" else "xor", left, right, _col(op))

    def if_else(self, body: Node, if_: Token, test: Node, else_: Token, orelse: Node) -> Node:
        return IfElse(body, test, orelse, _col(if_))


def _start(tok: Token) -> int:
    return tok.start_pos if tok.start_pos is not None else 0


def _col(tok: Token) -> int:
    return _start(tok) + 1


def _column(node: Node) -> int:
    column = getattr(node, "column", 1)
    return column if isinstance(column, int) else 1


def _singleton(node: Node) -> bool:
    return isinstance(node, Const) and (node.value is None or node.value is True or node.value is False)


def parse_tree(text: str) -> tuple[Node, dict[str, int], frozenset[str]]:
    """Parse an Eval template: its tree, the 1-based column of each variable's first
    appearance, in order of first appearance (inside string literals too), and the
    variables only ever written as a bare ``NAME``.

    Raises :class:`EvalError` with the 1-based column and what was expected.
    """
    try:
        tree = expr_grammar().parse(text)
    except UnexpectedInput as err:
        raise syntax_error(text, err) from None
    builder = _Builder()
    try:
        root = builder.transform(tree)
    except (RecursionError, VisitError) as err:
        if isinstance(err, VisitError) and not isinstance(err.orig_exc, RecursionError):
            raise
        raise EvalError("expression is nested too deeply", text, column=1) from None
    if builder.problems:
        start, what, hint = min(builder.problems)
        detail, hint = (f"{what}: {hint}", f": {hint}") if hint else (what, "")
        raise EvalError(f"{what} at column {start + 1}{hint}", text, column=start + 1, detail=detail)
    columns: dict[str, int] = {}
    braced: set[str] = set()
    for start, name, bare in sorted(builder.variables):
        columns.setdefault(name, start + 1)
        if not bare:
            braced.add(name)
    return root, columns, frozenset(columns) - braced
