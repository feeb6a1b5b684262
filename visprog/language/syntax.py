"""The parsed form of a VisProg program: frozen dataclasses with positions.

Lines and columns are 1-based, as in the error messages.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from visprog.errors import Diagnostic

__all__ = [
    "CONSTANTS",
    "RESULT_NAMES",
    "Arg",
    "Call",
    "ListValue",
    "Literal",
    "Program",
    "Ref",
    "Step",
    "Value",
    "split_lines",
    "written",
]

#: Targets that mark the program's output when assigned directly (``RESULT=X``).
RESULT_NAMES = frozenset({"RESULT", "FINAL_RESULT", "FINAL_ANSWER"})

#: Names that are values, not references: ``True``, ``False`` and ``None``.
CONSTANTS: Mapping[str, bool | None] = {"True": True, "False": False, "None": None}


def split_lines(text: str) -> list[str]:
    """The program's lines as the grammar counts them: split at ``\n``, a ``\r`` before it dropped
    (the grammar's ``_NL``; :func:`visprog.language.tokens.tokenize` ends lines the same way)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _quoted(text: str) -> str:
    """A string in single quotes, or in double quotes when it holds a single quote and no double one."""
    quote = '"' if "'" in text and '"' not in text else "'"
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    out = out.replace("\0", "\\0").replace(quote, "\\" + quote)
    return quote + out + quote


def _number(value: int | float) -> str:
    if isinstance(value, float) and value != value:  # NaN: no literal reads as it
        raise ValueError("NaN has no literal")
    if value in (float("inf"), float("-inf")):  # a literal too large for a float reads as infinity
        return "1e999" if value > 0 else "-1e999"
    return repr(value)


def written(value: Value) -> str:
    """``value`` as the canonical program text writes it: strings in single quotes (double quotes
    when they hold a single quote), numbers as Python writes them, lists as ``[a, b]``.

    Parsing the text gives back the same value (positions aside).
    """
    if isinstance(value, Ref):
        return value.name
    if isinstance(value, ListValue):
        return "[" + ", ".join(written(item) for item in value.items) + "]"
    v = value.value
    if v is None or isinstance(v, bool):
        return str(v)
    if isinstance(v, str):
        return _quoted(v)
    return _number(v)


@dataclass(frozen=True)
class Literal:
    """A string, int, float, bool or None written in the program."""

    value: str | int | float | bool | None
    line: int
    column: int


@dataclass(frozen=True)
class Ref:
    """A reference to a variable or an input (``IMAGE``, ``BOX0``)."""

    name: str
    line: int
    column: int


@dataclass(frozen=True)
class ListValue:
    """A list of values: ``['cat', 'dog']``."""

    items: tuple[Value, ...]
    line: int
    column: int


Value = Literal | Ref | ListValue


@dataclass(frozen=True)
class Arg:
    """``name=value`` inside a call, or a positional ``value``.

    ``positional`` says how the argument was written. The parser leaves the name of a positional
    argument empty; the checker binds it to the module's parameter in declaration order, so every
    argument of a checked program has its name (and keeps ``positional`` as written).
    """

    name: str
    value: Value
    line: int
    column: int
    positional: bool = False


@dataclass(frozen=True)
class Call:
    """``Module(arg=value, ...)``; ``module`` is the name as written."""

    module: str
    args: tuple[Arg, ...]
    line: int
    column: int


@dataclass(frozen=True)
class Step:
    """One line: ``TARGET=Module(...)`` or the bare ``TARGET=value``."""

    target: str
    expr: Call | Value
    line: int
    column: int
    source: str

    @property
    def call(self) -> Call | None:
        return self.expr if isinstance(self.expr, Call) else None

    @property
    def is_result(self) -> bool:
        """Whether this step marks the program's output: ``Result(...)``, or assigned to RESULT,
        FINAL_RESULT or FINAL_ANSWER."""
        if isinstance(self.expr, Call) and self.expr.module.replace("_", "").lower() == "result":
            return True
        return self.target in RESULT_NAMES


@dataclass(frozen=True)
class Program:
    """A parsed program: its source text (as written) and its steps in order.

    ``warnings`` are what the parser accepted but the writer should know (an apostrophe read as part
    of the string it ended early); the checker passes them on.
    """

    source: str
    steps: tuple[Step, ...]
    warnings: tuple[Diagnostic, ...] = ()

    @functools.cached_property
    def lines(self) -> tuple[str, ...]:
        """The source's lines (:func:`split_lines`), split once: diagnostics read them by number."""
        return tuple(split_lines(self.source))

    def source_line(self, line: int) -> str:
        lines = self.lines
        return lines[line - 1] if 0 < line <= len(lines) else ""
