"""Eval's evaluator: walks an expression tree (:mod:`visprog.language.expr_syntax`) over bound values.

Nothing here turns text into Python code: each operator, function and method is
written out below and works on data only. Work is bounded: integers have at most
:data:`MAX_INT_BITS` bits, text at most :data:`MAX_TEXT` characters and lists at
most :data:`MAX_ITEMS` items, each checked from the operands *before* a result
is made (``10**10**10``, ``'a' * 10**9`` and ``[0] * 10**9`` are refused at
once), and one evaluation does at most :data:`MAX_WORK` units of work (about a
microsecond each: one item visited, or a thousand characters copied or compared).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, cast

from visprog.language.expr_functions import Functions
from visprog.language.expr_limits import MAX_INT_BITS, check_int, coerce_answer, describe, is_number, text_of
from visprog.language.expr_syntax import (
    BinaryOp,
    BoolOp,
    Call,
    Compare,
    Comparison,
    Const,
    IfElse,
    Index,
    ListExpr,
    Method,
    Node,
    Not,
    Sign,
    Slice,
    Text,
    Var,
)
from visprog.language.values import Detection, Objects

__all__ = ["Evaluator"]

_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
_ORDERING: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_CONTAINERS = (list, tuple, set, frozenset, dict)
_SEQUENCES = (str, list, tuple)


class Evaluator(Functions):
    """Walks an expression tree. ``values`` are coerced; ``raw`` as bound (for text operations)."""

    def __init__(self, text: str, values: Mapping[str, Any], raw: Mapping[str, Any]) -> None:
        super().__init__(text)
        self.values = values
        self.raw = raw

    def value(self, node: Node) -> Any:
        self.charge(1, 1)
        match node:
            case Const(value=value):
                return value
            case Var(name=name):
                return self.values[name]
            case Text(parts=parts, column=column):
                pieces = [p if isinstance(p, str) else self.shown(self.values[p.name], column) for p in parts]
                return self.text_result(pieces, column)
            case ListExpr(items=items, column=column):
                values = [self.value(item) for item in items]
                self.check_held(len(values) + sum(self.held(v, column) for v in values), column)
                return values
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
            case BoolOp(op=op, left=left, right=right, column=column):  # xor, ^
                a, b = self.value(left), self.value(right)
                if op == "^" and any(is_number(v) and not isinstance(v, bool) for v in (a, b)):
                    raise self.error(f"'^' works on true/false values, got {describe(a)} ^ {describe(b)}", column)
                return self.truth(a, column) != self.truth(b, column)
            case IfElse(body=body, test=test, orelse=orelse, column=column):
                chosen = body if self.truth(self.value(test), column) else orelse
                return self.value(chosen)
            case Index(target=target, index=index, column=column):
                return self.index(self.text_or_value(target), self.value(index), column)
            case Slice(target=target, column=column):
                return self.slice(self.text_or_value(target), node, column)
            case Call(name=name, args=args, column=column):
                return self.call(name, args, column)
            case Method(target=target, name=name, args=args, column=column):
                return self.method(name, self.text_or_value(target), args, column)
        raise TypeError(f"not an expression node: {node!r}")  # pragma: no cover

    # -- operands

    def operand(self, node: Node) -> tuple[Any, Any]:
        """(value, value as bound): they differ for a variable bound to text such as 'two'."""
        value = self.value(node)
        return (value, self.raw[node.name]) if isinstance(node, Var) else (value, value)

    def text_or_value(self, node: Node) -> Any:
        """The value, but a variable bound to text as its text ('Yes', not True): for text operations."""
        value, raw = self.operand(node)
        return raw if isinstance(raw, str) else value

    def truth(self, value: Any, column: int) -> bool:
        try:
            return bool(value)
        except (TypeError, ValueError) as err:
            raise self.error(f"{describe(value)} is neither true nor false ({err})", column) from None

    def number(self, value: Any, op: str, column: int) -> int | float:
        coerced = coerce_answer(value)
        if not is_number(coerced):
            raise self.error(f"'{op}' needs a number, got {describe(value)}", column)
        return coerced

    def whole(self, value: Any, what: str, column: int) -> int:
        coerced = coerce_answer(value)
        if isinstance(coerced, bool) or not isinstance(coerced, int):
            raise self.error(f"{what} must be a whole number, got {describe(value)}", column)
        return coerced

    # -- arithmetic

    def sign(self, op: str, value: Any, column: int) -> Any:
        n = self.number(value, op, column)
        return -n if op == "-" else +n

    def arithmetic(self, op: str, a: Any, b: Any, column: int) -> Any:
        ca, cb = coerce_answer(a), coerce_answer(b)
        if op == "*":  # text or a list times a whole number repeats it, unless the text reads as a number
            for seq, n, count in ((a, ca, cb), (b, cb, ca)):
                if isinstance(seq, (str, list)) and _count(count) and not (is_number(n) and not isinstance(n, bool)):
                    return self.repeat(seq, count, column)
        if is_number(ca) and is_number(cb):
            return self.numbers(op, ca, cb, column)
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return self.text_result([a, b], column)
        if op == "+" and isinstance(a, list) and isinstance(b, list):
            self.check_items(len(a) + len(b), column)
            self.check_held(self.held(a, column) + self.held(b, column), column)
            self.charge((len(a) + len(b)) // 100, column)
            return [*a, *b]
        verb = "add" if op == "+" else f"apply '{op}' to"
        raise self.error(f"cannot {verb} {describe(a)} and {describe(b)}", column)

    def numbers(self, op: str, a: int | float, b: int | float, column: int) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            if op == "*" and abs(a).bit_length() + abs(b).bit_length() - 1 > MAX_INT_BITS:
                raise self.too_big(column)
            if op == "**" and b > 0 and (abs(a).bit_length() - 1) * b > MAX_INT_BITS:
                raise self.too_big(column)
        try:
            result = _ARITHMETIC[op](a, b)
        except ZeroDivisionError:
            raise self.error(f"division by zero in '{op}'", column) from None
        except ArithmeticError as err:
            raise self.error(f"arithmetic error in '{op}': {err}", column) from None
        if isinstance(result, complex):
            raise self.error(f"'{op}' of a negative number to a fractional power has no real value", column)
        return check_int(self, result, column)

    def repeat(self, seq: str | list[Any], count: int, column: int) -> Any:
        size = len(seq) * max(count, 0)
        if isinstance(seq, str):
            self.check_text(size, column)
            self.charge(size // 1000, column)
        else:
            self.check_items(size, column)
            self.check_held(self.held(seq, column) * max(count, 0), column)
            self.charge(size // 100, column)
        return seq * min(count, size)  # an empty one stays empty, however large the count

    # -- comparisons

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
        if op in ("in", "not in"):
            return self.contains(b, a, column) == (op == "in")
        if op in ("is", "is not"):
            ca, cb = coerce_answer(a[0]), coerce_answer(b[0])
            same = (ca is None and cb is None) or (isinstance(ca, bool) and isinstance(cb, bool) and ca == cb)
            return same == (op == "is")
        ca, cb = coerce_answer(a[0]), coerce_answer(b[0])
        self.charge(self.weight(ca) + self.weight(cb), column)
        try:
            result = _ORDERING[op](ca, cb)
        except TypeError:
            raise self.error(f"cannot compare {describe(a[0])} with {describe(b[0])} using '{op}'", column) from None
        return self.truth(result, column)

    def equal(self, a: Any, b: Any, column: int) -> bool:
        self.charge(self.weight(a) + self.weight(b), column)
        ca, cb = coerce_answer(a), coerce_answer(b)
        if isinstance(ca, bool) != isinstance(cb, bool) and is_number(ca) and is_number(cb):
            return False  # 'yes' is not 'one', nor 'no' 'zero' (Python's True == 1 does not carry over)
        try:
            result = ca == cb
        except (TypeError, ValueError):
            raise self.error(f"cannot compare {describe(a)} with {describe(b)}", column) from None
        return self.truth(result, column)

    def contains(self, container: tuple[Any, Any], item: tuple[Any, Any], column: int) -> bool:
        value, raw = container
        if isinstance(value, _CONTAINERS):
            seen: dict[int, bool] = {}  # by identity: a list repeated by '*' holds one item many times
            for element in value:
                self.charge(1, column)
                found = seen.get(id(element))
                if found is None:
                    found = seen[id(element)] = self.equal(item[0], element, column)
                if found:
                    return True
            return False
        haystack, needle = text_of(raw), text_of(item[1])
        if haystack is None or needle is None:
            raise self.error(
                "'in' needs text or a list on the right and text on the left, "
                f"got {describe(item[0])} in {describe(value)}",
                column,
            )
        self.charge((len(haystack) + len(needle)) // 1000, column)
        return needle in haystack

    # -- indexing

    def index(self, target: Any, index: Any, column: int) -> Any:
        if isinstance(target, dict):
            try:
                return target[index]
            except (KeyError, TypeError):
                raise self.error(f"{describe(target)} has no key {describe(index)}", column) from None
        if not isinstance(target, _SEQUENCES):
            raise self.error(f"cannot index {describe(target)}: only text and lists have items", column)
        i = self.whole(index, "an index", column)
        if not -len(target) <= i < len(target):
            raise self.error(f"index {i} is out of range for {describe(target)} ({len(target)} items)", column)
        return target[i]

    def slice(self, target: Any, node: Slice, column: int) -> Any:
        if not isinstance(target, _SEQUENCES):
            raise self.error(f"cannot slice {describe(target)}: only text and lists can be sliced", column)
        lower, upper, step = (
            None if part is None else self.whole(self.value(part), "a slice bound", column)
            for part in (node.lower, node.upper, node.step)
        )
        if step == 0:
            raise self.error("a slice step cannot be zero", column)
        self.charge(len(target) // 100, column)
        result = target[lower:upper:step]
        return Objects(cast(list[Detection], result)) if isinstance(target, Objects) else result


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
