"""The grammar of the programs the checker accepts, built from the registry, for constrained generation.

Two strengths (``constrain``):

- ``grammar``: the language's syntax in canonical form, one step per line:
  only registered modules (canonical names), only their argument names (keyword
  form, in declaration order, required ones present), literals of each
  parameter's type, Eval expressions in (a subset of) Eval's grammar, and a
  final ``FINAL_RESULT=Result(var=NAME)`` line after which the program stops.
  Any name may stand where a variable may.
- ``types``: the same, rebuilt for every line (:class:`ProgramConstraint`):
  variables are the inputs and the names already assigned, each only where its
  type fits (an Image where an Image is expected, Objects where Objects are), a
  module whose required arguments no variable can fill is left out, and Eval
  placeholders name only assigned values, numbers compared with numbers and
  text with text, so what comes out parses and checks.

Nothing here is written by hand per module: plugins are constrained like the
built-in modules. Literal values a parameter's validator refuses (an unknown
emoji name) are the one thing the grammar cannot know; the checker still
reports them and the repair round fixes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from visprog.errors import ConfigError, ProgramError
from visprog.language import parser
from visprog.language.checker import check
from visprog.language.frames import Frame
from visprog.language.signatures import ModuleSpec, Param, Registry, Validator, accepts
from visprog.language.values import Type, assignable
from visprog.llm.constrained import CONSTRAIN_MODES
from visprog.planner.grammar import Grammar, Lit, Node, Opt, Ref, Star, Term, alt, seq, to_gbnf, to_lark

__all__ = ["CONSTRAIN_MODES", "GRAMMAR_FORMATS", "ProgramConstraint", "choose_mode", "line_grammar", "program_grammar"]

#: How a server takes a grammar: ``lark`` (llguidance's Lark: vLLM's guidance backend) or ``gbnf``
#: (llama.cpp's ``grammar``, and the EBNF of xgrammar, vLLM's default, and SGLang).
GRAMMAR_FORMATS: tuple[str, ...] = ("lark", "gbnf")

#: The target of the result line.
RESULT_TARGET = "FINAL_RESULT"
#: The module the result line calls.
RESULT_MODULE = "Result"

# Terminals, in both syntaxes. Text in a program has no line break; text inside Eval (which is itself
# inside a double-quoted string) has no quote of either kind and no braces.
NAME = Term(r"[A-Z][A-Z0-9_]{0,30}", r"[A-Z] [A-Z0-9_]{0,30}")
TEXT = Term(r"'[^'\\\n\r]{1,200}'", r"['] [^'\\\n\r]{1,200} [']")
INT = Term(r"-?[0-9]{1,9}", '"-"? [0-9]{1,9}')
NUMBER = Term(r"-?[0-9]{1,9}(\.[0-9]{1,6})?", '"-"? [0-9]{1,9} ("." [0-9]{1,6})?')
#: In a constrained program: the most operators of one kind chained in an Eval expression (``a or b or c or d``),
#: the deepest parentheses in one, and the most items of a list.
MAX_CHAIN = 3
EVAL_DEPTH = 2
MAX_LIST = 16
EVAL_TEXT = Term(r"'[^'\"\\\n\r{}]{0,80}'", r"['] [^'\"\\\n\r{}]{0,80} [']")


#: What ``str.strip`` removes (and ``not_empty`` so counts as blank), as a character class body.
_BLANK = r" \t\v\f\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_BLANK_GBNF = r" \t\x0B\x0C\x1C-\x1F\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000"
#: Text with something besides blanks and commas in it (a validator's ``nonblank``).
NONBLANK_TEXT = Term(
    rf"'[^'\\\n\r]{{0,100}}[^'\\\n\r,{_BLANK}][^'\\\n\r]{{0,199}}'",
    rf"['] [^'\\\n\r]{{0,100}} [^'\\\n\r,{_BLANK_GBNF}] [^'\\\n\r]{{0,199}} [']",
)


def _at_least(minimum: int) -> Node:
    """Whole numbers of at least ``minimum`` (every one written, up to nine digits, when it is above 1)."""
    if minimum <= 0:
        return Term(r"[0-9]{1,9}", "[0-9]{1,9}")
    if minimum == 1:
        return Term(r"[1-9][0-9]{0,8}", "[1-9] [0-9]{0,8}")
    digits = len(str(minimum))
    longer = Term(rf"[1-9][0-9]{{{digits},8}}", f"[1-9] [0-9]{{{digits},8}}")
    if minimum > 999:
        return longer
    return alt(longer, *(str(k) for k in range(minimum, 10**digits)))


_CHOICES: dict[Any, Term | None] = {}
#: What a regular expression (Rust's, as llguidance reads it) must escape.
_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$#&-~/")


def _choices(choices: Callable[[], Iterable[str]]) -> Term | None:
    """One terminal for a closed set of strings (one lexeme, however many: a grammar rule with thousands
    of alternatives is more than a parser's row may hold), built once per ``choices`` function."""
    if choices not in _CHOICES:
        names = sorted({c for c in choices() if c and not set(c) & {"'", "\\", "\n", "\r", '"'}})
        if not names:
            _CHOICES[choices] = None
        else:
            regex = "|".join("".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in n) for n in names)
            gbnf = " | ".join('"' + n + '"' for n in names)
            _CHOICES[choices] = Term(f"'({regex})'", f"['] ({gbnf}) [']")
    return _CHOICES[choices]


def _literal(t: Type, validator: Validator | None = None) -> Node | None:
    """The literals of type ``t`` in a program that ``validator`` accepts, as far as it says
    (:func:`~visprog.language.signatures.accepts`); None when there are none (images, objects)."""
    hints = accepts(validator)
    if t is Type.STR and "choices" in hints:
        choices = _choices(hints["choices"])
        if choices is not None:
            return choices
    text = NONBLANK_TEXT if hints.get("nonblank") else TEXT
    if t is Type.STR:
        return text
    if t is Type.INT:
        return _at_least(math.ceil(hints["minimum"])) if "minimum" in hints else INT
    if t is Type.FLOAT and "minimum" in hints:
        decimals = Opt(Term(r"\.[0-9]{1,6}", '"." [0-9]{1,6}'))
        return seq(_at_least(max(0, math.ceil(hints["minimum"]))), decimals)
    if t is Type.FLOAT:
        return NUMBER
    if t is Type.BOOL:
        return alt("True", "False")
    if t is Type.LIST_STR:
        return alt(seq("[", text, Star(seq(", ", text), MAX_LIST - 1), "]"), text)
    if t is Type.ANY:
        return alt(TEXT, NUMBER)
    return None


def _placeholders(names: list[str]) -> Node | None:
    return alt(*(f"{{{n}}}" for n in names)) if names else None


def _eval_rules(variables: Mapping[str, Type] | None) -> dict[str, Node]:
    """Eval's expressions, as the rules ``e_*``: over any ``{NAME}`` when ``variables`` is None,
    else over the assigned values that are no image or objects, each where its type fits."""
    kinds: dict[str, Node | None]
    if variables is None:
        kinds = {"e_any_var": seq("{", NAME, "}")}
    else:
        kinds = {
            "e_any_var": _placeholders([n for n, t in variables.items() if t is Type.ANY]),
            "e_num_var": _placeholders([n for n, t in variables.items() if t in (Type.INT, Type.FLOAT)]),
            "e_text_var": _placeholders([n for n, t in variables.items() if t is Type.STR]),
            "e_bool_var": _placeholders([n for n, t in variables.items() if t is Type.BOOL]),
        }
    # Each kind of placeholder is a rule of its own, so that no converter (GBNF to Lark) folds it into
    # the text or number lexemes around it.
    rules: dict[str, Node] = {k: v for k, v in kinds.items() if v is not None}
    refs: list[Node | None] = [
        Ref(k) if k in rules else None for k in ("e_any_var", "e_num_var", "e_text_var", "e_bool_var")
    ]
    any_var, number_var, text_var, bool_var = refs
    present: list[Node] = [v for v in refs if v is not None]
    texts: list[Node] = [EVAL_TEXT, *(v for v in (text_var, any_var) if v is not None)]
    values: list[Node] = [EVAL_TEXT, NUMBER, *present]
    out: dict[str, Node] = {
        "e_top": alt(seq(Ref("e_value"), " if ", Ref("e_or"), " else ", Ref("e_value")), Ref("e_or"), Ref("e_num")),
        "e_value": alt(*values),
        "e_text": alt(*texts),
    }
    # Each level of parentheses is a level of rules (``e_or``, ``e_or_1``, ...), the innermost without them, and
    # every chain of operators is bounded: an expression has a greatest length, so that a model that repeats
    # itself inside one cannot spend the whole token budget there.
    for level in range(EVAL_DEPTH + 1):
        at = f"_{level}" if level else ""
        inner = f"_{level + 1}" if level < EVAL_DEPTH else None
        atoms: list[Node] = [NUMBER, *(v for v in (number_var, any_var) if v is not None)]
        comparisons: list[Node] = [
            seq(Ref(f"e_num{at}"), alt(" == ", " != ", " > ", " < ", " >= ", " <= "), Ref(f"e_num{at}")),
            seq(Ref("e_text"), alt(" == ", " != "), Ref("e_text")),
            seq(Ref("e_text"), alt(" in [", " not in ["), EVAL_TEXT, Star(seq(", ", EVAL_TEXT), MAX_LIST - 1), "]"),
            *(v for v in (bool_var, any_var) if v is not None),
        ]
        operand: list[Node] = [Ref(f"e_cmp{at}")]
        if inner is not None:
            atoms.append(seq("(", Ref(f"e_num{inner}"), ")"))
            operand.append(seq("(", Ref(f"e_or{inner}"), ")"))
        out |= {
            f"e_or{at}": seq(Ref(f"e_and{at}"), Star(seq(" or ", Ref(f"e_and{at}")), MAX_CHAIN)),
            f"e_and{at}": seq(Ref(f"e_not{at}"), Star(seq(" and ", Ref(f"e_not{at}")), MAX_CHAIN)),
            f"e_not{at}": seq(Opt(Lit("not ")), alt(*operand)),
            f"e_cmp{at}": alt(*comparisons),
            f"e_num{at}": seq(Ref(f"e_term{at}"), Star(seq(alt(" + ", " - "), Ref(f"e_term{at}")), MAX_CHAIN)),
            f"e_term{at}": seq(Ref(f"e_atom{at}"), Star(seq(alt(" * ", " / "), Ref(f"e_atom{at}")), MAX_CHAIN)),
            f"e_atom{at}": alt(*atoms),
        }
    return rules | out


class _Builder:
    def __init__(
        self,
        registry: Registry,
        variables: Mapping[str, Type] | None,
        frames: Mapping[str, Frame | None] | None = None,
    ) -> None:
        self.registry = registry
        #: the variables and their types; None: any name, any type (``grammar``)
        self.variables = variables
        #: the frame of each variable that holds an image or objects (see visprog.language.frames)
        self.frames = frames or {}

    def value(self, param: Param, root: str | None = None) -> Node | None:
        """What may stand for ``param``: its literals and the variables whose type fits (for Objects, only
        those found in the frame ``root`` or in no known one, when ``root`` is given); None if nothing."""
        if param.type is Type.TEMPLATE:
            return seq('"', Ref("e_top"), '"')
        literal = _literal(param.type, param.validator)
        if self.variables is None:
            return NAME if literal is None else alt(literal, NAME)
        names = [n for n, t in self.variables.items() if self.fits(n, t, param, root)]
        options = [o for o in (literal, *names) if o is not None]
        return alt(*options) if options else None

    def fits(self, name: str, t: Type, param: Param, root: str | None) -> bool:
        if param.type in (Type.IMAGE, Type.OBJECTS) and t is not param.type:
            return False  # an Eval's value (any) is never an image or objects here: it would fail at run time
        if not assignable(t, param.type, param.optional):
            return False
        frame = self.frames.get(name)
        return root is None or param.type is not Type.OBJECTS or frame is None or frame.root == root

    def call(self, spec: ModuleSpec) -> Node | None:
        """``Name(arg=value, ...)`` in declaration order, optional arguments optional; None when a
        required argument has nothing that may stand for it. When the module works in an image's frame,
        one alternative per image of a known frame, each with only the objects of that frame."""
        image = spec.param(spec.frame) if spec.frame else None
        if self.variables is None or image is None or not any(p.type is Type.OBJECTS for p in spec.params):
            return self.call_in(spec, None, None)
        roots: dict[str | None, list[str]] = {}
        for name, t in self.variables.items():
            if t is Type.IMAGE:
                frame = self.frames.get(name)
                roots.setdefault(frame.root if frame is not None else None, []).append(name)
        options = [c for root, names in roots.items() if (c := self.call_in(spec, root, names)) is not None]
        return alt(*options) if options else None

    def call_in(self, spec: ModuleSpec, root: str | None, images: list[str] | None) -> Node | None:
        parts: list[Node | str] = [f"{spec.name}("]
        first = True
        for param in spec.params:
            if images is not None and param.name == spec.frame:
                value: Node | None = alt(*images)
            else:
                value = self.value(param, root)
            if value is None:
                if param.required or first:
                    return None
                continue
            part = seq("" if first else ", ", f"{param.name}=", value)
            parts.append(part if param.required or first else Opt(part))
            first = False
        parts.append(")")
        return seq(*parts)

    def calls(self) -> Node | None:
        options = [c for spec in self.registry if spec.name != RESULT_MODULE and (c := self.call(spec)) is not None]
        return alt(*options) if options else None

    def result(self) -> Node | None:
        names: list[Node | str] = [NAME] if self.variables is None else list(self.variables)
        return seq(f"{RESULT_TARGET}={RESULT_MODULE}(var=", alt(*names), ")") if names else None


def choose_mode(constrain: str | None, supported: tuple[str, ...], backend: str) -> str:
    """The constraint a planner uses: ``constrain`` (checked), or by default the strongest the backend follows
    (``supported``: the modes it can follow besides ``none``)."""
    if constrain is None:
        return next((m for m in ("types", "grammar") if m in supported), "none")
    if constrain not in CONSTRAIN_MODES:
        raise ConfigError(f"constrain must be one of {', '.join(CONSTRAIN_MODES)} (--constrain), got {constrain!r}")
    if constrain != "none" and constrain not in supported:
        if not supported:
            how = (
                "a local model (--local) follows a constraint; a server does when [llm] grammar_format says "
                "how it takes a grammar"
            )
        else:
            how = f"it follows {' or '.join(supported)} (types needs a local model: a server takes one grammar)"
        raise ConfigError(f"constrain={constrain!r} cannot be used with {backend}: {how}; or use --constrain none")
    return constrain


def program_grammar(registry: Registry) -> Grammar:
    """The grammar of a whole program (``constrain = grammar``): step lines, then the result line."""
    builder = _Builder(registry, None)
    calls = builder.calls()
    result = builder.result()
    if calls is None or result is None:
        raise ValueError("the registry has no module a program could call")
    return {
        "start": seq(Star(Ref("step")), Ref("result")),
        "step": seq(NAME, "=", calls, "\n"),
        "result": result,
        **_eval_rules(None),
    }


def line_grammar(
    registry: Registry,
    variables: Mapping[str, Type],
    steps: int,
    *,
    finish: bool = False,
    frames: Mapping[str, Frame | None] | None = None,
) -> Grammar:
    """The grammar of the next line (``constrain = types``) after ``steps`` steps, with ``variables``
    (inputs first, then what the steps assigned, each with its type) in scope, and the ``frames`` of
    those that hold images or objects (objects are offered only with images of their frame); with
    ``finish``, only the result line once there is a step."""
    builder = _Builder(registry, variables, frames)
    options: list[Node] = []
    calls = None if finish and steps else builder.calls()
    if calls is not None:
        options.append(Ref("step"))
    result = builder.result() if steps else None
    if result is not None:
        options.append(result)
    if not options:
        raise ValueError(f"no module can be called with the variables {', '.join(variables) or '(none)'}")
    grammar: dict[str, Node] = {"start": alt(*options)}
    if calls is not None:
        grammar["step"] = seq(NAME, "=", calls, "\n")
    grammar.update(_eval_rules(variables))
    return grammar


@dataclass
class ProgramConstraint:
    """The grammars a constrained generation follows, for one task's inputs (a grammar source for
    :mod:`visprog.llm`): :meth:`start` gives the first one in Lark; :meth:`next`, given the text
    generated so far, the grammar of what comes next, or None when the program is complete.

    With ``mode="grammar"`` the first grammar covers the whole program; with ``"types"`` each
    covers one line and is rebuilt from the lines so far.
    """

    registry: Registry
    inputs: Mapping[str, Type]
    mode: str = "types"

    def __post_init__(self) -> None:
        if self.mode not in CONSTRAIN_MODES or self.mode == "none":
            raise ValueError(f"constrain mode must be 'grammar' or 'types', got {self.mode!r}")

    def grammar(self, syntax: str = "lark") -> str:
        """The whole program's grammar (``grammar`` strength) in ``lark`` or ``gbnf``: what a server takes."""
        g = program_grammar(self.registry)
        if syntax == "lark":
            return to_lark(g)
        if syntax == "gbnf":
            return to_gbnf(g)
        raise ValueError(f"grammar format must be one of {', '.join(GRAMMAR_FORMATS)}, got {syntax!r}")

    def start(self) -> str:
        if self.mode == "grammar":
            return to_lark(program_grammar(self.registry))
        return to_lark(line_grammar(self.registry, dict(self.inputs), 0, frames=self.input_frames()))

    def input_frames(self) -> dict[str, Frame | None]:
        return {name: Frame(name) for name, t in self.inputs.items() if t is Type.IMAGE}

    def next(self, text: str, finish: bool = False) -> str | None:
        """The grammar of the line after ``text`` (complete lines), or None when ``text`` ends with the result line.
        ``finish``: only the result line (when a step has assigned something), as few tokens are left."""
        if self.mode == "grammar":
            return None
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines or lines[-1].startswith(f"{RESULT_TARGET}={RESULT_MODULE}("):
            return None if lines else self.start()
        variables: dict[str, Type] = dict(self.inputs)
        frames = self.input_frames()
        for target, returns, frame in self.assignments("\n".join(lines)):
            variables.pop(target, None)  # the latest assignment decides the type, and comes last
            variables[target] = returns
            frames[target] = frame
        return to_lark(line_grammar(self.registry, variables, len(lines), finish=finish, frames=frames))

    def assignments(self, text: str) -> list[tuple[str, Type, Frame | None]]:
        """Each step's target, the type of what it assigns and its frame, as the checker sees them (the
        lines so far check: the grammar wrote them); by the modules' return types if they do not."""
        try:
            checked = check(text, self.inputs, registry=self.registry, known_inputs=self.inputs)
        except ProgramError:
            return [(t, r, None) for t, r in _assignments(text, self.registry)]
        return [(s.step.target, s.type, s.frame) for s in checked.steps]


def _assignments(text: str, registry: Registry) -> list[tuple[str, Type]]:
    """Each step's target and the type of what it assigns (the module's return type)."""
    try:
        program = parser.parse(text)
    except ProgramError:
        return []
    out: list[tuple[str, Type]] = []
    for step in program.steps:
        call = step.call
        spec = registry.get(call.module) if call is not None else None
        out.append((step.target, spec.returns if spec is not None else Type.ANY))
    return out
