"""Value types of the VisProg language, the typed vision data, and coercions.

The language has a small closed set of types. A module's Python annotations
map onto them (:func:`type_of_annotation`); the checker propagates them
through a program (:func:`assignable`); the interpreter converts run-time
values that only became known at run time (:func:`coerce`).
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from PIL import Image as _PILImage

if TYPE_CHECKING:  # numpy is imported where masks are used: checking a program never needs it
    import numpy as np

__all__ = [
    "Detection",
    "Image",
    "Objects",
    "Template",
    "Type",
    "assignable",
    "coerce",
    "describe_value",
    "parse_bool",
    "parse_number",
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


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected object: a box in pixels (x0, y0, x1, y1), a score, a label, an optional mask.

    ``mask`` is a boolean array of the image's height and width.
    """

    box: tuple[float, float, float, float]
    score: float = 1.0
    label: str = ""
    mask: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.box) != 4:
            raise ValueError(f"Detection box needs 4 numbers (x0, y0, x1, y1), got {self.box!r}")
        x0, y0, x1, y1 = (float(v) for v in self.box)
        if not (x1 >= x0 and y1 >= y0):
            raise ValueError(f"Detection box must have x1 >= x0 and y1 >= y0, got {self.box!r}")
        object.__setattr__(self, "box", (x0, y0, x1, y1))
        object.__setattr__(self, "score", float(self.score))
        if self.mask is not None:
            import numpy as np

            mask = np.asarray(self.mask)
            if mask.ndim != 2:
                raise ValueError(f"Detection mask must be 2-D (height, width), got shape {mask.shape}")
            object.__setattr__(self, "mask", mask.astype(bool, copy=False))

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    def int_box(self, size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """The box rounded to whole pixels, clipped to ``size`` (width, height) when given."""
        x0, y0, x1, y1 = (round(v) for v in self.box)
        if size is not None:
            w, h = size
            x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
            y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
        return (x0, y0, x1, y1)

    def region(self, size: tuple[int, int]) -> np.ndarray:
        """The object's pixels as a boolean (height, width) array: its mask, else its box."""
        w, h = size
        if self.mask is not None:
            if self.mask.shape != (h, w):
                raise ValueError(f"mask of shape {self.mask.shape} does not match an image of {w}x{h}")
            return self.mask
        import numpy as np

        out = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = self.int_box(size)
        out[y0:y1, x0:x1] = True
        return out

    def with_label(self, label: str, score: float | None = None) -> Detection:
        return Detection(self.box, self.score if score is None else score, label, self.mask)


#: The language's object list: detections, best first.
Objects = list[Detection]

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


_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update({"none": 0, "no": 0, "a": 1, "an": 1, "single": 1, "a single": 1})
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
    if words and t in _NUMBER_WORDS and t not in ("no", "none", "a", "an"):
        return _NUMBER_WORDS[t]
    return None


def describe_value(value: Any) -> str:
    """A short human description of a value for messages and traces."""
    t = type_of_value(value)
    if t is Type.IMAGE:
        return f"Image {value.width}x{value.height}"
    if t is Type.OBJECTS:
        return f"Objects ({len(value)})"
    if isinstance(value, list) and not value:
        return "empty list"
    if t is Type.ANY:
        return type(value).__name__
    return f"{t} {value!r}"


#: Values of exactly these Python types need no conversion (the common case, checked first).
_EXACT: dict[Type, type] = {Type.STR: str, Type.INT: int, Type.FLOAT: float, Type.BOOL: bool}


def exact_type(expected: Type) -> type | None:
    """The Python type whose values :func:`coerce` returns unchanged for ``expected`` (``None``: no such one)."""
    return _EXACT.get(expected)


def coerce(value: Any, expected: Type, optional: bool = False) -> Any:
    """Convert a run-time value to ``expected``; raise ``TypeError`` saying expected vs. got.

    Strings answered by models become numbers ('2', 'two') or booleans
    ('yes', 'no') where those are expected; an empty list is a valid Objects.
    """
    if expected is Type.ANY or expected is Type.TEMPLATE or type(value) is _EXACT.get(expected):
        return value
    if value is None:
        if optional:
            return None
        raise TypeError(f"expected {expected}, got None")
    if expected is Type.IMAGE and isinstance(value, _PILImage.Image):
        return value
    if expected is Type.OBJECTS and isinstance(value, list):
        if all(isinstance(v, Detection) for v in value):
            return value
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
