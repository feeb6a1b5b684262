"""VisProg grammars for constrained decoding, built from module signatures and rendered for several libraries.

Two grammars: ``program_grammar`` (a whole program: the registry's modules and argument names, any upper-case
variable, any value) and ``line_grammar`` (one line, rebuilt after each line from the variables assigned so far:
each parameter takes a literal of its type or a fixed list of the variables of its type, and the new name is the
next free one for the result's type). Each renders as GBNF (``to_gbnf``: xgrammar, transformers-cfg, llama.cpp),
Lark (``to_lark``: llguidance, outlines' CFG) or a regular expression (``to_regex``: outlines-core; a regex cannot
nest, so Eval expressions lose parentheses, lists and calls there). Used by bench_constraint_libraries.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

SIGNATURES = """\
Loc(image: Image, object: str) -> Objects
FaceDet(image: Image) -> Objects
Seg(image: Image) -> Objects
Select(image: Image, object: Objects, query: str, category: str | None = None) -> Objects
Classify(image: Image, object: Objects, categories: list[str]) -> Objects
Crop(image: Image, box: Objects) -> Image
CropLeftOf(image: Image, box: Objects) -> Image
CropRightOf(image: Image, box: Objects) -> Image
CropAbove(image: Image, box: Objects) -> Image
CropBelow(image: Image, box: Objects) -> Image
Count(box: Objects) -> int
ColorPop(image: Image, object: Objects) -> Image
BgBlur(image: Image, object: Objects) -> Image
Tag(image: Image, object: Objects) -> Image
Emoji(image: Image, object: Objects, emoji: str) -> Image
Replace(image: Image, object: Objects, prompt: str) -> Image
List(query: str, max: int = 20) -> list[str]
Vqa(image: Image, question: str) -> str
Eval(expr: expression) -> any
Result(var: any) -> any"""
Param = tuple[str, str, bool]  # argument, type, required
MODULES: list[tuple[str, list[Param], str]] = [
    (
        m[1],
        [(a, t.replace(" ", ""), not d) for a, t, d in re.findall(r"(\w+): ([^,=]+?)( = [^,]+)?(?:, |$)", m[2])],
        m[3],
    )
    for m in re.finditer(r"^(\w+)\((.*)\) -> (.+)$", SIGNATURES, re.M)
    if m[1] != "Result"  # the final step only
]
RESULT_TYPE = {name: result for name, _, result in MODULES}
PREFIX = {"Objects": "BOX", "Image": "IMAGE", "int": "ANSWER", "str": "ANSWER", "any": "ANSWER", "list[str]": "LIST"}
SCALARS = ("int", "str", "any", "list[str]")  # the types an Eval expression reads
REFERENCE = """BOX0=Loc(image=IMAGE, object='laptop')
IMAGE0=CropLeftOf(image=IMAGE, box=BOX0)
BOX1=Loc(image=IMAGE0, object='cup')
IMAGE1=Crop(image=IMAGE0, box=BOX1)
ANSWER0=Vqa(image=IMAGE1, question='What color is the cup?')
ANSWER1=Eval(expr="'yes' if {ANSWER0} == 'red' else 'no'")
FINAL_RESULT=Result(var=ANSWER1)"""

# ---------------------------------------------------------------- a grammar, and its three renderings
Node = tuple[str, Any]  # ("lit", text) ("ref", rule) ("seq", [nodes]) ("alt", [nodes]) ("opt", node) ("star", node)
TERMINALS = {  # name: (GBNF, Lark and regex)
    "STRING": ('"\'" [^\'\\\\\\n]* "\'"', r"'[^'\\\n]*'"),
    "ESTRING": ('"\'" [^\'"\\\\\\n]* "\'"', r"""'[^'"\\\n]*'"""),  # a string inside Eval's double quotes
    "NUMBER": ('"-"? [0-9]+ ("." [0-9]+)?', r"-?[0-9]+(\.[0-9]+)?"),
    "INT": ('"-"? [0-9]+', r"-?[0-9]+"),
    "NAME": ("[A-Z] [A-Z0-9_]*", r"[A-Z][A-Z0-9_]*"),
}


def _node(kind: str) -> Callable[..., Node]:
    return lambda *items: (kind, list(items) if kind in ("seq", "alt") else items[0])


lit, ref, seq, alt, opt, star = map(_node, ("lit", "ref", "seq", "alt", "opt", "star"))


def render(node: Node, name: Callable[[str], str]) -> str:
    kind, body = node
    if kind == "lit":
        return '"' + body.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if kind == "ref":
        return name(body)
    if kind in ("seq", "alt"):
        return "(" + (" " if kind == "seq" else " | ").join(render(n, name) for n in body) + ")"
    return render(body, name) + {"opt": "?", "star": "*"}[kind]


def to_gbnf(rules: dict[str, Node]) -> str:
    def name(rule: str) -> str:
        return "root" if rule == "start" else rule.replace("_", "-")

    lines = [f"{name(n)} ::= {render(r, name)}" for n, r in rules.items()]
    return "\n".join(lines + [f"{t} ::= {gbnf}" for t, (gbnf, _) in TERMINALS.items()])


def to_lark(rules: dict[str, Node]) -> str:
    lines = [f"{n}: {render(r, str)}" for n, r in rules.items()]
    return "\n".join(lines + [f"{t}: /{rx}/" for t, (_, rx) in TERMINALS.items()])


def to_regex(rules: dict[str, Node]) -> str:
    """Every rule inlined; an alternative that would recurse into a rule already being expanded is dropped."""

    def go(node: Node, stack: tuple[str, ...]) -> str | None:
        kind, body = node
        if kind == "lit":
            return re.escape(body)
        if kind == "ref":
            if body in TERMINALS:
                return "(?:" + TERMINALS[body][1] + ")"
            return None if body in stack else go(rules[body], (*stack, body))
        if kind == "seq":
            parts = [go(n, stack) for n in body]
            return None if None in parts else "(?:" + "".join(p or "" for p in parts) + ")"
        if kind == "alt":
            kept = [p for p in (go(n, stack) for n in body) if p is not None]
            return "(?:" + "|".join(kept) + ")" if kept else None
        inner = go(body, stack)
        return "" if inner is None else "(?:" + inner + ")" + {"opt": "?", "star": "*"}[kind]

    return go(rules["start"], ("start",)) or ""


def expression_rules(placeholder: Node) -> dict[str, Node]:
    """Eval's expression (most of expr.lark, with canonical spacing), inside double quotes."""

    def words(*texts: str) -> Node:
        return alt(*map(lit, texts))

    return {
        # `a if c else b if d else e`: the language of the right-nested conditional, without recursion
        "expr": seq(ref("disj"), star(seq(lit(" if "), ref("disj"), lit(" else "), ref("disj")))),
        "disj": seq(ref("conj"), star(seq(lit(" or "), ref("conj")))),
        "conj": seq(ref("neg"), star(seq(lit(" and "), ref("neg")))),
        "neg": alt(seq(lit("not "), ref("cmp")), ref("cmp")),
        "cmp": seq(
            ref("arith"),
            opt(seq(words(" == ", " != ", " >= ", " <= ", " > ", " < ", " in ", " not in "), ref("arith"))),
        ),
        "arith": seq(ref("atom"), star(seq(words(" + ", " - ", " * ", " / "), ref("atom")))),
        "atom": alt(
            seq(placeholder, opt(seq(lit("."), words("lower", "upper", "strip"), lit("()")))),
            ref("ESTRING"),
            ref("NUMBER"),
            seq(lit("("), ref("expr"), lit(")")),
            seq(lit("["), opt(seq(ref("expr"), star(seq(lit(", "), ref("expr"))))), lit("]")),
            seq(
                words("len", "max", "min", "abs", "int", "str", "round"),
                lit("("),
                ref("expr"),
                star(seq(lit(", "), ref("expr"))),
                lit(")"),
            ),
        ),
    }


def call(module: str, params: list[Param], value: Callable[[str], Node | None]) -> Node | None:
    """``Module(arg=value, ...)`` by keyword in declaration order; None when a required argument has no value."""
    items = [lit(module + "(")]
    for i, (arg, typ, required) in enumerate(params):
        v = value(typ)
        if v is None and required:
            return None
        if v is not None:
            items.append(seq(lit((", " if i else "") + arg + "="), v) if required else opt(seq(lit(f", {arg}="), v)))
    return seq(*items, lit(")"))


def program_grammar() -> dict[str, Node]:
    """A whole program: registry modules and argument names, any upper-case variable, untyped values."""
    scalar = alt(ref("STRING"), ref("NUMBER"), ref("NAME"), lit("None"), lit("True"), lit("False"))
    expr = seq(lit('"'), ref("expr"), lit('"'))
    calls = [call(m, p, lambda t: expr if t == "expression" else ref("value")) for m, p, _ in MODULES]
    return {
        "start": seq(star(ref("step")), lit("FINAL_RESULT=Result(var="), ref("NAME"), lit(")")),
        "step": seq(ref("NAME"), lit("="), alt(*[c for c in calls if c]), lit("\n")),
        "value": alt(scalar, seq(lit("["), opt(seq(scalar, star(seq(lit(", "), scalar)))), lit("]"))),
        **expression_rules(seq(lit("{"), ref("NAME"), lit("}"))),
    }


def line_grammar(env: dict[str, str], final_only: bool = False) -> dict[str, Node]:
    """One line, given the assigned variables and their types: typed values, the next free name per result type;
    with ``final_only`` (and a variable assigned), only the final step."""

    def names(*types: str) -> list[Node]:
        return [lit(n) for n, t in env.items() if t in types]

    strings = seq(lit("["), ref("STRING"), star(seq(lit(", "), ref("STRING"))), lit("]"))
    values = {
        "Image": names("Image"),
        "Objects": names("Objects"),
        "str": [ref("STRING"), *names("str", "any")],
        "str|None": [lit("None"), ref("STRING"), *names("str", "any")],
        "int": [ref("INT"), *names("int", "any")],
        "list[str]": [strings, ref("STRING"), *names("list[str]", "any")],
        "expression": [seq(lit('"'), ref("expr"), lit('"'))] if names(*SCALARS) else [],
    }
    steps, final_only = [], final_only and len(env) > 1
    for prefix in () if final_only else dict.fromkeys(PREFIX.values()):
        calls = [
            call(m, p, lambda t: alt(*values[t]) if values[t] else None) for m, p, r in MODULES if PREFIX[r] == prefix
        ]
        taken = [int(n[len(prefix) :]) for n in env if re.fullmatch(prefix + r"\d+", n)]
        if any(calls):
            steps.append(seq(lit(f"{prefix}{max(taken, default=-1) + 1}="), alt(*[c for c in calls if c]), lit("\n")))
    if len(env) > 1:
        steps.append(seq(lit("FINAL_RESULT=Result(var="), alt(*[lit(n) for n in env if n != "IMAGE"]), lit(")")))
    rules = {"start": alt(*steps)}
    if names(*SCALARS) and not final_only:
        rules.update(expression_rules(alt(*[lit("{" + n + "}") for n, t in env.items() if t in SCALARS])))
    return rules


def assign(env: dict[str, str], line: str) -> None:
    m = re.match(r"\s*(\w+)\s*=\s*(\w+)\s*\(", line)
    if m and m[2] in RESULT_TYPE:
        env[m[1]] = RESULT_TYPE[m[2]]


def reference_envs() -> list[dict[str, str]]:
    env, out = {"IMAGE": "Image"}, []
    for line in REFERENCE.splitlines():
        out.append(dict(env))
        assign(env, line)
    return out


RENDER: dict[str, Callable[[dict[str, Node]], str]] = {"gbnf": to_gbnf, "lark": to_lark, "regex": to_regex}
