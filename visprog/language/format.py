"""The canonical form of a program: what ``visprog fmt`` prints.

One step per line, ``TARGET=Module(name=value, ...)``: every argument named, in
the module's declaration order (positional arguments bound to their
parameters), the module under its declared name, strings in single quotes
(double quotes when they hold a single quote), lists as ``[a, b]``, Eval
expressions as written. Comments are kept: a comment line as a line of its
own, a comment after a step two spaces after it; runs of blank lines become
one, and blank lines at the start and the end go.

Formatting needs the modules' declarations to name positional arguments and
order arguments: pass a registry, or a checked program. Without them, the
arguments stay as written. A call the checker would refuse (too many
arguments, one given twice) keeps its arguments as written too. The canonical
form of a program checks to the same meaning, and formatting it again changes
nothing.
"""

from __future__ import annotations

from visprog.language import syntax
from visprog.language.checker import CheckedProgram, bind
from visprog.language.normalize import normalize
from visprog.language.parser import parse
from visprog.language.signatures import ModuleSpec, Registry
from visprog.language.tokens import lexer

__all__ = ["format_call", "format_program", "format_step"]


def format_call(call: syntax.Call, spec: ModuleSpec | None = None) -> str:
    """``Module(name=value, ...)``: with the module's declaration, its name and its argument order."""
    args = call.args
    module = call.module
    if spec is not None:
        module = spec.name
        bound, problems = bind(call, spec)
        if not problems:
            order = {p.name: i for i, p in enumerate(spec.params)}
            args = tuple(sorted(bound.args, key=lambda a: order.get(a.name, len(order))))
    written = (f"{a.name}={syntax.written(a.value)}" if a.name else syntax.written(a.value) for a in args)
    return f"{module}({', '.join(written)})"


def format_step(step: syntax.Step, spec: ModuleSpec | None = None) -> str:
    """One step in canonical form, without its comment."""
    if isinstance(step.expr, syntax.Call):
        return f"{step.target}={format_call(step.expr, spec)}"
    return f"{step.target}={syntax.written(step.expr)}"


def _comments(program: syntax.Program) -> tuple[list[str | int | None], dict[int, list[str]]]:
    """The program's layout: per line a comment (its text), a step (its index) or a blank line
    (None); and per step index the comments written on its line or the lines that continue it."""
    starts = {step.line: index for index, step in enumerate(program.steps)}
    layout: list[str | int | None] = []
    trailing: dict[int, list[str]] = {}
    current: int | None = None
    source = program.source if program.source.isascii() else normalize(program.source).text  # as the parser reads it
    for number, text in enumerate(syntax.split_lines(source), start=1):
        tokens = [t for t in lexer().line(text, number) if t.kind != "WS"]
        comments = [t.text.rstrip() for t in tokens if t.kind == "COMMENT"]
        if number in starts:
            current = starts[number]
            layout.append(current)
            trailing.setdefault(current, []).extend(comments)
        elif len(comments) == len(tokens):  # a comment line, or a blank one
            layout.append(comments[0] if comments else None)
        elif current is not None:  # a line that continues a step
            trailing.setdefault(current, []).extend(comments)
    return layout, trailing


def format_program(program: syntax.Program | CheckedProgram | str, registry: Registry | None = None) -> str:
    """The canonical text of ``program`` (text, parsed or checked), ending with a newline unless
    it is empty. ``registry`` gives the modules' declarations (a checked program has them).

    Raises :class:`~visprog.errors.ProgramSyntaxError` for text that does not parse.
    """
    if isinstance(program, str):
        program = parse(program)
    if isinstance(program, CheckedProgram):
        specs = [s.spec for s in program.steps]
        parsed = program.program
    else:
        parsed = program
        specs = [
            registry.get(s.expr.module) if registry is not None and isinstance(s.expr, syntax.Call) else None
            for s in parsed.steps
        ]
    layout, trailing = _comments(parsed)
    emitted: set[int] = set()
    lines: list[str] = []
    for entry in layout:
        if entry is None:
            if lines and lines[-1]:
                lines.append("")
        elif isinstance(entry, str):
            lines.append(entry)
        else:
            emitted.add(entry)
            text = format_step(parsed.steps[entry], specs[entry])
            lines.append("  ".join([text, *trailing.get(entry, [])]))
    if len(emitted) < len(parsed.steps):  # a program built by hand: its source does not hold its steps
        lines = [format_step(s, spec) for s, spec in zip(parsed.steps, specs, strict=True)]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""
