"""Value types of the VisProg language, and coercions.

The language has a small closed set of types. A module's Python annotations
map onto them (:func:`type_of_annotation`); the checker propagates them
through a program (:func:`assignable`); the interpreter converts run-time
values that only became known at run time (:func:`coerce`). The vision data,
:class:`Detection` and :class:`Objects` with its operations, live in
:mod:`visprog.language.objects` and are re-exported here.
"""

from __future__ import annotations

import abc
import enum
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Union, get_args, get_origin

from PIL import Image as _PILImage

from visprog.language.objects import Detection, Objects

__all__ = [
    "DESCRIBE_LIMIT",
    "NUMBER_WORDS",
    "Detection",
    "Image",
    "Objects",
    "Template",
    "Type",
    "answer_key",
    "assignable",
    "coerce",
    "describe_value",
    "normalize_answer",
    "parse_bool",
    "parse_number",
    "same_answer",
    "type_of_annotation",
    "type_of_value",
]

#: The image type modules receive and return.
Image = _PILImage.Image


class Template(abc.ABC):
    """An Eval expression with its ``{VAR}`` placeholders bound to values.

    Annotate a module parameter with ``Template`` to receive one. The program
    passes a string such as ``"'yes' if {ANSWER0} > 0 else 'no'"``; the
    checker parses it and adds the variables it names to the step's
    dependencies; the module receives it parsed and bound, ready to
    :meth:`evaluate`. No Python ``eval`` is involved.
    """

    text: str

    @property
    @abc.abstractmethod
    def bindings(self) -> dict[str, Any]:
        """The value bound to each variable the expression names."""

    @abc.abstractmethod
    def evaluate(self) -> Any:
        """The expression's value; raises :class:`visprog.errors.EvalError`."""


class Type(enum.Enum):
    """A value type in the VisProg language."""

    IMAGE = "Image"
    OBJECTS = "Objects"
    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    LIST_STR = "list[str]"
    #: a list that is not all strings (only an ``Any`` parameter accepts it)
    LIST = "list"
    TEMPLATE = "expression"
    NONE = "None"
    ANY = "any"

    def __str__(self) -> str:
        return self.value

    # Members are singletons compared by identity: hash them the same way (Enum's own hash is a Python call).
    __hash__ = object.__hash__


_SCALARS: dict[Any, Type] = {
    str: Type.STR,
    int: Type.INT,
    float: Type.FLOAT,
    bool: Type.BOOL,
    Template: Type.TEMPLATE,
    Any: Type.ANY,
    object: Type.ANY,
}


def type_of_annotation(annotation: Any) -> tuple[Type, bool]:
    """Map a resolved Python annotation to (language type, optional).

    Raises ``TypeError`` for annotations the language cannot express.
    """
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    if isinstance(annotation, type) and issubclass(annotation, _PILImage.Image):
        return Type.IMAGE, False
    if isinstance(annotation, type) and issubclass(annotation, Objects):
        return Type.OBJECTS, False
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, Sequence) and args == (Detection,):
        return Type.OBJECTS, False
    if origin in (list, Sequence) and args == (str,):
        return Type.LIST_STR, False
    if origin is Union or type(annotation).__name__ == "UnionType":
        members = [a for a in args if a is not type(None)]
        if len(members) == 1 and len(args) == 2:
            inner, _ = type_of_annotation(members[0])
            return inner, True
    raise TypeError(
        f"unsupported type {annotation!r}; use Image, Objects, str, int, float, bool, "
        "list[str], Template or Any (optionally '| None')"
    )


def type_of_value(value: Any) -> Type:
    """The language type of a run-time value (``Type.ANY`` when it has none)."""
    if value is None:
        return Type.NONE
    if isinstance(value, bool):
        return Type.BOOL
    if isinstance(value, int):
        return Type.INT
    if isinstance(value, float):
        return Type.FLOAT
    if isinstance(value, str):
        return Type.STR
    if isinstance(value, _PILImage.Image):
        return Type.IMAGE
    if isinstance(value, Objects):
        return Type.OBJECTS
    if isinstance(value, list):
        if all(isinstance(v, Detection) for v in value) and value:
            return Type.OBJECTS
        if all(isinstance(v, str) for v in value):
            return Type.LIST_STR if value else Type.ANY
        return Type.LIST
    return Type.ANY


def assignable(actual: Type, expected: Type, optional: bool = False) -> bool:
    """Whether a value of type ``actual`` may be passed where ``expected`` is declared."""
    if actual is expected or Type.ANY in (actual, expected):
        return True
    if actual is Type.NONE:
        return optional
    if expected is Type.FLOAT and actual is Type.INT:
        return True
    if expected is Type.TEMPLATE and actual is Type.STR:
        return True
    # VisProg writes category lists as one comma-separated string.
    return expected is Type.LIST_STR and actual is Type.STR


#: The number words, zero to twenty, by value: the one table for reading answers as numbers and for scoring them.
NUMBER_WORDS: Mapping[str, int] = MappingProxyType(
    {
        w: i
        for i, w in enumerate(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
        )
    }
)
#: What parse_number also reads as a count ('a single' cat); 'no', 'none', 'a', 'an' stay words.
_NUMBER_WORDS = {**NUMBER_WORDS, "single": 1, "a single": 1}
_NUMBER_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_TRUE = {"yes", "true", "y"}
_FALSE = {"no", "false", "n"}


def _clean(text: str) -> str:
    return text.strip().strip(".!").strip().lower()


def parse_bool(text: str) -> bool | None:
    """'yes'/'no' (and 'true'/'false') to a bool; None when the text is neither."""
    t = _clean(text)
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    return None


def parse_number(text: str, *, words: bool = True) -> int | float | None:
    """'2', '2.5', 'two' to a number; None when the text is not one."""
    t = _clean(text)
    if _NUMBER_RE.match(t):
        f = float(t)
        return int(f) if f.is_integer() and not re.search(r"[.eE]", t) else f
    if words and t in _NUMBER_WORDS:
        return _NUMBER_WORDS[t]
    return None


# -- equal answers: one rule for voting and for scoring ---------------------------------------

_ARTICLES = frozenset({"a", "an", "the"})
_ANSWER_NUMBERS = {w: str(i) for w, i in NUMBER_WORDS.items()}
_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")


def _by_value(text: str) -> str:
    """A decimal number written by its value: ``2.50`` → ``2.5``, ``1.0`` → ``1``, ``007`` → ``7``."""
    from decimal import Decimal

    out = format(Decimal(text).normalize(), "f")
    return "0" if out in ("-0", "0") else out


def normalize_answer(value: Any) -> str:
    """A VQA-style normal form: lower case, no punctuation or articles, number words as digits, yes/no for booleans.

    ``True``, ``'True'``, ``'true'`` and ``'yes'`` all become ``'yes'``; ``False``/``'False'``/``'no'`` ``'no'``
    (single letters such as ``'y'`` stay themselves). Numbers are written by their value, so they compare
    by value: ``'2.50'``, ``2.5`` and ``'2.5'`` are ``'2.5'``; ``'1.0'``, ``1.0`` and ``'one'`` are ``'1'``;
    ``'1,000'`` is ``'1000'``.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _by_value(repr(value)) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return " ".join(normalize_answer(v) for v in value)
    text = str(value).lower().strip()
    chars = []
    for i, c in enumerate(text):
        between_digits = 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        # keep a decimal point between digits (2.5) and a minus sign before a number; a comma in 1,000 is dropped
        if c == "." and between_digits:
            chars.append(c)
        elif c == "-" and i + 1 < len(text) and text[i + 1].isdigit() and (i == 0 or text[i - 1].isspace()):
            chars.append(c)
        elif c == ",":
            chars.append("" if between_digits else " ")
        elif c in _PUNCTUATION:
            chars.append(" " if c in "-/" else "")
        else:
            chars.append(c)
    words = [_ANSWER_NUMBERS.get(w, w) for w in "".join(chars).split() if w not in _ARTICLES]
    out = " ".join(_by_value(w) if _DECIMAL.fullmatch(w) else w for w in words)
    if out in ("yes", "true"):
        return "yes"
    if out in ("no", "false"):
        return "no"
    return out


def answer_key(value: Any) -> Hashable:
    """What makes two answers the same answer, for voting and for scoring alike.

    Text, numbers, booleans, ``None`` and lists of them compare by :func:`normalize_answer`
    (``'yes'`` equals ``True``, ``'2.0'`` equals ``2``, ``'The Dog.'`` equals ``'dog'``); any
    other value (an image, found objects) is only the same as itself.
    """
    if _plain(value):
        return normalize_answer(value)
    return ("object", id(value))


def same_answer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same answer (see :func:`answer_key`)."""
    return a is b or answer_key(a) == answer_key(b)


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    return isinstance(value, (list, tuple)) and all(_plain(v) for v in value)


#: The most characters :func:`describe_value` writes of a value; a longer one is shortened, ending in ``...``.
DESCRIBE_LIMIT = 1_000
#: Integers of more bits are described by their number of digits: Python writes at most 4,300 digits.
_INT_BITS_SHOWN = 14_000
#: Lists nested deeper are shown as ``[...]``.
_DEPTH_SHOWN = 20


def describe_value(value: Any, limit: int | None = None) -> str:
    """A short human description of a value for messages and traces.

    At most ``limit`` characters (default :data:`DESCRIBE_LIMIT`): a value too large to print
    (a long text, a long or deeply nested list, an integer of thousands of digits) is shown
    shortened, and only what is shown is ever written out.
    """
    limit = DESCRIBE_LIMIT if limit is None else max(limit, 4)
    t = type_of_value(value)
    if t is Type.IMAGE:
        return f"Image {value.width}x{value.height}"
    if t is Type.OBJECTS:
        return f"Objects ({len(value)})"
    if isinstance(value, list) and not value:
        return "empty list"
    if t is Type.ANY:
        return type(value).__name__
    text = f"{t} {_written(value, limit, 0)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _written(value: Any, room: int, depth: int) -> str:
    """``repr(value)``, cut a little past ``room`` characters (and never written out further)."""
    if isinstance(value, str):
        text = repr(value[: room + 1])
        return text if len(value) <= room else text[:-1] + "..." + text[-1]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _INT_BITS_SHOWN:
        return f"<int of about {int(value.bit_length() * math.log10(2)) + 1:,} digits>"
    containers = {list: "[]", tuple: "()", set: "{}", frozenset: "{}", dict: "{}"}
    brackets = next((b for kind, b in containers.items() if isinstance(value, kind)), None)
    if brackets is None:
        try:
            text = repr(value)
        except ValueError:  # an int subclass, or an object whose repr fails on its size
            text = f"<{type(value).__name__}>"
        return text if len(text) <= room else text[:room] + "..."
    if depth >= _DEPTH_SHOWN:
        return brackets[0] + "..." + brackets[1]
    parts: list[str] = []
    used = 2
    items = value.items() if isinstance(value, dict) else value
    for item in items:
        if used > room:
            parts.append("...")
            break
        if isinstance(value, dict):
            key = _written(item[0], room - used, depth + 1)
            text = f"{key}: {_written(item[1], room - used - len(key) - 2, depth + 1)}"
        else:
            text = _written(item, room - used, depth + 1)
        parts.append(text)
        used += len(text) + 2
    return brackets[0] + ", ".join(parts) + brackets[1]


#: Values of exactly these Python types need no conversion (the common case, checked first).
_EXACT: dict[Type, type] = {Type.STR: str, Type.INT: int, Type.FLOAT: float, Type.BOOL: bool, Type.OBJECTS: Objects}


def exact_type(expected: Type) -> type | None:
    """The Python type whose values :func:`coerce` returns unchanged for ``expected`` (``None``: no such one)."""
    return _EXACT.get(expected)


def _array_image(value: Any) -> _PILImage.Image:
    """A numpy array a module returned as an image: (height, width), (height, width, 1|3|4); uint8, bool, or
    float in 0..1. Raises ``TypeError`` saying what the array is when it is none of these."""
    import numpy as np

    array = np.asarray(value)
    shape = array.shape
    if array.ndim == 3 and shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape:
        raise TypeError(f"expected Image, got an array of shape {shape} (an image is HxW, HxWx3 or HxWx4)")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        array = (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(f"expected Image, got an array of {array.dtype} (use uint8, bool, or float in 0..1)")
    mode = "L" if array.ndim == 2 else ("RGB" if array.shape[2] == 3 else "RGBA")
    return _PILImage.fromarray(np.ascontiguousarray(array), mode)


def coerce(value: Any, expected: Type, optional: bool = False) -> Any:
    """Convert a run-time value to ``expected``; raise ``TypeError`` saying expected vs. got.

    Strings answered by models become numbers ('2', 'two') or booleans
    ('yes', 'no') where those are expected; a plain list of detections (an
    empty one too) becomes :class:`Objects`.
    """
    if expected is Type.ANY or expected is Type.TEMPLATE or type(value) is _EXACT.get(expected):
        return value
    if value is None:
        if optional:
            return None
        raise TypeError(f"expected {expected}, got None")
    if expected is Type.IMAGE and isinstance(value, _PILImage.Image):
        return value
    if expected is Type.IMAGE and hasattr(value, "__array_interface__"):
        return _array_image(value)
    if expected is Type.OBJECTS and isinstance(value, list):
        if isinstance(value, Objects):
            return value
        if all(isinstance(v, Detection) for v in value):
            return Objects(value)
    if expected is Type.STR:
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)):
            return ("yes" if value else "no") if isinstance(value, bool) else str(value)
    if expected is Type.BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and (b := parse_bool(value)) is not None:
            return b
        if isinstance(value, int):
            return value != 0
    if expected in (Type.INT, Type.FLOAT):
        number: Any = value
        if isinstance(value, str):
            number = parse_number(value)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if expected is Type.FLOAT:
                return float(number)
            if float(number).is_integer():
                return int(number)
    if expected is Type.LIST_STR:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
    raise TypeError(f"expected {expected}, got {describe_value(value)}")
