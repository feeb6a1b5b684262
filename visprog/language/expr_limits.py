"""The bounds on Eval's work, and the small value helpers the evaluator shares.

Every size is checked from the operands *before* a value is made, so a
hostile expression is refused at once instead of filling memory first.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from visprog.errors import EvalError
from visprog.language.values import describe_value, parse_bool, parse_number

__all__ = [
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "MAX_TEXT",
    "MAX_WORK",
    "Meter",
    "check_int",
    "coerce_answer",
    "describe",
    "display",
    "is_number",
    "short_repr",
    "text_of",
]

#: The most bits an integer may have: about 4,200 decimal digits (Python prints at most 4,300).
MAX_INT_BITS = 14_000
#: The most characters a text may have.
MAX_TEXT = 1_000_000
#: The most items a list may have.
MAX_ITEMS = 1_000_000
#: The longest text that is read as a yes/no or a number.
MAX_ANSWER = 1_000
#: The most work one evaluation may do, in units of about a microsecond: one node evaluated or
#: item visited counts 1, a thousand characters copied or compared count 1, a hundred list items copied 1.
MAX_WORK = 100_000


_LISTS = (list, tuple)


def coerce_answer(value: Any) -> Any:
    """A string that reads as a bool or number becomes one ('yes', 'No.', '2', 'two'); else as is.

    Text of more than :data:`MAX_ANSWER` characters stays text: no answer word or number is that long.
    """
    if not isinstance(value, str) or len(value) > MAX_ANSWER:
        return value
    b = parse_bool(value)
    if b is not None:
        return b
    n = parse_number(value)
    return value if n is None else n


def is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def display(value: Any) -> str:
    """The text a value reads as inside a string literal: ``yes``/``no`` for booleans."""
    value = coerce_answer(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        return str(value)
    except ValueError:  # an int with more digits than str() converts
        return f"<int of {value.bit_length()} bits>" if isinstance(value, int) else "<value>"


def short_repr(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than repr() converts
        text = f"<int of {value.bit_length()} bits>" if isinstance(value, int) else "<value>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, str) and len(value) > 60:
        return f"str of {len(value):,} characters"
    if type(value) in (list, tuple, set, frozenset, dict):
        items, chars = measure(value, 100)
        if items > 60 or chars > 1000:  # too large to show: repr() alone would be the work
            return f"{type(value).__name__} of {len(value):,} items"
    try:
        text = describe_value(value)
    except ValueError:
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def text_of(value: Any) -> str | None:
    """Text for a substring test: strings as they are, bools as yes/no, numbers as digits."""
    if isinstance(value, str):
        return value
    if is_number(value):
        return display(value)
    return None


def measure(value: Any, limit: int) -> tuple[int, int]:
    """(items, characters) in ``value`` and the lists inside it; stops counting once items
    plus a thousandth of the characters pass ``limit`` (the walk itself stays bounded)."""
    items = chars = 0
    stack = [value]
    while stack and items + chars // 1000 <= limit:
        v = stack.pop()
        items += 1
        if isinstance(v, str):
            chars += len(v)
        elif isinstance(v, (list, tuple, set, frozenset, dict)):
            if items + len(v) > limit:
                return items + len(v), chars
            stack.extend(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            chars += v.bit_length() // 3
    return items, chars


class Meter:
    """Counts an evaluation's work against :data:`MAX_WORK` and checks sizes; raises :class:`EvalError`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.work = 0

    def error(self, message: str, column: int) -> EvalError:
        return EvalError(f"{message} at column {column}", self.text, column=column, detail=message)

    def charge(self, units: int, column: int) -> None:
        self.work += units
        if self.work > MAX_WORK:
            raise self.error("the expression does too much work (it makes or walks too many values)", column)

    def weight(self, value: Any) -> int:
        """The work of walking ``value`` (comparing it, printing it), counted up to what is left."""
        if isinstance(value, str):
            return 1 + len(value) // 1000
        if isinstance(value, int):
            return 1 + value.bit_length() // 3000
        if not isinstance(value, (list, tuple, set, frozenset, dict)):
            return 1
        items, chars = measure(value, MAX_WORK - self.work + 1)
        return items + chars // 1000

    def too_big(self, column: int) -> EvalError:
        return self.error(f"the result would be a number of more than {MAX_INT_BITS:,} bits", column)

    def check_text(self, size: int, column: int) -> None:
        if size > MAX_TEXT:
            raise self.error(f"the result would be {size:,} characters long; text is limited to {MAX_TEXT:,}", column)

    def check_items(self, size: int, column: int) -> None:
        if size > MAX_ITEMS:
            raise self.error(f"the result would have {size:,} items; lists are limited to {MAX_ITEMS:,}", column)

    def held(self, value: Any, column: int) -> int:
        """How many items ``value`` holds, the items of the lists inside it counted too (a list held
        twice counts twice): what printing it would walk. Counting stops past :data:`MAX_ITEMS`;
        each list is walked once however often it is held, and the walk is charged."""
        if not isinstance(value, _LISTS):
            return 0
        counts: dict[int, int] = {}
        stack: list[tuple[Any, bool]] = [(value, False)]
        walked = 0
        while stack:  # each list after the lists inside it; the item-by-item work is done by builtins
            v, inner_counted = stack.pop()
            if id(v) in counts:
                continue
            if not inner_counted:
                walked += len(v)
            if not any(issubclass(kind, _LISTS) for kind in set(map(type, v))):
                counts[id(v)] = len(v)
                continue
            inner = [c for c in dict(zip(map(id, v), v, strict=True)).values() if isinstance(c, _LISTS)]
            if inner_counted:
                times = Counter(map(id, v))
                counts[id(v)] = min(MAX_ITEMS + 1, len(v) + sum(counts[id(c)] * times[id(c)] for c in inner))
            else:
                stack.append((v, True))
                stack.extend((c, False) for c in inner if id(c) not in counts)
        self.charge(walked // 100, column)
        return counts[id(value)]

    def check_held(self, size: int, column: int) -> None:
        if size > MAX_ITEMS:
            raise self.error(
                f"the result would hold {size:,} items, counting those of the lists inside it; "
                f"lists are limited to {MAX_ITEMS:,}",
                column,
            )

    def text_result(self, pieces: list[str], column: int) -> str:
        """``''.join(pieces)``, its size checked first."""
        size = sum(len(p) for p in pieces)
        self.check_text(size, column)
        self.charge(size // 1000, column)
        return "".join(pieces)

    def shown(self, value: Any, column: int) -> str:
        """``display(value)``, its size estimated, checked and charged first."""
        items, chars = measure(value, MAX_WORK - self.work + 1)
        self.charge(items + chars // 1000, column)
        self.check_text(chars + 4 * (items - 1), column)
        return display(value)


def check_int(meter: Meter, value: Any, column: int) -> Any:
    """``value``, unless it is an integer of more than :data:`MAX_INT_BITS` bits."""
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise meter.too_big(column)
    return value
