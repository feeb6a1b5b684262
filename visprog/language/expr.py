"""Eval expressions: a tiny, safe expression language over ``{NAME}`` placeholders.

A template such as ``"'yes' if {ANSWER0} > 0 else 'no'"`` is parsed once into
a tree of frozen dataclasses (:mod:`visprog.language.expr_syntax`, grammar in
``expr.lark``); values are bound to its placeholders afterwards and the tree
is walked by :mod:`visprog.language.expr_eval` (functions and text methods in
:mod:`visprog.language.expr_functions`, bounds on the work in
:mod:`visprog.language.expr_limits`) to compute the result; :mod:`visprog.language.expr_check`
checks an expression against the types of its variables before anything runs. No
text is ever turned into Python code, so a bound value can only ever be data.

Semantics follow Python (precedence, chained comparisons, short-circuiting
``and``/``or``/``if``, truthiness, lists, indexing and slicing, ``**``, ``is``
with True/False/None, ``int str len max ...``, ``.lower() .split() ...``), with
``xor`` and ``^`` between ``or`` and ``and``, a bare ``NAME`` meaning ``{NAME}``,
plus coercions for answers that models give as text:

* a string bound to a placeholder that reads as a boolean (``'yes'``,
  ``'No.'``, ``'true'``) becomes a ``bool``; one that reads as a number
  (``'2'``, ``'2.5'``, ``'two'``) becomes a number; others stay strings;
* comparisons and arithmetic apply the same coercion to string operands, so
  ``{A} == 'yes'`` and ``{A} == 2`` work whether ``A`` is ``'yes'``/``True``
  or ``'two'``/``2``;
* ``{NAME}`` inside a string literal is replaced by the value's text
  (booleans read ``yes``/``no``); write ``\\{`` for a literal brace;
* text operations (indexing, slicing, ``len``, methods) see an answer as
  written: ``{A}.lower()`` of ``'Yes'`` is ``'yes'``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from visprog.errors import EvalError
from visprog.language.expr_eval import Evaluator
from visprog.language.expr_limits import coerce_answer, short_repr
from visprog.language.expr_syntax import Node, parse_tree
from visprog.language.values import Template

__all__ = [
    "BoundExpression",
    "Expression",
    "bare_name_hint",
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
    root, columns, bare = parse_tree(text)
    return Expression(text, tuple(columns), columns, root, bare)


@dataclass(frozen=True)
class Expression:
    """A parsed template, not yet bound to values. Immutable; get one from :func:`parse_template`."""

    text: str
    #: Variables named, in order of first appearance (inside string literals too).
    variables: tuple[str, ...]
    #: 1-based column of each variable's first appearance.
    variable_columns: dict[str, int] = field(compare=False)
    tree: Node = field(repr=False, compare=False)
    #: The variables only ever written as a bare ``NAME`` (without braces): a missing one is likely meant as text.
    bare_names: frozenset[str] = field(default=frozenset(), compare=False)

    def bind(self, values: Mapping[str, Any]) -> BoundExpression:
        """Bind each variable to its value; raises :class:`EvalError` if one is missing."""
        missing = [name for name in self.variables if name not in values]
        if missing:
            name = missing[0]
            column = self.variable_columns[name]
            if name in self.bare_names:
                detail = f"unknown name {name!r}: {bare_name_hint(name)}"
                raise EvalError(
                    f"unknown name {name!r} at column {column}: {bare_name_hint(name)}",
                    self.text,
                    column=column,
                    detail=detail,
                )
            known = ", ".join(sorted(str(k) for k in values)) or "none"
            raise EvalError(
                f"variable {name!r} at column {column} has no value (known variables: {known})",
                self.text,
                column=column,
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
            evaluator = Evaluator(self.text, self._coerced, self._values)
            return evaluator.value(self.expression.tree)
        except RecursionError:
            raise EvalError("expression is nested too deeply", self.text, column=1) from None

    def __str__(self) -> str:
        """The expression as written, then each variable's value: ``{A} == 2 (with A='2')``."""
        if not self._values:
            return self.text
        bound = ", ".join(f"{name}={short_repr(value)}" for name, value in self._values.items())
        return f"{self.text} (with {bound})"

    def __repr__(self) -> str:
        return f"BoundExpression({self.text!r}, {short_repr(self._values)})"


def bare_name_hint(name: str) -> str:
    """What to write instead of a bare ``name`` that is no variable: text in quotes, or a variable."""
    return f"it is no variable; write text in quotes ('{name}') and variables in braces ({{{name}}})"


def evaluate(text: str, values: Mapping[str, Any]) -> Any:
    """Parse ``text``, bind ``values`` and evaluate: ``parse_template(text).bind(values).evaluate()``."""
    return parse_template(text).bind(values).evaluate()
