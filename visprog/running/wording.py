"""How a trace puts a step and a failure into words.

:func:`step_call` writes a step's arguments as the program wrote them, each variable followed by a
short description of its value in brackets: ``image=IMAGE [512x512], object=OBJ0 [Objects (1)],
emoji='smiling_face'``. It reads the step's source line with the language's parser, so a trace read
back from JSON is written the same way. :func:`after_failure` says what a run did after its first
failing step: which steps ran after it (they did not need it) and which were not run (they did).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from PIL import Image as PILImage

from visprog.errors import VisprogError
from visprog.language import syntax
from visprog.language.parser import parse
from visprog.language.values import Objects, Template, describe_value

__all__ = ["after_failure", "brief", "lines", "step_call"]

#: the longest value description shown in brackets
_LONGEST = 60


@functools.lru_cache(maxsize=512)
def _call(source: str) -> syntax.Call | None:
    """The call of the one step on ``source``; ``None`` when it is not a single call that parses."""
    try:
        program = parse(source)
    except VisprogError:
        return None
    if len(program.steps) != 1:
        return None
    return program.steps[0].call


def step_call(source: str, inputs: Mapping[str, Any], output: Any) -> str | None:
    """The arguments of the step on ``source`` as written, each variable with its value from ``inputs``.

    Literals are shown as written; a variable as its name with its value's description in brackets,
    except where the value is the step's ``output`` (``Result(var=X)``, a module that returns the
    image it was given): it is shown once, as the output. An Eval expression is followed by the values
    bound to its variables. With no ``inputs`` (the step failed before its arguments were worked out)
    the arguments are shown as written. ``None`` when ``source`` is not one call or its arguments do
    not match ``inputs``.
    """
    call = _call(source)
    if call is None:
        return None
    names = list(inputs)
    if inputs and len(names) != len(call.args):
        return None
    result = call.module.replace("_", "").lower() == "result"  # its value is its output
    parts = []
    for k, arg in enumerate(call.args):
        name = names[k] if inputs else arg.name
        if arg.name and arg.name != name:
            return None
        text = syntax.written(arg.value)
        if inputs:
            note = None if result else _note(arg.value, inputs[name], output)
            if note:
                text += f" [{note}]"
        parts.append(f"{name}={text}" if name else text)
    return ", ".join(parts)


def _note(written: syntax.Value, value: Any, output: Any) -> str | None:
    if isinstance(value, Template):
        return ", ".join(f"{n}={_scalar(v)}" for n, v in value.bindings.items()) or None
    if isinstance(written, syntax.Literal) or (value is output and isinstance(value, (PILImage.Image, Objects))):
        return None  # literals as written; an image or objects passed through are shown as the output
    if isinstance(written, syntax.ListValue) and not _has_ref(written):
        return None
    return brief(value)


def _has_ref(value: syntax.Value) -> bool:
    if isinstance(value, syntax.Ref):
        return True
    return isinstance(value, syntax.ListValue) and any(_has_ref(v) for v in value.items)


def _cut(text: str) -> str:
    return text if len(text) <= _LONGEST else text[: _LONGEST - 3] + "..."


def brief(value: Any) -> str:
    """A value in a few words: an image as its size (``512x512``), other values as
    :func:`~visprog.language.values.describe_value` writes them (``Objects (1)``, ``int 2``)."""
    if isinstance(value, PILImage.Image):
        return f"{value.width}x{value.height}"
    return _cut(describe_value(value))


def _scalar(value: Any) -> str:
    """A value bound to an Eval variable: numbers, text and truth values as Python writes them."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return _cut(repr(value))
    return brief(value)


def lines(numbers: Iterable[int], last: str = ",") -> str:
    """``line 3``, ``lines 3, 6`` (or ``lines 2 and 6`` with ``last="and"``)."""
    ns = [str(n) for n in numbers]
    if len(ns) == 1:
        return f"line {ns[0]}"
    if last == "and":
        return f"lines {', '.join(ns[:-1])} and {ns[-1]}"
    return f"lines {', '.join(ns)}"


def after_failure(after: Sequence[tuple[int, bool]], skipped: Sequence[tuple[int, Sequence[int]]]) -> str:
    """What happened after a run's first failing step, in words.

    ``after``: the steps that ran after it (line, whether it failed too); ``skipped``: the steps not
    run (line, the lines of the failed steps it needs). ``"ran after it: lines 3, 6 (independent of
    it); not run: lines 4, 5 (they need line 2)"``, or ``"no step ran after it"``.
    """
    parts = []
    if after:
        also = sorted(n for n, bad in after if bad)
        extra = f"; {lines(also)} failed too" if also else ""
        parts.append(f"ran after it: {lines(sorted(n for n, _ in after))} (independent of it{extra})")
    if skipped:
        groups: dict[tuple[int, ...], list[int]] = {}
        for n, needs in sorted(skipped):
            groups.setdefault(tuple(sorted(needs)), []).append(n)
        parts.append(
            "not run: "
            + ", ".join(
                f"{lines(ns)} ({'they need' if len(ns) > 1 else 'it needs'} {lines(needs, 'and')})"
                for needs, ns in groups.items()
            )
        )
    return "; ".join(parts) if parts else "no step ran after it"
