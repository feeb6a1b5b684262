"""Static checks of an Eval expression against the types of its variables, before anything runs.

:func:`static_check` finds what would fail or mean nothing at run time, each with
its 1-based column in the expression (the checker maps it into the program):

* a bare ``NAME`` that is no variable (most likely text written without quotes);
* an ``Objects`` or ``Image`` value used as a number, or compared with one
  (``{BOX0} > 0``: count the objects with ``Count(box=BOX0)``);
* a text literal that reads as no number compared with a number (``{N} > 'many'``,
  ``{N} == 'cat'``).
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping

from visprog.errors import EvalError
from visprog.language.expr import Expression, bare_name_hint
from visprog.language.expr_limits import coerce_answer
from visprog.language.expr_syntax import BinaryOp, Call, Compare, Const, Node, Sign, Var
from visprog.language.values import Type

__all__ = ["static_check"]

#: What the checks know of a value: a number, text that reads as no number, objects, an image; else nothing.
_KINDS = {Type.INT: "number", Type.FLOAT: "number", Type.OBJECTS: "objects", Type.IMAGE: "image"}
_NUMBER_FUNCTIONS = frozenset({"int", "float", "len", "abs", "round", "sum"})
_ORDERING = frozenset({"<", "<=", ">", ">="})


def static_check(
    expression: Expression, types: Mapping[str, Type], elsewhere: Container[str] = frozenset()
) -> list[EvalError]:
    """The problems of ``expression`` given the ``types`` of the variables that have a value here.

    A variable missing from ``types`` is reported only when it is written as a bare ``NAME``
    and is not in ``elsewhere`` (the names assigned elsewhere in the program, and known
    inputs: the caller reports those as used before assigned, or as a missing input; it
    reports placeholders without a value too). Each problem is an :class:`EvalError`
    whose ``column`` is 1-based in the expression text.
    """
    checker = _Checker(expression, types)
    for name in expression.bare_names:
        if name not in types and name not in elsewhere:
            column = expression.variable_columns[name]
            checker.report(f"unknown name {name!r}: {bare_name_hint(name)}", column)
    for node in _walk(expression.tree):
        checker.check(node)
    return sorted(checker.problems, key=lambda e: e.column or 0)


def _walk(node: Node) -> Iterator[Node]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for value in vars(current).values():
            if isinstance(value, Node):
                stack.append(value)
            elif isinstance(value, tuple):
                stack.extend(v for v in value if isinstance(v, Node))


class _Checker:
    def __init__(self, expression: Expression, types: Mapping[str, Type]) -> None:
        self.expression = expression
        self.types = types
        self.problems: list[EvalError] = []

    def report(self, detail: str, column: int) -> None:
        message = f"{detail} at column {column}"
        self.problems.append(EvalError(message, self.expression.text, column=column, detail=detail))

    def kind(self, node: Node) -> str | None:
        match node:
            case Var(name=name):
                t = self.types.get(name)
                return _KINDS.get(t) if t is not None else None
            case Const(value=value):
                if isinstance(value, bool) or value is None:
                    return None
                if isinstance(value, (int, float)):
                    return "number"
                coerced = coerce_answer(value)
                return "text" if isinstance(coerced, str) else None
            case Call(name=name) if name in _NUMBER_FUNCTIONS:
                return "number"
            case BinaryOp(left=left, right=right) if self.kind(left) == self.kind(right) == "number":
                return "number"
        return None

    def not_a_number(self, node: Node, column: int, what: str) -> None:
        kind = self.kind(node)
        if isinstance(node, Var):
            column = node.column
        if kind == "objects":
            name = node.name if isinstance(node, Var) else "OBJ0"
            self.report(
                f"{_shown(node)} holds objects, not a number ({what}): count them with Count(box={name})", column
            )
        elif kind == "image":
            self.report(f"{_shown(node)} is an image, not a number ({what})", column)

    def check(self, node: Node) -> None:
        match node:
            case BinaryOp(op=op, left=left, right=right, column=column):
                if not (op == "*" and {self.kind(left), self.kind(right)} & {"text"}):
                    for side in (left, right):
                        self.not_a_number(side, column, f"in '{op}'")
            case Sign(op=op, operand=operand, column=column):
                self.not_a_number(operand, column, f"in '{op}'")
            case Compare(first=first, rest=rest):
                left = first
                for link in rest:
                    self.compare(left, link.op, link.right, link.column)
                    left = link.right

    def compare(self, left: Node, op: str, right: Node, column: int) -> None:
        if op not in _ORDERING and op not in ("==", "!="):
            return
        kinds = (self.kind(left), self.kind(right))
        if "number" in kinds:
            for side in (left, right):
                self.not_a_number(side, column, f"compared with a number using '{op}'")
        if set(kinds) == {"number", "text"}:
            text = left if kinds[0] == "text" else right
            assert isinstance(text, Const)
            if op in _ORDERING:
                self.report(f"the text {text.value!r} is compared with a number using '{op}'", column)
            else:
                always = "false" if op == "==" else "true"
                self.report(f"the text {text.value!r} is never equal to a number: '{op}' is always {always}", column)


def _shown(node: Node) -> str:
    if isinstance(node, Var):
        return node.name if node.bare else f"{{{node.name}}}"
    return "the value"
