"""Tasks: the one definition of each task, read from TOML files.

A task is data: one TOML file (``prompts/gqa.toml`` in the source tree,
installed as the package ``visprog.prompts``) says everything about it, and
the planner, the CLI, the web app, evaluation and ``visprog.check`` read it
from here::

    task = "gqa"                        # the name (default: the file's stem)
    description = "questions about one image"
    inputs = ["IMAGE"]                  # the program's input images, in order
    input_label = "Question"            # how the text is labelled in the prompt
    verb = "ask"                        # the CLI command: visprog ask IMAGE "..."
    web_label = "Ask about one image"   # the web app's choice
    answer = "text"                     # "text", "yes/no" or "image"
    first_words = []                    # text starting with one of these is this task (the web app's auto)
    instructions = \"\"\"...\"\"\"

    [[examples]]
    input = "How many dogs are there?"
    program = \"\"\"
    BOX0=Loc(image=IMAGE, object='dog')
    ANSWER0=Count(box=BOX0)
    FINAL_RESULT=Result(var=ANSWER0)
    \"\"\"

The tasks are the packaged files plus every ``*.toml`` in the folders named by
the ``VISPROG_TASKS`` environment variable (separated by ``os.pathsep``); a
file there replaces the packaged task of the same name. Nothing lists them in
code: a new file is a new task in ``visprog --help``, ``visprog eval --task``
and the web app.
"""

from __future__ import annotations

import functools
import os
import re
import textwrap
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from visprog.errors import ConfigError
from visprog.language.tokens import is_name

__all__ = [
    "ANSWERS",
    "ENVIRONMENT",
    "Example",
    "Task",
    "get_task",
    "guess_task",
    "input_names",
    "load_task",
    "tasks",
]

#: What a task's answer is: free text (a word, a number), a yes/no decision, or an image.
ANSWERS: tuple[str, ...] = ("text", "yes/no", "image")

#: The environment variable naming folders of further task files (``os.pathsep``-separated).
ENVIRONMENT = "VISPROG_TASKS"

_PACKAGE = "visprog.prompts"
_KEYS = (
    "task",
    "description",
    "inputs",
    "input_label",
    "verb",
    "web_label",
    "answer",
    "first_words",
    "instructions",
    "examples",
)
_EXAMPLE_KEYS = ("input", "program")
_VERB = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class Example:
    """One in-context example: a task input and the program that solves it."""

    input: str  # the question / statement / instruction
    program: str  # a VisProg program, without a trailing newline


@dataclass(frozen=True)
class Task:
    """Everything about a task: its inputs, how the CLI and the web app offer it, its prompts."""

    name: str  # "gqa" | "nlvr" | "edit" | "tag", or a user file's task
    description: str  # one line, e.g. "questions about one image"
    inputs: tuple[str, ...]  # ("IMAGE",) or ("LEFT", "RIGHT")
    instructions: str  # the task-specific guidance shown before the examples
    examples: tuple[Example, ...]
    input_label: str = "Question"  # how a task input is labelled: "Question", "Statement", "Instruction"
    verb: str = ""  # the CLI command ("ask"); the name when empty
    web_label: str = ""  # the web app's choice ("Ask about one image"); the name when empty
    answer: str = "text"  # one of ANSWERS
    first_words: tuple[str, ...] = ()  # lower-case words that make a text this task (see guess_task)
    source: str = ""  # the file it was read from

    @property
    def command(self) -> str:
        """The CLI command that runs this task."""
        return self.verb or self.name

    @property
    def label(self) -> str:
        """How the web app offers this task."""
        return self.web_label or self.name

    def format_input(self, text: str) -> str:
        """``text`` labelled as this task labels its inputs, e.g. ``Question: How many dogs?``."""
        return f"{self.input_label}: {text.strip()}"


# --------------------------------------------------------------------------- every task


def tasks() -> dict[str, Task]:
    """Every task by name: the packaged ones, then those in the ``VISPROG_TASKS`` folders.

    Raises :class:`~visprog.errors.ConfigError` naming the file for a file that
    is malformed, and naming both files for two tasks with one name or one verb.
    """
    return dict(_discover(os.environ.get(ENVIRONMENT, "")))


def get_task(task: str | os.PathLike[str] | Task) -> Task:
    """A task by name (``"gqa"``, any case), or read from a TOML file's path.

    Raises :class:`~visprog.errors.ConfigError` naming the task and the known
    ones when there is no such task, or the file and the key when the file is
    missing or malformed.
    """
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        name = task.strip()
        known = tasks()
        found = known.get(name) or known.get(name.lower())
        if found is not None:
            return found
        if not _looks_like_path(name):
            raise ConfigError(
                f"unknown task '{task}': expected one of {', '.join(known)}, or the path to a task TOML file"
            )
    return load_task(task)


def input_names() -> tuple[str, ...]:
    """The inputs any task's programs read (``IMAGE``, ``LEFT``, ``RIGHT``), in the order first seen."""
    names: dict[str, None] = {}
    for task in tasks().values():
        names.update(dict.fromkeys(task.inputs))
    return tuple(names)


def guess_task(text: str | None, n_images: int) -> str:
    """The name of the task ``text`` on ``n_images`` images most likely is.

    The candidates are the tasks with that many inputs (with 0 images: one; with
    more images than any task reads: the tasks that read the most). Among them,
    the first whose ``first_words`` holds the text's first word (case and leading
    punctuation ignored), else the first that lists no first words, else the first.
    """
    every = list(tasks().values())
    wanted = max(1, n_images)
    counts = sorted({len(t.inputs) for t in every})
    if wanted not in counts:
        fewer = [c for c in counts if c <= wanted]
        wanted = fewer[-1] if fewer else counts[0]
    candidates = [t for t in every if len(t.inputs) == wanted]
    first = re.search(r"[a-z]+", (text or "").lower())
    word = first.group(0) if first is not None else ""
    chosen = next((t for t in candidates if word in t.first_words), None)
    chosen = chosen or next((t for t in candidates if not t.first_words), candidates[0])
    return chosen.name


@functools.cache
def _discover(folders: str) -> tuple[tuple[str, Task], ...]:
    found: dict[str, Task] = {}
    packaged = sorted(
        (r for r in resources.files(_PACKAGE).iterdir() if r.name.endswith(".toml")), key=lambda r: r.name
    )
    for resource in packaged:
        source = f"{_PACKAGE.replace('.', '/')}/{resource.name}"
        task = _parse(resource.read_text(encoding="utf-8"), source, default_name=resource.name[: -len(".toml")])
        found[task.name] = task
    shipped = dict(found)
    for folder in _folders(folders):
        for path in sorted(folder.glob("*.toml")):
            task = load_task(path)
            earlier = found.get(task.name)
            if earlier is not None and shipped.get(task.name) is not earlier:
                raise ConfigError(f"{path}: task '{task.name}' is already defined by {earlier.source}")
            found[task.name] = task
    verbs: dict[str, Task] = {}
    for task in found.values():
        other = verbs.setdefault(task.command, task)
        if other is not task:
            raise ConfigError(
                f"{task.source}: verb '{task.command}' of task '{task.name}' is already the verb of task "
                f"'{other.name}' ({other.source})"
            )
    return tuple(found.items())


def _folders(value: str) -> Iterable[Path]:
    for entry in value.split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry.strip()).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{ENVIRONMENT}: {folder} is not a folder of task TOML files")
        yield folder


# --------------------------------------------------------------------------- one file


def load_task(path: str | os.PathLike[str]) -> Task:
    """The task defined by the TOML file at ``path`` (its name defaults to the file's stem).

    Raises :class:`~visprog.errors.ConfigError` naming the file and the key when
    the file is missing or malformed.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: task file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the task file: {e}") from e
    return _parse(text, str(path), default_name=path.stem)


def _looks_like_path(name: str) -> bool:
    return "/" in name or os.sep in name or name.endswith(".toml") or Path(name).expanduser().is_file()


def _parse(text: str, source: str, *, default_name: str) -> Task:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    unknown = [k for k in data if k not in _KEYS]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(repr(k) for k in unknown)}; expected {', '.join(_KEYS)}"
        )
    name = _string(data, "task", source, default=default_name, one_line=True)
    description = _string(data, "description", source, default="", one_line=True)
    input_label = _string(data, "input_label", source, default="Question", one_line=True)
    instructions = _string(data, "instructions", source, default="").strip()
    verb = _string(data, "verb", source, default=name.lower(), one_line=True)
    web_label = _string(data, "web_label", source, default=name, one_line=True)
    answer = _string(data, "answer", source, default="text", one_line=True)
    if not name:
        raise ConfigError(f"{source}: key 'task' must not be empty")
    if not input_label:
        raise ConfigError(f"{source}: key 'input_label' must not be empty")
    if not _VERB.match(verb):
        given = "" if "verb" in data else " (the task's name, as no verb is given)"
        raise ConfigError(
            f"{source}: key 'verb': {verb!r}{given} is not a command name "
            "(lower-case letters, digits, '-' and '_', e.g. ask)"
        )
    if answer not in ANSWERS:
        raise ConfigError(f"{source}: key 'answer': {answer!r} is not one of {', '.join(map(repr, ANSWERS))}")
    return Task(
        name=name,
        description=description,
        inputs=_inputs(data, source),
        instructions=instructions,
        examples=_examples(data, source),
        input_label=input_label,
        verb=verb,
        web_label=web_label,
        answer=answer,
        first_words=_words(data, source),
        source=source,
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
        if not isinstance(name, str) or not is_name(name):
            raise ConfigError(f"{source}: key 'inputs': {name!r} is not a variable name such as IMAGE")
    if len(set(value)) != len(value):
        raise ConfigError(f"{source}: key 'inputs' names an input twice")
    return tuple(value)


def _words(data: Mapping[str, Any], source: str) -> tuple[str, ...]:
    value = data.get("first_words", [])
    if not isinstance(value, list) or not all(isinstance(w, str) and re.fullmatch(r"[A-Za-z]+", w) for w in value):
        raise ConfigError(f'{source}: key \'first_words\' must be a list of single words, e.g. ["hide", "blur"]')
    return tuple(w.lower() for w in value)


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
