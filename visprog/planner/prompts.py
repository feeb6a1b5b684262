"""Planner prompts: the module reference and the messages sent to a language model.

A task's instructions and in-context examples are data (see
:mod:`visprog.planner.tasks`), and a prompt shows the examples most like its
text (:mod:`visprog.planner.retrieval`); the module reference is never written by hand:
:func:`module_reference` renders it from the registry (signatures and
docstrings), so a plugin module shows up in every prompt as soon as it is
registered. Everything here is deterministic: the same task, registry and
text give the same prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from visprog.language.expr_syntax import FUNCTIONS, METHODS
from visprog.language.signatures import ModuleSpec, Registry
from visprog.planner.retrieval import DEFAULT_EXAMPLES, select_examples
from visprog.planner.tasks import Task

__all__ = [
    "build_messages",
    "module_reference",
    "repair_messages",
    "system_prompt",
]

_INDENT = "    "


# --------------------------------------------------------------------------- rendering


def module_reference(registry: Registry) -> str:
    """Every registered module, in registry order, as the planner sees it.

    One entry per module: its signature ``Name(arg: type, ...) -> type`` on a
    line of its own, then, indented, its docstring's description, each
    argument's description and what it returns. Aliases are left out.
    """
    return "\n\n".join(_describe(spec) for spec in registry)


def _describe(spec: ModuleSpec) -> str:
    lines = [spec.signature()]
    paragraphs = _paragraphs(spec.description) or _paragraphs(spec.summary)
    lines += [f"{_INDENT}{p}" for p in paragraphs]
    if spec.params:
        lines.append(f"{_INDENT}Arguments:")
        lines += [f"{_INDENT}{_INDENT}{p.name}: {_one_line(p.description)}" for p in spec.params]
    if spec.returns_description:
        lines.append(f"{_INDENT}Returns: {_one_line(spec.returns_description)}")
    return "\n".join(lines)


def _paragraphs(text: str) -> list[str]:
    return [_one_line(p) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _names(inputs: Sequence[str]) -> str:
    if len(inputs) == 1:
        return inputs[0]
    return ", ".join(inputs[:-1]) + " and " + inputs[-1]


def _rules(task: Task) -> str:
    if len(task.inputs) == 1:
        inputs = f"- The program's input is {task.inputs[0]}, an image given by the caller; use it by name"
        inputs += " and never assign to it."
    else:
        inputs = f"- The program's inputs are {_names(task.inputs)}, images given by the caller; use them by name"
        inputs += " and never assign to them."
    return "\n".join(
        [
            "You write programs in the VisProg language. A program solves a visual task by calling the modules "
            "listed below, one step at a time.",
            "Rules:",
            "- One step per line: NAME=Module(arg=value, ...). NAME is a new upper-case variable (BOX0, IMAGE1, "
            "ANSWER2) that holds the step's result for later steps.",
            "- Pass every argument by keyword, with exactly the argument names listed below. A value is a string in "
            "quotes ('dog'), a number, True, False, None, a list (['cat', 'dog']), an earlier variable, or an input.",
            inputs,
            "- Give each argument a value of the type it expects: Image, Objects (found objects, each with a box, "
            "a label, a score and maybe a mask), str, int, float, bool, list[str]; any takes every type.",
            _eval_rule(),
            "- The last line is FINAL_RESULT=Result(var=NAME), where NAME holds the answer.",
            "- Answer with the program only: no explanation, no Markdown.",
        ]
    )


def _eval_rule() -> str:
    """What Eval accepts, in a few lines; the functions and methods are read from Eval's grammar."""
    return (
        '- Eval(expr="...") computes a value from earlier results; write an earlier variable as {NAME} inside the '
        "expression, e.g. Eval(expr=\"'yes' if {ANSWER0} > 0 else 'no'\"). Expressions have numbers, strings in "
        "quotes, lists ['a', 'b'], + - * / // % **, comparisons (== != < <= > >=), in and not in a list "
        "({ANSWER0} in ['red', 'pink']), and, or, not, xor, 'a' if condition else 'b', parentheses, the functions "
        f"{' '.join(FUNCTIONS)} (max({{ANSWER0}}, {{ANSWER1}})) and the text methods "
        f"{' '.join(METHODS)} ({{ANSWER0}}.lower()); nothing else. Answers 'yes' / 'no' read as True / False, and "
        "'2' or 'two' as numbers."
    )


def system_prompt(task: Task, registry: Registry) -> str:
    """The general rules of the language, the task's instructions and the module reference."""
    parts = [_rules(task)]
    what = f"Task: {task.description}." if task.description else ""
    if what or task.instructions:
        parts.append("\n".join(p for p in (what, task.instructions) if p))
    parts.append("Modules:\n\n" + module_reference(registry))
    return "\n\n".join(parts)


def build_messages(task: Task, registry: Registry, text: str, examples: int = DEFAULT_EXAMPLES) -> list[dict[str, str]]:
    """Chat messages: the system prompt, one user/assistant pair per example, then ``text`` as the user's turn.

    The examples are the ``examples`` of the task's pool most similar to ``text``, the most similar last
    (:func:`visprog.planner.retrieval.select_examples`): all of a smaller pool, none for 0.
    """
    messages = [{"role": "system", "content": system_prompt(task, registry)}]
    for example in select_examples(task.examples, text, examples):
        messages.append({"role": "user", "content": task.format_input(example.input)})
        messages.append({"role": "assistant", "content": example.program})
    messages.append({"role": "user", "content": task.format_input(text)})
    return messages


def _repair_request(diagnostics: str) -> str:
    return f"The program has errors:\n{diagnostics.strip()}\nWrite the whole corrected program, nothing else."


def repair_messages(messages: list[dict[str, str]], reply: str, diagnostics: str) -> list[dict[str, str]]:
    """``messages`` (unchanged) followed by the faulty ``reply`` and a request to fix the ``diagnostics``.

    An empty reply is sent as ``(no program)``: some servers refuse empty assistant turns.
    """
    return [
        *messages,
        {"role": "assistant", "content": reply if reply.strip() else "(no program)"},
        {"role": "user", "content": _repair_request(diagnostics)},
    ]
