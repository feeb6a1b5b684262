"""What running a checked program needs, worked out once per program.

The :class:`RunPlan` of a :class:`~visprog.language.checker.CheckedProgram`
says which steps wait for which, and for each argument of each step where its
value comes from and whether it needs converting. The interpreter computes it
the first time it runs a program and keeps it on the program.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from visprog.language import syntax
from visprog.language.checker import CheckedProgram, CheckedStep
from visprog.language.values import Type, coerce, exact_type

__all__ = [
    "INPUT",
    "LITERAL",
    "OTHER",
    "TEMPLATE",
    "VALUE",
    "ArgPlan",
    "Remap",
    "RunPlan",
    "lookup",
    "resolve",
    "step_args",
]

_EXACT: dict[Type | None, type] = {t: exact for t in Type if (exact := exact_type(t)) is not None}


# How one argument of a step gets its value, worked out once per checked program: a tuple
# (name, kind, payload, to_type, optional, exact). ``kind`` says what ``payload`` is: the literal's
# (converted) value, the input's name, the index of the step whose value it is, the template, or an
# ast value (a list) resolved each run. ``to_type``: the type to convert to (None: none needed);
# values of exactly the Python type ``exact`` need no conversion.
LITERAL, INPUT, VALUE, TEMPLATE, OTHER = range(5)
ArgPlan = tuple[str, int, Any, "Type | None", bool, "type | None"]


@dataclass(frozen=True)
class Remap:
    """An Objects argument to map onto the step's image: from the frame its objects were found in
    (``src``, a path of crop steps) to the image's (``dst``); ``image`` is the image argument."""

    arg: str
    variable: str
    image: str
    src: tuple[int, ...]
    dst: tuple[int, ...]
    #: the two frames as the trace names them ("IMAGE", "IMAGE0, a crop of IMAGE")
    src_name: str
    dst_name: str


class RunPlan:
    """What running a checked program needs, computed once and kept on the program (:meth:`of`).

    ``successors`` and ``indegree`` replace a topological sorter (the checker guarantees the graph
    is acyclic); ``args`` says for each step where each argument comes from.
    """

    __slots__ = ("args", "crops", "indegree", "remaps", "result_var", "returns", "successors")

    def __init__(self, checked: CheckedProgram) -> None:
        n = len(checked.steps)
        self.successors: list[list[int]] = [[] for _ in range(n)]
        self.indegree = [0] * n
        for step in checked.steps:  # in index order, so each successor list comes out sorted
            before = {src for src in step.sources.values() if type(src) is int}
            self.indegree[step.index] = len(before)
            for src in before:
                self.successors[src].append(step.index)
        self.args = [step_args(s) for s in checked.steps]
        #: per step: the Python type whose outputs need no check (``None``: check every output)
        self.returns = [_EXACT.get(s.spec.returns) if s.spec is not None else None for s in checked.steps]
        self.result_var = checked.steps[checked.result].step.target
        #: per step: whether it returns a crop (:class:`~visprog.language.frames.Cropped`)
        self.crops = [s.spec is not None and s.spec.crops for s in checked.steps]
        #: per step: its Objects arguments to map onto its image (``None``: none)
        self.remaps = [_remaps(s, checked) or None for s in checked.steps]

    @staticmethod
    def of(checked: CheckedProgram) -> RunPlan:
        # Kept in the frozen program's instance dict (like functools.cached_property does).
        plan = checked.__dict__.get("_interpreter_plan")
        if plan is None:
            plan = checked.__dict__["_interpreter_plan"] = RunPlan(checked)
        assert isinstance(plan, RunPlan)
        return plan


def _remaps(s: CheckedStep, checked: CheckedProgram) -> tuple[Remap, ...]:
    if not s.remap or s.spec is None or s.spec.frame is None:
        return ()
    call = s.step.call
    assert call is not None
    targets = {t.index: t.step.target for t in checked.steps}
    written = {a.name: syntax.written(a.value) for a in call.args}
    return tuple(
        Remap(
            name,
            written[name],
            s.spec.frame,
            src.path,
            dst.path,
            src.describe(targets),
            dst.describe(targets),
        )
        for name, (src, dst) in s.remap.items()
    )


def step_args(s: CheckedStep) -> tuple[ArgPlan, ...]:
    if s.spec is None:
        assert not isinstance(s.step.expr, syntax.Call)
        return (_arg("value", s.step.expr, s, None, False),)
    call = s.step.call
    assert call is not None
    out: list[ArgPlan] = []
    for arg in call.args:
        param = s.spec.param(arg.name)
        assert param is not None  # the checker guarantees it
        if param.type is Type.TEMPLATE:
            out.append((arg.name, TEMPLATE, s.templates[arg.name], None, param.optional, None))
        else:
            out.append(_arg(arg.name, arg.value, s, param.type, param.optional))
    return tuple(out)


def _arg(name: str, value: syntax.Value, s: CheckedStep, type_: Type | None, optional: bool) -> ArgPlan:
    to_type = None if type_ is None or type_ is Type.ANY else type_
    if isinstance(value, syntax.Literal):
        if to_type is None:
            return (name, LITERAL, value.value, None, optional, None)
        try:  # a literal converts the same way every run: do it once
            return (name, LITERAL, coerce(value.value, to_type, optional), None, optional, None)
        except TypeError:  # reported when the step runs
            return (name, LITERAL, value.value, to_type, optional, None)
    exact = _EXACT.get(to_type)
    if isinstance(value, syntax.Ref):
        source = s.sources[value.name]
        return (name, INPUT if type(source) is str else VALUE, source, to_type, optional, exact)
    return (name, OTHER, value, to_type, optional, exact)


def lookup(s: CheckedStep, name: str, values: dict[int, Any], inputs: Mapping[str, Any]) -> Any:
    """The value of variable ``name`` as step ``s`` sees it: a program input or an earlier step's value."""
    source = s.sources[name]
    return inputs[source] if isinstance(source, str) else values[source]


def resolve(s: CheckedStep, v: syntax.Value, values: dict[int, Any], inputs: Mapping[str, Any]) -> Any:
    """The run-time value of an argument written as ``v`` (a literal, a variable, a list of them)."""
    if isinstance(v, syntax.Literal):
        return v.value
    if isinstance(v, syntax.ListValue):
        return [resolve(s, item, values, inputs) for item in v.items]
    return lookup(s, v.name, values, inputs)
