"""Eval and Result: the modules that compute on values instead of pixels."""

from __future__ import annotations

from typing import Any

from visprog.language.signatures import module
from visprog.language.values import Template


@module(aliases=["EVAL"])
def Eval(expr: Template) -> Any:
    """Compute a value from earlier results with a small safe expression language.

    Args:
        expr: an expression over earlier variables written as {NAME}, e.g.
            "'yes' if {ANSWER0} > 0 else 'no'". Supports arithmetic, comparisons,
            and/or/not/xor, a if c else b, strings, numbers, lists, x in [...],
            indexing and slicing, len/min/max/abs/round/int/float/str/bool/sum/any/all
            and the text methods lower/upper/strip/title/startswith/endswith/replace/split.
    """
    return expr.evaluate()


@module(aliases=["RESULT"])
def Result(var: Any) -> Any:
    """Mark the program's output.

    Args:
        var: the value the program returns.
    """
    return var
