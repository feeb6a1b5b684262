"""Eval expressions: a tiny, safe expression language over ``{NAME}`` placeholders.

A template such as ``"'yes' if {ANSWER0} > 0 else 'no'"`` is parsed once into
a tree of frozen dataclasses (:mod:`visprog.language.expr_syntax`, grammar in
``expr.lark``); values are bound to its placeholders afterwards and the tree
is walked here to compute the result. No
text is ever turned into Python code, so a bound value can only ever be data.

Semantics follow Python (precedence, chained comparisons, short-circuiting
``and``/``or``/``if``, truthiness), with ``xor`` between ``or`` and ``and``,
plus coercions for answers that models give as text:

* a string bound to a placeholder that reads as a boolean (``'yes'``,
  ``'No.'``, ``'true'``) becomes a ``bool``; one that reads as a number
  (``'2'``, ``'2.5'``, ``'two'``) becomes a number; others stay strings;
* comparisons and arithmetic apply the same coercion to string operands, so
  ``{A} == 'yes'`` and ``{A} == 2`` work whether ``A`` is ``'yes'``/``True``
  or ``'two'``/``2``;
* ``{NAME}`` inside a string literal is replaced by the value's text
  (booleans read ``yes``/``no``); write ``\\{`` for a literal brace.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from visprog.errors import EvalError
from visprog.language.expr_syntax import (
    BinaryOp,
    BoolOp,
    Compare,
    Comparison,
    Const,
    IfElse,
    Node,
    Not,
    Sign,
    Text,
    Var,
    parse_tree,
)
from visprog.language.values import Template, describe_value, parse_bool, parse_number

__all__ = [
    "BoundExpression",
    "Expression",
    "coerce_answer",
    "evaluate",
    "parse_template",
]


# --------------------------------------------------------------------------- binding


@functools.lru_cache(maxsize=512)
def parse_template(text: str) -> Expression:
    """Parse an Eval template into an unbound :class:`Expression`.

    Raises :class:`EvalError` with the 1-based column and what was expected.
    """
    root, columns = parse_tree(text)
    return Expression(text, tuple(columns), columns, root)


@dataclass(frozen=True)
class Expression:
    """A parsed template, not yet bound to values. Immutable; get one from :func:`parse_template`."""

    text: str
    #: Variables named, in order of first appearance (inside string literals too).
    variables: tuple[str, ...]
    #: 1-based column of each variable's first appearance.
    variable_columns: dict[str, int] = field(compare=False)
    tree: Node = field(repr=False, compare=False)

    def bind(self, values: Mapping[str, Any]) -> BoundExpression:
        """Bind each variable to its value; raises :class:`EvalError` if one is missing."""
        missing = [name for name in self.variables if name not in values]
        if missing:
            name = missing[0]
            known = ", ".join(sorted(str(k) for k in values)) or "none"
            raise EvalError(
                f"variable {name!r} at column {self.variable_columns[name]} has no value (known variables: {known})",
                self.text,
                column=self.variable_columns[name],
            )
        return BoundExpression(self, {name: values[name] for name in self.variables})


class BoundExpression(Template):
    """An :class:`Expression` with a value for every variable, ready to :meth:`evaluate`."""

    def __init__(self, expression: Expression, values: dict[str, Any]) -> None:
        self.expression = expression
        self.text = expression.text
        self._values = dict(values)
        self._coerced = {name: coerce_answer(v) for name, v in values.items()}

    @property
    def bindings(self) -> dict[str, Any]:
        return dict(self._values)

    def evaluate(self) -> Any:
        try:
            evaluator = _Evaluator(self.text, self._coerced, self._values)
            return evaluator.value(self.expression.tree)
        except RecursionError:
            raise EvalError("expression is nested too deeply", self.text, column=1) from None

    def __str__(self) -> str:
        """The expression as written, then each variable's value: ``{A} == 2 (with A='2')``."""
        if not self._values:
            return self.text
        bound = ", ".join(f"{name}={_short_repr(value)}" for name, value in self._values.items())
        return f"{self.text} (with {bound})"

    def __repr__(self) -> str:
        return f"BoundExpression({self.text!r}, {_short_repr(self._values)})"


def evaluate(text: str, values: Mapping[str, Any]) -> Any:
    """Parse ``text``, bind ``values`` and evaluate: ``parse_template(text).bind(values).evaluate()``."""
    return parse_template(text).bind(values).evaluate()


# --------------------------------------------------------------------------- values


def coerce_answer(value: Any) -> Any:
    """A string that reads as a bool or number becomes one ('yes', 'No.', '2', 'two'); else as is."""
    if not isinstance(value, str):
        return value
    b = parse_bool(value)
    if b is not None:
        return b
    n = parse_number(value)
    return value if n is None else n


def _display(value: Any) -> str:
    """The text a value reads as inside a string literal: ``yes``/``no`` for booleans."""
    value = coerce_answer(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        return str(value)
    except ValueError:  # an int with more digits than str() converts
        return f"<int of {value.bit_length()} bits>" if isinstance(value, int) else "<value>"


def _short_repr(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than repr() converts
        text = f"<int of {value.bit_length()} bits>" if isinstance(value, int) else "<value>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    try:
        text = describe_value(value)
    except ValueError:
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _as_text(value: Any) -> str | None:
    """Text for a substring test: strings as they are, bools as yes/no, numbers as digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return _display(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
}
_ORDERING: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_CONTAINERS = (list, tuple, set, frozenset, dict)


class _Evaluator:
    """Walks an expression tree. ``values`` are coerced; ``raw`` as bound (for substring tests)."""

    def __init__(self, text: str, values: Mapping[str, Any], raw: Mapping[str, Any]) -> None:
        self.text = text
        self.values = values
        self.raw = raw

    def error(self, message: str, column: int) -> EvalError:
        return EvalError(f"{message} at column {column}", self.text, column=column, detail=message)

    def value(self, node: Node) -> Any:
        match node:
            case Const(value=value):
                return value
            case Var(name=name):
                return self.values[name]
            case Text(parts=parts):
                return "".join(p if isinstance(p, str) else _display(self.values[p.name]) for p in parts)
            case Sign(op=op, operand=operand, column=column):
                return self.sign(op, self.value(operand), column)
            case BinaryOp(op=op, left=left, right=right, column=column):
                return self.arithmetic(op, self.value(left), self.value(right), column)
            case Compare(first=first, rest=rest):
                return self.compare(first, rest)
            case Not(operand=operand, column=column):
                return not self.truth(self.value(operand), column)
            case BoolOp(op="and", left=left, right=right, column=column):
                a = self.value(left)
                return self.value(right) if self.truth(a, column) else a
            case BoolOp(op="or", left=left, right=right, column=column):
                a = self.value(left)
                return a if self.truth(a, column) else self.value(right)
            case BoolOp(op="xor", left=left, right=right, column=column):
                return self.truth(self.value(left), column) != self.truth(self.value(right), column)
            case IfElse(body=body, test=test, orelse=orelse, column=column):
                chosen = body if self.truth(self.value(test), column) else orelse
                return self.value(chosen)
        raise TypeError(f"not an expression node: {node!r}")  # pragma: no cover

    def operand(self, node: Node) -> tuple[Any, Any]:
        """(value, value as bound): they differ for a variable bound to text such as 'two'."""
        value = self.value(node)
        return (value, self.raw[node.name]) if isinstance(node, Var) else (value, value)

    def truth(self, value: Any, column: int) -> bool:
        try:
            return bool(value)
        except (TypeError, ValueError) as err:
            raise self.error(f"{_describe(value)} is neither true nor false ({err})", column) from None

    def number(self, value: Any, op: str, column: int) -> int | float:
        coerced = coerce_answer(value)
        if not _is_number(coerced):
            raise self.error(f"'{op}' needs a number, got {_describe(value)}", column)
        return coerced

    def sign(self, op: str, value: Any, column: int) -> Any:
        n = self.number(value, op, column)
        return -n if op == "-" else +n

    def arithmetic(self, op: str, a: Any, b: Any, column: int) -> Any:
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        ca, cb = coerce_answer(a), coerce_answer(b)
        if not (_is_number(ca) and _is_number(cb)):
            verb = "add" if op == "+" else f"apply '{op}' to"
            raise self.error(f"cannot {verb} {_describe(a)} and {_describe(b)}", column)
        try:
            return _ARITHMETIC[op](ca, cb)
        except ZeroDivisionError:
            raise self.error(f"division by zero in '{op}'", column) from None
        except ArithmeticError as err:
            raise self.error(f"arithmetic error in '{op}': {err}", column) from None

    def compare(self, first: Node, rest: tuple[Comparison, ...]) -> bool:
        left = self.operand(first)
        for link in rest:
            right = self.operand(link.right)
            if not self.compare_one(link.op, left, right, link.column):
                return False
            left = right
        return True

    def compare_one(self, op: str, a: tuple[Any, Any], b: tuple[Any, Any], column: int) -> bool:
        if op == "==":
            return self.equal(a[0], b[0], column)
        if op == "!=":
            return not self.equal(a[0], b[0], column)
        if op == "in":
            return self.contains(b, a, column)
        if op == "not in":
            return not self.contains(b, a, column)
        ca, cb = coerce_answer(a[0]), coerce_answer(b[0])
        try:
            result = _ORDERING[op](ca, cb)
        except TypeError:
            raise self.error(f"cannot compare {_describe(a[0])} with {_describe(b[0])} using '{op}'", column) from None
        return self.truth(result, column)

    def equal(self, a: Any, b: Any, column: int) -> bool:
        ca, cb = coerce_answer(a), coerce_answer(b)
        if isinstance(ca, bool) != isinstance(cb, bool) and _is_number(ca) and _is_number(cb):
            return False  # 'yes' is not 'one', nor 'no' 'zero' (Python's True == 1 does not carry over)
        try:
            result = ca == cb
        except (TypeError, ValueError):
            raise self.error(f"cannot compare {_describe(a)} with {_describe(b)}", column) from None
        return self.truth(result, column)

    def contains(self, container: tuple[Any, Any], item: tuple[Any, Any], column: int) -> bool:
        value, raw = container
        if isinstance(value, _CONTAINERS):
            return any(self.equal(item[0], element, column) for element in value)
        haystack, needle = _as_text(raw), _as_text(item[1])
        if haystack is None or needle is None:
            raise self.error(
                "'in' needs text or a list on the right and text on the left, "
                f"got {_describe(item[0])} in {_describe(value)}",
                column,
            )
        return needle in haystack
