"""Type-check a parsed program against the registered modules.

Every problem is reported in one pass, before any module runs: unknown
module, unknown, missing or repeated argument, too many positional
arguments or one after a named argument, a value of the wrong type, an
undefined variable, an Eval expression that does not parse, no step at all,
a literal argument its parameter's validator refuses (``max=0``, an unknown emoji).
Each diagnostic has a line, a column and, where one is close, a suggestion.

Positional arguments are bound to the module's parameters in declaration
order (:func:`bind`), so everything after the checker sees named arguments.
A program without a result step returns its last step's value, with a
warning (``CheckedProgram.warnings``), as VisProg's interpreter did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from visprog.errors import Diagnostic, EvalError, ProgramCheckError, did_you_mean, suggest
from visprog.language import syntax
from visprog.language.expr import Expression, parse_template
from visprog.language.expr_check import static_check
from visprog.language.frames import Frame
from visprog.language.graph import Edge, Graph, Node, build
from visprog.language.parser import parse
from visprog.language.signatures import ModuleSpec, Param, Registry
from visprog.language.values import Type, assignable

__all__ = ["MAX_SUGGESTION_WORK", "CheckedProgram", "CheckedStep", "bind", "check"]

#: How many names, all told, the "did you mean" hints of one check compare undefined variables with.
#: Past it, an undefined variable is reported without a hint: checking stays linear in the program's size.
MAX_SUGGESTION_WORK = 20_000


@dataclass(frozen=True)
class CheckedStep:
    """A step with its module resolved, its output type and where each name it uses comes from."""

    index: int
    step: syntax.Step
    spec: ModuleSpec | None
    type: Type
    #: variable name -> index of the step that assigned it, or the input's name
    sources: Mapping[str, int | str] = field(default_factory=dict)
    templates: Mapping[str, Expression] = field(default_factory=dict)
    #: the frame of the image or objects the step assigns, when known (see :mod:`visprog.language.frames`)
    frame: Frame | None = None
    #: Objects argument -> (the frame its objects were found in, the frame of the image the step works on),
    #: for each Objects argument the interpreter maps onto the step's image
    remap: Mapping[str, tuple[Frame, Frame]] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.spec.name if self.spec is not None else "="

    @property
    def deps(self) -> set[int]:
        return {s for s in self.sources.values() if isinstance(s, int)}


@dataclass(frozen=True)
class CheckedProgram:
    """A program that passed the checker: safe to hand to the interpreter.

    ``program`` is the program as checked: every argument named (positional ones bound to their
    parameters). ``result`` is the index of the result step: the last step that marks the result,
    else the last step (with a warning).
    """

    program: syntax.Program
    steps: tuple[CheckedStep, ...]
    inputs: Mapping[str, Type]
    result: int
    graph: Graph
    #: what the checker accepted but the writer should know (a program without a result step)
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def source(self) -> str:
        return self.program.source

    @property
    def result_type(self) -> Type:
        return self.steps[self.result].type

    @property
    def used_inputs(self) -> list[str]:
        return self.graph.inputs


def _did_you_mean(name: str | None) -> str:
    return f" (did you mean '{name}'?)" if name else ""


class _Checker:
    def __init__(
        self, program: syntax.Program, registry: Registry, inputs: Mapping[str, Type], known_inputs: frozenset[str]
    ) -> None:
        self.program = program
        self.registry = registry
        self.inputs = dict(inputs)
        self.known_inputs = known_inputs
        self.missing_inputs: set[str] = set()
        self.diagnostics: list[Diagnostic] = []
        #: name -> (index of the latest assignment, its type)
        self.defined: dict[str, tuple[int, Type]] = {}
        #: name -> the frame of the image or objects it holds (None: not an image, or not known)
        self.frames: dict[str, Frame | None] = {name: Frame(name) for name, t in self.inputs.items() if t is Type.IMAGE}
        self.assigned_at: dict[str, list[int]] = {}
        for s in program.steps:
            self.assigned_at.setdefault(s.target, []).append(s.line)
        #: every name the program assigns or may read as an input (built once: each Eval asks)
        self.named = frozenset({*self.assigned_at, *self.known_inputs})
        #: what is left of :data:`MAX_SUGGESTION_WORK` for this check
        self.suggestion_work = MAX_SUGGESTION_WORK

    def error(self, line: int, column: int, message: str) -> None:
        self.diagnostics.append(Diagnostic(line, column, message, self.program.source_line(line)))

    # -- values ---------------------------------------------------------

    def ref_type(self, ref: syntax.Ref, sources: dict[str, int | str]) -> Type | None:
        if ref.name in self.defined:
            index, t = self.defined[ref.name]
            sources[ref.name] = index
            return t
        if ref.name in self.inputs:
            sources[ref.name] = ref.name
            return self.inputs[ref.name]
        self.undefined(ref.name, ref.line, ref.column)
        return None

    def undefined(self, name: str, line: int, column: int, where: str = "") -> None:
        later = [n for n in self.assigned_at.get(name, []) if n >= line]
        if later and later[0] == line:
            self.error(line, column, f"'{name}' is used{where} in its own assignment before it has a value")
            return
        if later:
            self.error(line, column, f"'{name}' is used{where} before it is assigned (on line {later[0]})")
            return
        if name in self.known_inputs and name not in self.assigned_at:  # an input the caller did not give
            if name not in self.missing_inputs:  # said once, at its first use
                self.missing_inputs.add(name)
                given = ", ".join(self.inputs) or "none"
                self.error(line, column, f"the program reads the input {name}, which was not given (given: {given})")
            return
        hint = ""
        candidates = len(self.defined) + len(self.inputs)
        if candidates <= self.suggestion_work:
            self.suggestion_work -= candidates
            hint = did_you_mean(name, [*self.defined, *self.inputs])
        self.error(line, column, f"undefined variable '{name}'{where}{hint}")

    def value_type(self, value: syntax.Value, sources: dict[str, int | str]) -> Type | None:
        """The value's type; None when it is unknown because of an error already reported."""
        if isinstance(value, syntax.Ref):
            return self.ref_type(value, sources)
        if isinstance(value, syntax.Literal):
            v = value.value
            if v is None:
                return Type.NONE
            if isinstance(v, bool):
                return Type.BOOL
            if isinstance(v, int):
                return Type.INT
            if isinstance(v, float):
                return Type.FLOAT
            return Type.STR
        item_types = [self.value_type(i, sources) for i in value.items]
        if any(t is None for t in item_types):
            return None
        if all(t in (Type.STR, Type.ANY) for t in item_types):
            return Type.LIST_STR
        return Type.ANY if Type.ANY in item_types else Type.LIST

    def passed_type(self, value: syntax.Value) -> Type | None:
        """The type of a variable, an input or a literal, reporting nothing (its errors are reported already)."""
        if isinstance(value, syntax.Ref):
            if value.name in self.defined:
                return self.defined[value.name][1]
            return self.inputs.get(value.name)
        if isinstance(value, syntax.Literal):
            return self.value_type(value, {})
        return None

    def describe(self, value: syntax.Value, t: Type) -> str:
        if isinstance(value, syntax.Ref):
            if value.name in self.defined:
                index = self.defined[value.name][0]
                return f"{t} ({value.name}, from line {self.program.steps[index].line})"
            return f"{t} (input {value.name})"
        if t is Type.LIST:
            return "a list that is not all strings"
        if t is Type.NONE:
            return "None"
        return f"{t} {_short(value)}"

    # -- frames ---------------------------------------------------------

    def frame_of(self, value: syntax.Value) -> Frame | None:
        return self.frames.get(value.name) if isinstance(value, syntax.Ref) else None

    def check_frames(
        self, index: int, spec: ModuleSpec, call: syntax.Call
    ) -> tuple[Frame | None, dict[str, tuple[Frame, Frame]]]:
        """The frame of the step's output and the Objects arguments to map onto its image; objects
        found on an unrelated image are an error."""
        remap: dict[str, tuple[Frame, Frame]] = {}
        image = next((a for a in call.args if a.name == spec.frame), None) if spec.frame else None
        dst = self.frame_of(image.value) if image is not None else None
        found: Frame | None = None
        for arg in call.args:
            param = spec.param(arg.name)
            src = self.frame_of(arg.value)
            if param is None or param.type is not Type.OBJECTS or src is None:
                continue
            found = found or src
            if image is None or dst is None or src == dst:
                continue
            if src.related(dst):
                remap[arg.name] = (src, dst)
                continue
            targets = dict(enumerate(s.target for s in self.program.steps))
            given, frame = syntax.written(image.value), dst.describe(targets)
            where = frame if frame == given or frame.startswith(given + ",") else f"{given}, in the frame of {frame}"
            self.error(
                arg.value.line,
                arg.value.column,
                f"argument '{arg.name}' of {spec.name}: the objects in {syntax.written(arg.value)} were found on "
                f"{src.describe(targets)}, but the step's {spec.frame} is {where}; objects can be used only on the "
                f"image they were found on, a crop of it or the image it was cropped from: find them on "
                f"{dst.root} in a step of their own",
            )
        if spec.returns not in (Type.IMAGE, Type.OBJECTS):
            return None, remap
        if spec.crops:
            return (dst.crop(index) if dst is not None else None), remap
        return (dst if spec.frame is not None else found), remap

    def template_frame(self, templates: Mapping[str, Expression]) -> Frame | None:
        """The frame of the images and objects an expression reads, when they share one."""
        names = {n for e in templates.values() for n in e.variables}
        frames = {f for n in names if (f := self.frames.get(n)) is not None}
        return frames.pop() if len(frames) == 1 else None

    # -- steps ----------------------------------------------------------

    def check_call(
        self, call: syntax.Call, sources: dict[str, int | str]
    ) -> tuple[ModuleSpec | None, Type, dict[str, Expression], syntax.Call]:
        spec = self.registry.get(call.module)
        templates: dict[str, Expression] = {}
        if spec is None:
            hint = self.registry.suggest(call.module)
            self.error(call.line, call.column, f"unknown module '{call.module}'{_did_you_mean(hint)}")
            for arg in call.args:
                self.value_type(arg.value, sources)
            return None, Type.ANY, templates, call
        bound, problems = bind(call, spec)
        for arg, message in problems:
            self.error(arg.line, arg.column, message)
            self.value_type(arg.value, sources)
        seen = {arg.name for arg in bound.args}
        for arg in bound.args:
            param = spec.param(arg.name)
            if param is None:
                names = [p.name for p in spec.params]
                hint = suggest(arg.name, names)
                accepted = ", ".join(names) or "none"
                self.error(
                    arg.line,
                    arg.column,
                    f"unknown argument '{arg.name}' for {spec.name}{_did_you_mean(hint)}; it takes: {accepted}",
                )
                self.value_type(arg.value, sources)
                continue
            if param.type is Type.TEMPLATE:
                expression = self.check_template(spec, arg, sources)
                if expression is not None:
                    templates[arg.name] = expression
                continue
            actual = self.value_type(arg.value, sources)
            if _empty_list(arg.value) and param.type in (Type.OBJECTS, Type.LIST_STR):
                self.validate(spec, param, arg.value)
                continue
            if actual is not None and not assignable(actual, param.type, param.optional):
                self.error(
                    arg.value.line,
                    arg.value.column,
                    f"argument '{arg.name}' of {spec.name} expects {param.type}, "
                    f"got {self.describe(arg.value, actual)}",
                )
            elif actual is not None:
                self.validate(spec, param, arg.value)
        unbound = any(arg.positional for arg, _ in problems)  # the missing argument is likely that one
        for param in spec.params:
            if param.required and param.name not in seen and not unbound:
                self.error(
                    call.line,
                    call.column,
                    f"{spec.name} is missing argument '{param.name}' ({param.type}: {param.description})",
                )
        return spec, spec.returns, templates, bound

    def validate(self, spec: ModuleSpec, param: Param, value: syntax.Value) -> None:
        """Run the parameter's validator on a literal argument (a variable's value is not known yet)."""
        if param.validator is None:
            return
        literal = _literal(value)
        if literal is _NOT_LITERAL or literal is None:
            return
        try:
            problem = param.validator(literal)
        except Exception as e:  # a plugin's validator that fails is reported, not raised
            problem = f"its validator failed on {_short(value)}: {type(e).__name__}: {e}"
        if problem:
            self.error(value.line, value.column, f"argument '{param.name}' of {spec.name}: {problem}")

    def check_template(self, spec: ModuleSpec, arg: syntax.Arg, sources: dict[str, int | str]) -> Expression | None:
        value = arg.value
        if not (isinstance(value, syntax.Literal) and isinstance(value.value, str)):
            t = self.value_type(value, sources)
            if t is not None:
                self.error(
                    value.line,
                    value.column,
                    f"argument '{arg.name}' of {spec.name} expects an expression in quotes, "
                    f"got {self.describe(value, t)}",
                )
            return None
        text = value.value
        source_line = self.program.source_line(value.line)

        def column_of(index: int) -> int:
            """Source column of the expression's 1-based character ``index`` (escapes counted)."""
            return _string_column(source_line, value.column, index)

        try:
            expression = parse_template(text)
        except EvalError as e:
            column = column_of(e.column or 1)
            self.error(value.line, column, f"bad expression for '{arg.name}' of {spec.name}: {e.detail}")
            return None
        ok = True
        types: dict[str, Type] = {}
        for name in expression.variables:
            column = column_of(expression.variable_columns.get(name, 1))
            if name in self.defined:
                sources[name] = self.defined[name][0]
                types[name] = self.defined[name][1]
            elif name in self.inputs:
                sources[name] = name
                types[name] = self.inputs[name]
            elif name in expression.bare_names and name not in self.assigned_at and name not in self.known_inputs:
                ok = False  # a bare word that is no variable: static_check says to quote it
            else:
                self.undefined(name, value.line, column, where=" in the expression")
                ok = False
        for problem in static_check(expression, types, elsewhere=self.named):
            column = column_of(problem.column or 1)
            self.error(value.line, column, f"bad expression for '{arg.name}' of {spec.name}: {problem.detail}")
            ok = False
        return expression if ok else None

    def run(self) -> CheckedProgram:
        steps: list[CheckedStep] = []
        for index, step in enumerate(self.program.steps):
            sources: dict[str, int | str] = {}
            templates: dict[str, Expression] = {}
            spec: ModuleSpec | None = None
            frame: Frame | None = None
            remap: dict[str, tuple[Frame, Frame]] = {}
            if isinstance(step.expr, syntax.Call):
                spec, out, templates, bound = self.check_call(step.expr, sources)
                if bound is not step.expr:
                    step = replace(step, expr=bound)
                if spec is not None and out is Type.ANY and step.is_result and len(bound.args) == 1:
                    out = self.passed_type(bound.args[0].value) or out  # Result(var=X) has X's type
                if spec is not None:
                    frame, remap = self.check_frames(index, spec, bound)
                    if frame is None and templates:  # Eval('{BOX1}'): the frame of the objects it passes on
                        frame = self.template_frame(templates)
            else:
                out = self.value_type(step.expr, sources) or Type.ANY
                frame = self.frame_of(step.expr)
            steps.append(CheckedStep(index, step, spec, out, sources, templates, frame, remap))
            self.defined[step.target] = (index, out)
            self.frames[step.target] = frame
        results = [s.index for s in steps if s.step.is_result]
        warnings: list[Diagnostic] = list(self.program.warnings)  # the parser's first
        if not steps:
            example = "FINAL_RESULT=Result(var=ANSWER0)"
            self.error(1, 1, f"the program has no result: end it with a line such as {example}")
        elif not results:  # as in VisProg: the last step's value is the result
            last = steps[-1].step
            warnings.append(
                Diagnostic(
                    last.line,
                    last.column,
                    f"the program has no result step: the result is the last step's value, {last.target} "
                    f"(end the program with FINAL_RESULT=Result(var={last.target}) to say so)",
                    self.program.source_line(last.line),
                )
            )
            results = [steps[-1].index]
        if self.diagnostics:
            self.diagnostics.sort(key=lambda d: (d.line, d.column))
            raise ProgramCheckError(self.diagnostics, sorted(self.missing_inputs))
        nodes = [Node(s.index, s.step.target, s.module, s.step.line, s.step.source) for s in steps]
        edges = [Edge(src, s.index, name) for s in steps for name, src in s.sources.items()]
        used = {e.src for e in edges if isinstance(e.src, str)}
        inputs = {k: v for k, v in self.inputs.items() if k in used}
        program = syntax.Program(self.program.source, tuple(s.step for s in steps), self.program.warnings)
        return CheckedProgram(program, tuple(steps), inputs, results[-1], build(nodes, edges), tuple(warnings))


def _takes(spec: ModuleSpec) -> str:
    return ", ".join(p.name for p in spec.params) or "none"


def bind(call: syntax.Call, spec: ModuleSpec) -> tuple[syntax.Call, list[tuple[syntax.Arg, str]]]:
    """``call`` with its positional arguments bound to ``spec``'s parameters in declaration order,
    as Python binds them, and the arguments that could not be bound, each with what is wrong.

    Positional arguments come first; one after a named argument, one more than the module has
    parameters, and a parameter given twice (by position and by name, or twice by name) are
    problems, left out of the bound call. The bound call keeps the arguments' order as written.
    """
    problems: list[tuple[syntax.Arg, str]] = []
    args: list[syntax.Arg] = []
    seen: dict[str, syntax.Arg] = {}
    named_before = False
    too_many = False
    for index, arg in enumerate(call.args):
        if arg.positional:
            if named_before:
                free = [p.name for p in spec.params if p.name not in seen]
                fix = f"name it, e.g. {free[0]}={syntax.written(arg.value)}" if free else "name it"
                problems.append(
                    (
                        arg,
                        f"a positional argument after a named one: put it first or {fix}; "
                        f"{spec.name} takes: {_takes(spec)}",
                    )
                )
                continue
            if index >= len(spec.params):
                if not too_many:  # said once, at the first argument too many
                    count = sum(1 for a in call.args if a.positional)
                    problems.append(
                        (
                            arg,
                            f"too many arguments for {spec.name}: it takes {len(spec.params)} "
                            f"({_takes(spec)}), got {count}",
                        )
                    )
                too_many = True
                continue
            arg = replace(arg, name=spec.params[index].name)
        else:
            named_before = True
        first = seen.get(arg.name)
        if first is not None:
            how = "by position " if first.positional else ""
            problems.append(
                (
                    arg,
                    f"argument '{arg.name}' of {spec.name} is given twice (first {how}at col {first.column}); "
                    f"it takes: {_takes(spec)}",
                )
            )
            continue
        seen[arg.name] = arg
        args.append(arg)
    if len(args) == len(call.args) and all(a is b for a, b in zip(args, call.args, strict=True)):
        return call, problems
    return replace(call, args=tuple(args)), problems


def _string_column(source_line: str, quote_column: int, index: int) -> int:
    """The column in ``source_line`` of the ``index``-th (1-based) character of the string
    literal whose opening quote is at ``quote_column``, counting backslash escapes as written."""
    col = quote_column  # the opening quote
    for _ in range(index):
        col += 2 if source_line[col : col + 1] == "\\" else 1
    return col


_NOT_LITERAL = object()


def _literal(value: syntax.Value) -> object:
    """The Python value of a literal (a list of literals gives a list), else ``_NOT_LITERAL``."""
    if isinstance(value, syntax.Literal):
        return value.value
    if isinstance(value, syntax.ListValue) and all(isinstance(i, syntax.Literal) for i in value.items):
        return [i.value for i in value.items if isinstance(i, syntax.Literal)]
    return _NOT_LITERAL


def _empty_list(value: syntax.Value) -> bool:
    return isinstance(value, syntax.ListValue) and not value.items


def _short(value: syntax.Value) -> str:
    if isinstance(value, syntax.Literal):
        text = repr(value.value)
        return text if len(text) <= 30 else text[:27] + "..."
    return "list"


def check(
    program: syntax.Program | str,
    inputs: Mapping[str, Type] | Iterable[str] | None = None,
    *,
    registry: Registry,
    known_inputs: Iterable[str] = (),
    max_chars: int | None = None,
    max_steps: int | None = None,
    max_line_length: int | None = None,
) -> CheckedProgram:
    """Check a program (text or parsed) against the modules of ``registry``.

    ``inputs`` names the values the caller will pass, with their types, or as
    names (all images). ``known_inputs`` are the input names programs may read
    (the tasks' inputs, which the language does not define itself: callers such
    as :func:`visprog.check` pass them): a program that reads one that was not
    given is told so by name, and ``inputs=None`` means all of them, as images.
    ``max_chars``, ``max_steps`` and ``max_line_length`` bound a program given as text
    (:func:`~visprog.language.parser.parse`; default: :mod:`visprog.language.text_limits`).
    Raises :class:`~visprog.errors.ProgramSyntaxError` or
    :class:`~visprog.errors.ProgramCheckError`.
    """
    if isinstance(program, str):
        program = parse(program, max_chars=max_chars, max_steps=max_steps, max_line_length=max_line_length)
    ordered = tuple(dict.fromkeys(known_inputs))
    known = frozenset(ordered)
    if inputs is None:
        resolved: Mapping[str, Type] = {name: Type.IMAGE for name in ordered}
    elif isinstance(inputs, Mapping):
        resolved = inputs
    else:
        resolved = {name: Type.IMAGE for name in inputs}
    return _Checker(program, registry, resolved, known).run()
