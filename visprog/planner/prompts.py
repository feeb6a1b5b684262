"""Planner prompts: the task's prompt set, the module reference, and the messages sent to a language model.

A prompt set is data: one TOML file per task (``prompts/gqa.toml`` in the
source tree, installed as the package ``visprog.prompts``) with the task's
instructions and its in-context examples::

    task = "gqa"
    description = "questions about one image"
    inputs = ["IMAGE"]
    input_label = "Question"
    instructions = \"\"\"...\"\"\"

    [[examples]]
    input = "How many dogs are there?"
    program = \"\"\"
    BOX0=Loc(image=IMAGE, object='dog')
    ANSWER0=Count(box=BOX0)
    FINAL_RESULT=Result(var=ANSWER0)
    \"\"\"

The module reference is never written by hand: :func:`module_reference`
renders it from the registry (signatures and docstrings), so a plugin module
shows up in every prompt as soon as it is registered. Everything here is
deterministic: the same prompt set, registry and text give the same prompt.
"""

from __future__ import annotations

import functools
import os
import re
import textwrap
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from visprog.errors import ConfigError
from visprog.language.signatures import ModuleSpec, Registry

__all__ = [
    "TASKS",
    "Example",
    "PromptSet",
    "build_completion_prompt",
    "build_messages",
    "load_prompts",
    "module_reference",
    "repair_messages",
    "repair_prompt",
    "system_prompt",
]

#: The tasks with a prompt file shipped in ``visprog.prompts``.
TASKS: tuple[str, ...] = ("gqa", "nlvr", "edit", "tag")

_PACKAGE = "visprog.prompts"
_KEYS = ("task", "description", "inputs", "input_label", "instructions", "examples")
_EXAMPLE_KEYS = ("input", "program")
_INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INDENT = "    "


@dataclass(frozen=True)
class Example:
    """One in-context example: a task input and the program that solves it."""

    input: str  # the question / statement / instruction
    program: str  # a VisProg program, without a trailing newline


@dataclass(frozen=True)
class PromptSet:
    """A task's prompts: what its inputs are called, its instructions and its examples."""

    task: str  # "gqa" | "nlvr" | "edit" | "tag", or a user file's stem
    description: str  # one line, e.g. "questions about one image"
    inputs: tuple[str, ...]  # ("IMAGE",) or ("LEFT", "RIGHT")
    instructions: str  # the task-specific guidance shown before the examples
    examples: tuple[Example, ...]
    input_label: str = "Question"  # how a task input is labelled: "Question", "Statement", "Instruction"

    def format_input(self, text: str) -> str:
        """``text`` labelled as this task labels its inputs, e.g. ``Question: How many dogs?``."""
        return f"{self.input_label}: {text.strip()}"


# --------------------------------------------------------------------------- loading


def load_prompts(task_or_path: str | os.PathLike[str]) -> PromptSet:
    """The prompt set of a packaged task (``"gqa"``, ``"nlvr"``, ``"edit"``, ``"tag"``) or of a TOML file.

    Raises :class:`~visprog.errors.ConfigError` naming the task, or the file and
    the key, when the task is unknown or the file is missing or malformed.
    """
    if isinstance(task_or_path, str):
        name = task_or_path.strip()
        if name.lower() in TASKS:
            return _packaged(name.lower())
        if not _looks_like_path(name):
            raise ConfigError(
                f"unknown task '{task_or_path}': expected one of {', '.join(TASKS)}, or the path to a prompt TOML file"
            )
    path = Path(task_or_path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: prompt file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the prompt file: {e}") from e
    return _parse(text, str(path), default_task=path.stem)


def _looks_like_path(name: str) -> bool:
    return "/" in name or os.sep in name or name.endswith(".toml") or Path(name).expanduser().is_file()


@functools.cache
def _packaged(task: str) -> PromptSet:
    resource = resources.files(_PACKAGE) / f"{task}.toml"
    source = f"{_PACKAGE.replace('.', '/')}/{task}.toml"
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: the packaged prompt file for task '{task}' is missing") from None
    return _parse(text, source, default_task=task)


def _parse(text: str, source: str, *, default_task: str) -> PromptSet:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    unknown = [k for k in data if k not in _KEYS]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(repr(k) for k in unknown)}; expected {', '.join(_KEYS)}"
        )
    task = _string(data, "task", source, default=default_task, one_line=True)
    description = _string(data, "description", source, default="", one_line=True)
    input_label = _string(data, "input_label", source, default="Question", one_line=True)
    instructions = _string(data, "instructions", source, default="").strip()
    if not task:
        raise ConfigError(f"{source}: key 'task' must not be empty")
    if not input_label:
        raise ConfigError(f"{source}: key 'input_label' must not be empty")
    return PromptSet(
        task=task,
        description=description,
        inputs=_inputs(data, source),
        instructions=instructions,
        examples=_examples(data, source),
        input_label=input_label,
    )


def _string(
    data: Mapping[str, Any], key: str, where: str, *, default: str | None = None, one_line: bool = False
) -> str:
    if key not in data:
        if default is None:
            raise ConfigError(f"{where}: key '{key}' is missing")
        return default
    value = data[key]
    if not isinstance(value, str):
        raise ConfigError(f"{where}: key '{key}' must be a string, got {_type_name(value)}")
    if one_line and "\n" in value.strip():
        raise ConfigError(f"{where}: key '{key}' must be one line")
    return value.strip() if one_line else value


def _inputs(data: Mapping[str, Any], source: str) -> tuple[str, ...]:
    if "inputs" not in data:
        raise ConfigError(f"{source}: key 'inputs' is missing (the program's input names, e.g. [\"IMAGE\"])")
    value = data["inputs"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: key 'inputs' must be a non-empty list of names, got {_type_name(value)}")
    for name in value:
        if not isinstance(name, str) or not _INPUT_NAME.match(name):
            raise ConfigError(f"{source}: key 'inputs': {name!r} is not a variable name such as IMAGE")
    if len(set(value)) != len(value):
        raise ConfigError(f"{source}: key 'inputs' names an input twice")
    return tuple(value)


def _examples(data: Mapping[str, Any], source: str) -> tuple[Example, ...]:
    if "examples" not in data:
        raise ConfigError(f"{source}: key 'examples' is missing (one [[examples]] table with input and program each)")
    value = data["examples"]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: key 'examples' must be a non-empty array of [[examples]] tables")
    examples = []
    for i, item in enumerate(value, start=1):
        where = f"{source}: examples[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a table with keys input and program, got {_type_name(item)}")
        unknown = [k for k in item if k not in _EXAMPLE_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; expected input, program")
        text = _string(item, "input", where).strip()
        program = textwrap.dedent(_string(item, "program", where)).strip()
        for key, got in (("input", text), ("program", program)):
            if not got:
                raise ConfigError(f"{where}: key '{key}' must not be empty")
        examples.append(Example(input=text, program=program))
    return tuple(examples)


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


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


def _rules(prompts: PromptSet) -> str:
    if len(prompts.inputs) == 1:
        inputs = f"- The program's input is {prompts.inputs[0]}, an image given by the caller; use it by name"
        inputs += " and never assign to it."
    else:
        inputs = f"- The program's inputs are {_names(prompts.inputs)}, images given by the caller; use them by name"
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
            '- Eval(expr="...") computes a value from earlier results; write an earlier variable as {NAME} inside '
            "the expression, e.g. Eval(expr=\"'yes' if {ANSWER0} > 0 else 'no'\"). Expressions have numbers, strings "
            "in quotes, + - * / // %, comparisons (== != < <= > >=), and, or, not, xor, 'a' if condition else 'b' "
            "and parentheses, nothing else. Answers 'yes' / 'no' read as True / False, and '2' or 'two' as numbers.",
            "- The last line is FINAL_RESULT=Result(var=NAME), where NAME holds the answer.",
            "- Answer with the program only: no explanation, no Markdown.",
        ]
    )


def system_prompt(prompts: PromptSet, registry: Registry) -> str:
    """The general rules of the language, the task's instructions and the module reference."""
    parts = [_rules(prompts)]
    task = f"Task: {prompts.description}." if prompts.description else ""
    if task or prompts.instructions:
        parts.append("\n".join(p for p in (task, prompts.instructions) if p))
    parts.append("Modules:\n\n" + module_reference(registry))
    return "\n\n".join(parts)


def build_messages(prompts: PromptSet, registry: Registry, text: str) -> list[dict[str, str]]:
    """Chat messages: the system prompt, one user/assistant pair per example, then ``text`` as the user's turn."""
    messages = [{"role": "system", "content": system_prompt(prompts, registry)}]
    for example in prompts.examples:
        messages.append({"role": "user", "content": prompts.format_input(example.input)})
        messages.append({"role": "assistant", "content": example.program})
    messages.append({"role": "user", "content": prompts.format_input(text)})
    return messages


def build_completion_prompt(prompts: PromptSet, registry: Registry, text: str) -> str:
    """One text for a completion model (VisProg's original style), ending with ``text`` and ``Program:``."""
    shots = "".join(f"{prompts.format_input(e.input)}\nProgram:\n{e.program}\n\n" for e in prompts.examples)
    return f"{system_prompt(prompts, registry)}\n\n{shots}{prompts.format_input(text)}\nProgram:\n"


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


def repair_prompt(prompt: str, reply: str, diagnostics: str) -> str:
    """The completion-style equivalent of :func:`repair_messages`, ending with ``Program:``."""
    return f"{prompt}{reply.strip()}\n\n{_repair_request(diagnostics)}\nProgram:\n"
