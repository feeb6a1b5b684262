"""Eval's functions (``len``, ``int``, ``max`` ...) and the methods of text (``.lower()`` ...).

Each is written out here over data; sizes are checked before a result is made.
Answers keep Eval's reading: ``bool('no')`` is False, ``int('two')`` is 2,
``any(['no', 'no'])`` is False, ``str(True)`` is ``'yes'``, and a text method
applied to a yes/no or number answer reads it as ``'{NAME}'`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from visprog.language.expr_limits import MAX_INT_BITS, Meter, check_int, coerce_answer, describe, display, is_number
from visprog.language.expr_syntax import Node

__all__ = ["Functions"]

_ITERABLES = (str, list, tuple, set, frozenset, dict)
#: round()'s digits: enough for any float, few enough that 10**digits stays small.
_MAX_DIGITS = 400


class Functions(Meter):
    """Eval's functions and text methods, for the evaluator that inherits them."""

    # what the evaluator provides

    def value(self, node: Node) -> Any:  # pragma: no cover - the evaluator's
        raise NotImplementedError

    def text_or_value(self, node: Node) -> Any:  # pragma: no cover - the evaluator's
        raise NotImplementedError

    def number(self, value: Any, op: str, column: int) -> int | float:  # pragma: no cover - the evaluator's
        raise NotImplementedError

    def whole(self, value: Any, what: str, column: int) -> int:  # pragma: no cover - the evaluator's
        raise NotImplementedError

    def truth(self, value: Any, column: int) -> bool:  # pragma: no cover - the evaluator's
        raise NotImplementedError

    # functions

    def call(self, name: str, args: tuple[Node, ...], column: int) -> Any:
        handler: Callable[[tuple[Node, ...], int], Any] = {
            "int": self.to_int,
            "float": self.to_float,
            "str": self.to_str,
            "bool": self.to_bool,
            "len": self.length,
            "abs": self.absolute,
            "min": self.smallest,
            "max": self.largest,
            "round": self.rounded,
            "sum": self.total,
            "any": self.any_true,
            "all": self.all_true,
        }[name]
        return handler(args, column)

    def to_int(self, args: tuple[Node, ...], column: int) -> int:
        v = self.text_or_value(args[0])
        if isinstance(v, str):
            self.charge(len(v) // 1000, column)
        if isinstance(v, str) and _digits(v):
            if _digits(v) > MAX_INT_BITS * 3 // 10:  # a digit is 3.3 bits
                raise self.too_big(column)
            return check_int(self, int(v), column)
        n = self.number(v, "int()", column)
        try:
            return check_int(self, int(n), column)
        except (OverflowError, ValueError):
            raise self.error(f"int() cannot convert {describe(n)}", column) from None

    def to_float(self, args: tuple[Node, ...], column: int) -> float:
        v = self.text_or_value(args[0])
        if isinstance(v, str):
            self.charge(len(v) // 1000, column)
            try:
                return float(v)
            except ValueError:
                pass
        n = self.number(v, "float()", column)
        try:
            return float(n)
        except OverflowError:
            raise self.error(f"float() cannot convert {describe(n)}: too large", column) from None

    def to_str(self, args: tuple[Node, ...], column: int) -> str:
        v = self.text_or_value(args[0])
        return v if isinstance(v, str) else self.shown(v, column)

    def to_bool(self, args: tuple[Node, ...], column: int) -> bool:
        return self.truth(coerce_answer(self.value(args[0])), column)

    def length(self, args: tuple[Node, ...], column: int) -> int:
        v = self.text_or_value(args[0])
        if not isinstance(v, _ITERABLES):
            raise self.error(f"len() needs text or a list, got {describe(v)}", column)
        return len(v)

    def absolute(self, args: tuple[Node, ...], column: int) -> int | float:
        return abs(self.number(self.value(args[0]), "abs()", column))

    def rounded(self, args: tuple[Node, ...], column: int) -> int | float:
        x = self.number(self.value(args[0]), "round()", column)
        try:
            if len(args) == 1:
                return round(x)
            digits = self.whole(self.value(args[1]), "round()'s number of digits", column)
            if abs(digits) > _MAX_DIGITS:
                raise self.error(f"round() takes at most {_MAX_DIGITS} digits, got {digits}", column)
            return round(x, digits)
        except (OverflowError, ValueError):
            raise self.error(f"round() cannot round {describe(x)}", column) from None

    def items(self, node: Node, name: str, column: int) -> list[Any]:
        """The items of a function's one argument (a list, or text), each read as an answer."""
        v = self.text_or_value(node)
        if not isinstance(v, _ITERABLES):
            raise self.error(f"{name}() needs a list, got {describe(v)}", column)
        self.charge(len(v), column)
        return [coerce_answer(item) for item in v]

    def extreme(self, pick: Callable[[list[Any]], Any], name: str, args: tuple[Node, ...], column: int) -> Any:
        if len(args) == 1:
            values = self.items(args[0], name, column)
        else:
            values = [coerce_answer(self.value(arg)) for arg in args]
        if not values:
            raise self.error(f"{name}() of an empty list", column)
        self.charge(sum(self.weight(v) for v in values), column)
        try:
            return pick(values)
        except TypeError:
            kinds = sorted({type(v).__name__ for v in values})
            raise self.error(f"{name}() cannot compare {' with '.join(kinds)}", column) from None

    def smallest(self, args: tuple[Node, ...], column: int) -> Any:
        return self.extreme(min, "min", args, column)

    def largest(self, args: tuple[Node, ...], column: int) -> Any:
        return self.extreme(max, "max", args, column)

    def total(self, args: tuple[Node, ...], column: int) -> int | float:
        result = self.number(self.value(args[1]), "sum()", column) if len(args) > 1 else 0
        for item in self.items(args[0], "sum", column):
            if not is_number(item):
                raise self.error(f"sum() needs numbers, got {describe(item)}", column)
            try:
                result = check_int(self, result + item, column)
            except OverflowError as err:
                raise self.error(f"sum() cannot add {describe(item)}: {err}", column) from None
        return result

    def any_true(self, args: tuple[Node, ...], column: int) -> bool:
        return any(self.truth(item, column) for item in self.items(args[0], "any", column))

    def all_true(self, args: tuple[Node, ...], column: int) -> bool:
        return all(self.truth(item, column) for item in self.items(args[0], "all", column))

    # methods of text

    def method(self, name: str, target: Any, args: tuple[Node, ...], column: int) -> Any:
        if is_number(target):
            target = display(target)
        if not isinstance(target, str):
            raise self.error(f"'.{name}()' works on text, got {describe(target)}", column)
        self.charge(len(target) // 1000, column)
        if name in ("lower", "upper", "title"):
            result = {"lower": str.lower, "upper": str.upper, "title": str.title}[name](target)
            return self.text_result([result], column)
        if name == "strip":
            return target.strip(self.text_arg(name, args[0], 1, column)) if args else target.strip()
        if name in ("startswith", "endswith"):
            prefix = self.prefix_arg(name, args[0], column)
            return target.startswith(prefix) if name == "startswith" else target.endswith(prefix)
        if name == "replace":
            return self.replace(target, args, column)
        return self.split(target, args, column)

    def text_arg(self, name: str, node: Node, position: int, column: int) -> str:
        v = self.text_or_value(node)
        if not isinstance(v, str):
            raise self.error(f"'.{name}()' needs text for argument {position}, got {describe(v)}", column)
        return v

    def prefix_arg(self, name: str, node: Node, column: int) -> str | tuple[str, ...]:
        v = self.text_or_value(node)
        if isinstance(v, (list, tuple)) and all(isinstance(item, str) for item in v):
            self.charge(len(v), column)
            return tuple(v)
        if not isinstance(v, str):
            raise self.error(f"'.{name}()' needs text or a list of texts, got {describe(v)}", column)
        return v

    def replace(self, target: str, args: tuple[Node, ...], column: int) -> str:
        old, new = self.text_arg("replace", args[0], 1, column), self.text_arg("replace", args[1], 2, column)
        count = self.whole(self.value(args[2]), "'.replace()''s count", column) if len(args) > 2 else -1
        found = len(target) + 1 if old == "" else target.count(old)
        if count >= 0:
            found = count = min(found, count)
        self.check_text(len(target) + found * (len(new) - len(old)), column)
        return target.replace(old, new, count)

    def split(self, target: str, args: tuple[Node, ...], column: int) -> list[str]:
        sep = None
        if args:
            v = self.text_or_value(args[0])
            if v is not None and not isinstance(v, str):
                raise self.error(f"'.split()' needs text as separator, got {describe(v)}", column)
            if v == "":
                raise self.error("'.split()' needs a separator that is not empty", column)
            sep = v
        limit = self.whole(self.value(args[1]), "'.split()''s count", column) if len(args) > 1 else -1
        parts = target.split(sep, min(limit, len(target)))
        self.check_items(len(parts), column)
        self.charge(len(parts) // 100, column)
        return parts


def _digits(text: str) -> int:
    """How many digits ``text`` has if it is a whole number in decimal digits (spaces and a sign around), else 0."""
    s = text.strip()
    body = s[1:] if s[:1] in ("+", "-") else s
    return len(body) if body.isascii() and body.isdigit() else 0
