"""The ``visprog`` command.

    visprog exec PROGRAM --image IMAGE=photo.jpg [-o FILE.png|DIR] [--json] [-q]
    visprog check PROGRAM [--format json]
    visprog fmt PROGRAM [--check]
    visprog graph PROGRAM [--dot]
    visprog modules
    visprog models list | pull [MODULE ...]
    visprog demo [-o FILE.png|DIR]
    visprog ask IMAGE "question" | verify LEFT RIGHT "statement" | edit IMAGE "instruction" -o out.png | tag ...
        (one command per task: prompts/*.toml and the files in $VISPROG_TASKS)
    visprog serve [--host 127.0.0.1] [--port 7860]
    visprog eval DATA --task gqa --images DIR -o results.jsonl

Every command takes ``--plugin FILE.py`` (modules from a Python file; repeatable; also the config file's
``plugins = [...]`` and ``$VISPROG_PLUGIN_PATH``), ``--config FILE`` and ``--traceback`` (the whole Python
traceback of an error, e.g. of the exception inside a failing step's module).

PROGRAM is a file, ``-`` for standard input, or the program text itself. Standard output carries the answer
alone (``-q``: without its label; ``--json``: one JSON object); the program, the trace, progress, warnings and
"wrote ..." go to standard error, in colour on a terminal only (``$NO_COLOR`` turns it off). Exit status: 0 on
success, 1 when the program or a step fails, 2 on a usage error (a plugin file that cannot be loaded, a port that
is in use), 141 when the reader of standard output has gone (``visprog modules | head``).

This file holds the parser and :func:`main`; the commands live in :mod:`visprog.apps.commands` (no LLM) and
:mod:`visprog.apps.task_commands` (planning with an LLM); what a run shows in :mod:`visprog.apps.run_output`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TextIO

from visprog import __version__
from visprog.apps.cache_commands import add_cache_parser
from visprog.apps.commands import (
    check_command,
    demo_command,
    exec_command,
    fmt_command,
    graph_command,
    input_dest,
    models_command,
    modules_command,
    program_name,
)
from visprog.apps.console import UsageError, colour_on, format_diagnostic, severity_label, shown
from visprog.apps.run_output import RunReport
from visprog.errors import ConfigError, ProgramCheckError, ProgramError, VisprogError
from visprog.llm.server import SERVER_GRAMMAR_FORMATS
from visprog.planner.constraint import CONSTRAIN_MODES
from visprog.planner.tasks import Task, tasks
from visprog.running.plugins import (
    PLUGIN_PATH_ENV,
    PLUGINS_ENV,
    PluginError,
    default_registry,
    load_plugin_files,
    plugin_path,
)
from visprog.running.runtime import config_plugins

__all__ = ["main"]


def _add_task_options(p: argparse.ArgumentParser, task: Task) -> None:
    for name in task.inputs:
        p.add_argument(input_dest(name), metavar=name, help=f"the {name} image file")
    p.add_argument("text", help=f"the {task.input_label.lower()}")
    p.add_argument("--plan-only", action="store_true", help="print the program and stop")
    p.add_argument("--samples", type=int, default=1, help="draw K programs, run the valid ones, vote (default 1)")
    p.add_argument("--feed-errors", action="store_true", help="send a failing step's error back for a new plan")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--trace", metavar="FILE", help="write the step-by-step trace as a self-contained HTML page")
    _add_planner_options(p)
    if task.answer == "image":
        p.add_argument("-o", "--output", metavar="FILE|DIR", help=OUTPUT_HELP)
    else:
        p.set_defaults(output=None)


OPTION_HELP = "set a module's option, e.g. Loc.nms_iou=0.3 (visprog modules lists them)"
QUIET_HELP = "print the answer alone (an image result: the file written); no program, trace or progress"
JSON_HELP = "print one JSON object: program, result, agreement, the trace, files written, timings"
OUTPUT_HELP = (
    "a path ending in an image suffix (.png, .jpg, ...) is the result image; anything else is a folder for "
    "result.png and every image step (steps/)"
)


def _add_planner_options(p: argparse.ArgumentParser) -> None:
    """The LLM's options and the modules' options (shared by the planning commands and serve)."""
    p.add_argument("--repair", type=int, default=2, metavar="N", help="repair rounds for invalid programs (default 2)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the plan cache")
    p.add_argument(
        "--examples",
        type=int,
        default=None,
        metavar="K",
        help="in-context examples in the prompt: the K of the task's pool most like the text (default 8; 0: none)",
    )
    p.add_argument(
        "--see-image",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the model the input images while it plans (a multimodal chat model; [llm] see_image)",
    )
    p.add_argument(
        "--see-image-side",
        type=int,
        default=None,
        metavar="PIXELS",
        help="with --see-image: the longer side the images are cut to (default 512; [llm] see_image_side)",
    )
    p.add_argument(
        "--constrain",
        choices=CONSTRAIN_MODES,
        default=None,
        help="hold generation to valid programs: none, grammar (the syntax) or types (syntax, names and types, "
        "a local model); default: the strongest the LLM follows ([llm] constrain)",
    )
    p.add_argument("--base-url", help="an OpenAI-compatible server (default: $OPENAI_BASE_URL)")
    p.add_argument("--style", choices=["chat", "completion"], default=None, help="the server's API style (chat)")
    p.add_argument(
        "--grammar-format",
        choices=SERVER_GRAMMAR_FORMATS,
        default=None,
        help="how the server takes the program grammar, which turns on --constrain grammar (default none: no "
        "grammar is sent; [llm] grammar_format)",
    )
    p.add_argument(
        "--local", metavar="MODEL", help="plan with a local transformers causal LM (hub id, folder or .gguf file)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="the LLM's sampling temperature (default 0, with --samples above 1: 0.7; [llm] temperature)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="the most tokens the LLM may write for one program (default 512; [llm] max_tokens)",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the LLM")
    p.add_argument("--stop", action="append", metavar="TEXT", help="a stop sequence for the LLM (repeatable)")
    p.add_argument("--device", default=None, help="cuda, mps, cpu or cuda:1 (default: the best available)")
    p.add_argument("--fp32", action="store_true", help="full precision on a GPU (default: half)")
    p.add_argument("--backend", action="append", metavar="MODULE=NAME", help="choose a module's backend")
    p.add_argument(
        "--model",
        action="append",
        metavar="LLM|MODULE=ID",
        help="the LLM (default: $VISPROG_LLM_MODEL), or MODULE=ID for a module's model",
    )
    p.add_argument("--option", action="append", metavar="MODULE.NAME=VALUE", help=OPTION_HELP)
    p.add_argument("--max-pixels", type=int, default=None, help="reject input images larger than this")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE|DIR", help=OUTPUT_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--device", default=None, help="cuda, mps, cpu or cuda:1 (default: the best available)")
    p.add_argument("--fp32", action="store_true", help="full precision on a GPU (default: half)")
    p.add_argument("--backend", action="append", metavar="MODULE=NAME", help="choose a module's backend")
    p.add_argument("--model", action="append", metavar="MODULE=ID", help="choose a module's model (hub id or folder)")
    p.add_argument("--option", action="append", metavar="MODULE.NAME=VALUE", help=OPTION_HELP)
    p.add_argument("--max-pixels", type=int, default=None, help="reject input images larger than this")
    p.add_argument("--trace", metavar="FILE", help="write the step-by-step trace as a self-contained HTML page")


def _common_options() -> argparse.ArgumentParser:
    """The options of every command: modules from Python files, the config file, tracebacks."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--plugin",
        action="append",
        metavar="FILE.py",
        help=f"load the modules of a Python file (repeatable; also the config file's plugins = [...] and "
        f"${PLUGIN_PATH_ENV})",
    )
    p.add_argument("--config", metavar="FILE", help="a TOML config file (default: $VISPROG_CONFIG)")
    p.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, print the whole Python traceback too (a failing step: its module's exception)",
    )
    return p


def _planning(name: str) -> Callable[[argparse.Namespace, TextIO], int]:
    """The command ``name`` of :mod:`visprog.apps.task_commands`, imported when it runs.

    Those commands bring in the planner and its LLM clients, which ``visprog check`` never needs.
    """

    def command(args: argparse.Namespace, out: TextIO) -> int:
        from visprog.apps import task_commands

        result: int = getattr(task_commands, name)(args, out)
        return result

    command.__name__ = name
    return command


def whole_number(low: int) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number of ``low`` or more, else a usage error (exit status 2)."""

    def value(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {number}")
        return number

    value.__name__ = f"whole number of {low} or more"
    return value


def finite_number(*, zero: bool) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number above 0 (``zero``: 0 or more), else a usage error (exit status 2)."""
    least = "0 or more" if zero else "more than 0"

    def value(text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be a finite number {least}, got {text}")
        return number

    value.__name__ = f"number {least}"
    return value


#: The range of every number option, by its flag, in every command that has it (the api's and mcp's own options
#: too); a value out of range is a usage error. ``--port`` is checked where the server binds (``check_port``),
#: ``--examples``, ``--see-image-side`` and ``--limit`` where they are used, with messages of their own.
VALUE_TYPES: dict[str, Callable[[str], object]] = {
    "--samples": whole_number(1),
    "--repair": whole_number(0),
    "--max-tokens": whole_number(1),
    "--max-pixels": whole_number(1),
    "--max-batch": whole_number(1),
    "--batch-size": whole_number(1),
    "--plan-workers": whole_number(1),
    "--workers": whole_number(1),
    "--max-concurrent": whole_number(1),
    "--max-queue": whole_number(0),
    "--temperature": finite_number(zero=True),
    "--timeout": finite_number(zero=False),
    "--request-timeout": finite_number(zero=False),
    "--window-ms": finite_number(zero=True),
    "--max-upload-mb": finite_number(zero=False),
    "--max-request-mb": finite_number(zero=False),
}


def _bound_values(parser: argparse.ArgumentParser) -> None:
    """Give every option of :data:`VALUE_TYPES`, in ``parser`` and its commands, its checked ``type=``."""
    for action in parser._actions:  # argparse keeps its actions there; it has no public way to list them
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _bound_values(command)
        for flag in action.option_strings:
            if flag in VALUE_TYPES:
                action.type = VALUE_TYPES[flag]


#: The commands of visprog itself; a task's verb may not take one of these names.
BUILTIN_COMMANDS = frozenset(
    {"eval", "serve", "api", "exec", "check", "graph", "fmt", "modules", "models", "demo", "cache", "mcp"}
)


def build_parser(err: TextIO | None = None) -> argparse.ArgumentParser:
    """The command line: the fixed commands, and one command per task (:func:`visprog.planner.tasks.tasks`).

    Raises :class:`~visprog.errors.ConfigError` for a task file that is malformed.
    """
    parser = argparse.ArgumentParser(
        prog="visprog",
        description="Check and run VisProg programs on images. The answer goes to standard output; the program, "
        "the trace, progress and warnings to standard error.",
    )
    parser.add_argument("--version", action="version", version=f"visprog {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", help="the command to run (visprog COMMAND -h lists its options)"
    )
    common = [_common_options()]

    known = tasks()
    for task in known.values():  # one command per task, from its TOML file
        if task.command in BUILTIN_COMMANDS:
            print(
                f"warning: task '{task.name}' ({task.source}): its command '{task.command}' is one of visprog's own "
                "commands; the task is not offered on the command line (give it another verb)",
                file=err or sys.stderr,
            )
            continue
        what = task.description or f"the {task.name} task"
        p = sub.add_parser(
            task.command, parents=common, help=f"{what} ({task.name})", description=f"Plan and run: {what}."
        )
        _add_task_options(p, task)
        p.set_defaults(func=_planning("task_command"), task=task.name)

    p = sub.add_parser(
        "eval", parents=common, help="evaluate on a data set: accuracy, failure kinds, latency, time per module"
    )
    p.add_argument("data", help="our JSONL, GQA question JSON or NLVR2 JSONL")
    p.add_argument("--task", choices=list(known), required=True, help="the task of every item")
    p.add_argument("--images", metavar="DIR", help="image folder (default: the data file's folder)")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="results JSONL (appended; resumable)")
    p.add_argument("--outputs", metavar="DIR", default=None, help="image answers folder (default: <FILE stem>.outputs)")
    p.add_argument("--traces", metavar="DIR", default=None, help="trace pages of the items that came out wrong")
    p.add_argument("--all-traces", action="store_true", help="with --traces: a page for every item that ran")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N items of DATA")
    p.add_argument("--samples", type=int, default=1, help="draw K programs per item, run the valid ones, vote")
    p.add_argument("--max-batch", type=int, default=None, metavar="N", help="largest batched module call")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="items planned then run together")
    p.add_argument(
        "--plan-workers", type=int, default=1, metavar="N", help="LLM requests sent at once (an LLM server; default 1)"
    )
    p.add_argument(
        "--no-overlap",
        dest="overlap",
        action="store_false",
        help="plan each chunk only after the one before it has run (default: the next chunk is planned while one runs)",
    )
    p.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="run here, or on Ray actors (one per GPU)"
    )
    p.add_argument("--address", default=None, help="a Ray cluster to join (default: start Ray on this machine)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="Ray actors: N of the GPUs (default: one per GPU), or N CPU actors without GPUs or with --device cpu"
        " (default 2)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_planner_options(p)
    p.set_defaults(func=_planning("eval_command"))

    p = sub.add_parser("serve", parents=common, help="the web app: upload images, ask, see the program and its trace")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload in MB (default 20)")
    p.add_argument(
        "--max-concurrent", type=int, default=4, metavar="N", help="requests served at once; more wait (default 4)"
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="longest a request may take, planning and running (default 300; --timeout is the LLM's)",
    )
    _add_planner_options(p)
    p.set_defaults(func=_planning("serve_command"), quiet=False)

    from visprog.apps.api_command import add_api_options, api_command

    p = sub.add_parser("api", parents=common, help="the HTTP API: JSON in and out, runs batched across requests")
    add_api_options(p)
    _add_planner_options(p)
    p.set_defaults(func=api_command, quiet=False)

    p = sub.add_parser("exec", parents=common, help="run a program on images")
    p.add_argument("program", help="program file, '-' for stdin, or the program text")
    p.add_argument(
        "--image", "-i", action="append", metavar="NAME=PATH", help="an input image (NAME defaults to IMAGE)"
    )
    _add_run_options(p)
    p.set_defaults(func=exec_command)

    p = sub.add_parser("check", parents=common, help="check a program and print every problem")
    p.add_argument("program", help="program file, '-' for stdin, or the program text")
    p.add_argument(
        "--input", action="append", metavar="NAME", help="an input the caller passes (default: every task's inputs)"
    )
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="text: FILE:LINE:COL: message on standard error (default); json: every diagnostic as one JSON object",
    )
    p.set_defaults(func=check_command)

    p = sub.add_parser("fmt", parents=common, help="print a program in canonical form")
    p.add_argument("program", help="program file, '-' for stdin, or the program text")
    p.add_argument("--check", action="store_true", help="exit 1 and show what would change if not canonical")
    p.set_defaults(func=fmt_command)

    p = sub.add_parser("graph", parents=common, help="print a program's dependency graph (Mermaid, or DOT)")
    p.add_argument("program", help="program file, '-' for stdin, or the program text")
    p.add_argument("--dot", action="store_true", help="Graphviz DOT instead of Mermaid")
    p.add_argument("--input", action="append", metavar="NAME", help="an input the caller passes")
    p.set_defaults(func=graph_command)

    p = sub.add_parser("modules", parents=common, help="list the registered modules")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=modules_command)

    p = sub.add_parser("models", parents=common, help="list the models modules use, or download them ahead of time")
    p.add_argument(
        "action", choices=["list", "pull"], help="list: each module's models and whether they are here; pull: fetch"
    )
    p.add_argument("modules", nargs="*", metavar="MODULE", help="modules to pull (default: all)")
    p.add_argument("--all-backends", action="store_true", help="pull every backend's model, not only the selected")
    p.add_argument("--backend", action="append", metavar="MODULE=NAME", help="choose a module's backend")
    p.add_argument("--model", action="append", metavar="MODULE=ID", help="choose a module's model")
    p.set_defaults(func=models_command)

    add_cache_parser(sub, common)

    from visprog.apps.mcp_command import add_mcp_parser  # argparse only: the MCP SDK loads when `visprog mcp` runs

    add_mcp_parser(sub, common, _add_planner_options)

    p = sub.add_parser("demo", parents=common, help="hide the face in the astronaut photo with an emoji, offline")
    _add_run_options(p)
    p.set_defaults(func=demo_command)
    _bound_values(parser)
    return parser


def _print_error(e: BaseException, name: str, err: TextIO, command: str | None = None) -> None:
    if isinstance(e, ProgramError):
        for diagnostic in e.diagnostics:
            print(format_diagnostic(name, diagnostic, colour=colour_on(err)), file=err)
        print(f"{shown(name, lines=False)}: {len(e.diagnostics)} {e.kind}{'s' * (len(e.diagnostics) > 1)}", file=err)
        if command == "exec" and isinstance(e, ProgramCheckError) and e.missing_inputs:
            hint = "give the program its images with --image NAME=PATH (NAME defaults to IMAGE)"
            print(f"{severity_label('hint', err)} {hint}", file=err)
    else:
        print(f"{severity_label('error', err)} {shown(e)}", file=err)


def _print_traceback(e: BaseException, err: TextIO) -> None:
    """``--traceback``: the whole traceback of what went wrong; of a failing step, the exception its module
    raised (``cause``), not visprog's own frames around it."""
    cause = getattr(e, "cause", None)
    failure = cause if isinstance(cause, BaseException) else e
    err.write(shown("".join(traceback.format_exception(failure))))


def _json_of_failure(args: argparse.Namespace, e: VisprogError, out: TextIO) -> None:
    """``--json`` on a run (exec, demo, a task) prints one object, also when the run failed or never started
    (a usage error, a plugin file that cannot be loaded): the error's, unless the run printed its own."""
    runs = args.command in ("exec", "demo") or args.command not in BUILTIN_COMMANDS
    if runs and getattr(args, "json", False) and not getattr(args, "json_shown", False):
        report = RunReport(args.command, task=getattr(args, "task", None), text=getattr(args, "text", None), error=e)
        json.dump(report.to_json(), out)
        out.write("\n")


def _warn_about_plugins(err: TextIO) -> None:
    """One warning per installed plugin that could not be loaded; every other module still works."""
    for e in default_registry().plugin_errors:
        warning = f"{e} (its modules are left out; {PLUGINS_ENV}=0 turns plugins off)"
        print(f"{severity_label('warning', err)} {shown(warning)}", file=err)


def _load_plugin_files(args: argparse.Namespace) -> None:
    """The modules of Python files: ``$VISPROG_PLUGIN_PATH``, the config file's ``plugins``, ``--plugin``."""
    registry = default_registry()
    load_plugin_files(registry, plugin_path(), source=f"${PLUGIN_PATH_ENV}")
    config_plugins(args.config, registry)
    load_plugin_files(registry, args.plugin or (), source="--plugin")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        return _main(argv, out, err)
    except BrokenPipeError:  # `visprog modules | head`: the reader has gone; end quietly, as a shell tool does
        for stream in (out, err):
            try:  # nothing more can reach the reader: the interpreter's last flush must not fail either
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            except (OSError, ValueError):  # not a file (a StringIO), or closed already
                pass
        return 128 + 13  # as if ended by SIGPIPE


def _main(argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    try:
        parser = build_parser(err)
    except ConfigError as e:  # a task file the user added is malformed
        print(f"{severity_label('error', err)} {shown(e)}", file=err)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:  # bare `visprog`: what it can do
        parser.print_help(out)
        return 0
    program = getattr(args, "program", None)
    name = program_name(program) if program else "program"
    args.stderr = err  # where a command writes everything but its answer
    try:
        _warn_about_plugins(err)
        _load_plugin_files(args)
        return int(args.func(args, out))
    except (UsageError, PluginError) as e:  # a mistake in the command line, or in a plugin file it names
        _json_of_failure(args, e, out)
        if args.traceback and isinstance(e, PluginError):
            _print_traceback(e.__cause__ or e, err)
        print(f"{severity_label('error', err)} {shown(e)}", file=err)
        return 2
    except VisprogError as e:
        _json_of_failure(args, e, out)
        if args.traceback:
            _print_traceback(e, err)
        _print_error(e, name, err, getattr(args, "command", None))
        return 1
    except BrokenPipeError:
        raise  # :func:`main` ends quietly
    except OSError as e:  # a path the system refuses (a name too long, a device gone): one line, not a traceback
        failure = VisprogError(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        _json_of_failure(args, failure, out)
        if args.traceback:
            _print_traceback(e, err)
        print(f"{severity_label('error', err)} {shown(failure)}", file=err)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130


if __name__ == "__main__":
    sys.exit(main())
