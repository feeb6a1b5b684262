"""The commands that need no LLM: check, fmt, graph, exec, demo, modules, models; and the runtime they share.

Each ``*_command(args, out)`` reads the parsed command line (:func:`visprog.apps.cli.build_parser`), writes
its answer to ``out`` and returns the exit status; a command-line mistake raises :class:`UsageError`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from visprog.apps.console import UsageError, colour_on, diagnostic_data, format_diagnostic, shown, stderr_of
from visprog.apps.run_output import RunReport, check_trace_path, output_target, show_run
from visprog.errors import ProgramError, VisprogError
from visprog.language.checker import CheckedProgram, check
from visprog.language.format import format_program
from visprog.language.signatures import OptionError, Registry
from visprog.language.values import Image, type_of_value
from visprog.planner.tasks import input_names
from visprog.running import hub
from visprog.running.plugins import PLUGINS_ENV, default_registry, plugins_enabled
from visprog.running.runtime import Runtime

__all__ = [
    "DEMO_PROGRAM",
    "build_runtime",
    "check_command",
    "demo_command",
    "exec_command",
    "fmt_command",
    "graph_command",
    "input_dest",
    "models_command",
    "modules_command",
    "program_name",
]

DEMO_PROGRAM = """\
# Hide the astronaut's face with an emoji.
OBJ0=FaceDet(image=IMAGE)
IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face_with_sunglasses')
FINAL_RESULT=Result(var=IMAGE0)
"""


def program_name(arg: str) -> str:
    """The name diagnostics give the PROGRAM argument: ``<stdin>`` for ``-``, ``<argument>`` for program text
    (a line break, or an ``=`` in what is not a file), else the file's path."""
    if arg == "-":
        return "<stdin>"
    if "\n" in arg or ("=" in arg and not Path(arg).is_file()):
        return "<argument>"
    return arg


def _read_program(arg: str) -> tuple[str, str]:
    """(text, name) of the PROGRAM argument."""
    name = program_name(arg)
    if name == "<stdin>":
        return sys.stdin.read(), name
    if name == "<argument>":
        return arg, name
    path = Path(arg)
    if path.is_dir():
        raise UsageError(f"{arg} is a folder, not a program file")
    if not path.is_file():
        raise UsageError(f"no such program file: {arg}")
    try:
        return path.read_text(encoding="utf-8"), name
    except UnicodeDecodeError:
        raise UsageError(f"cannot read program file {arg}: it is not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"cannot read program file {arg}: {e.strerror or e}") from None


def _pairs(values: Sequence[str] | None, option: str, default_key: str | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep:
            if default_key is None:
                raise UsageError(f"{option} expects NAME=VALUE, got '{item}'")
            key, value = default_key, item
        if not key or not value:
            raise UsageError(f"{option} expects NAME=VALUE, got '{item}'")
        key, value = key.strip(), value.strip()
        if key in out and out[key] != value:
            raise UsageError(f"{option} {key} is given twice ({out[key]} and {value}): which one is meant?")
        out[key] = value
    return out


def build_runtime(args: argparse.Namespace) -> Runtime:
    """The runtime of the config file, then --backend, --model and --option (each checked against the modules)."""
    runtime = Runtime.from_config(
        getattr(args, "config", None),
        device_request=getattr(args, "device", None),
        half=False if getattr(args, "fp32", False) else None,
    )
    if runtime.llm:
        from visprog.llm.clients import check_settings

        check_settings(runtime.llm, f"config file {getattr(args, 'config', None) or os.environ.get('VISPROG_CONFIG')}")
    if getattr(args, "quiet", False):
        _silence_progress()
        runtime.progress = False
    try:
        for option in ("backend", "model"):
            for name, value in _pairs(getattr(args, option, None), f"--{option}").items():
                runtime.set_option(name, option, value, source=f"--{option}")
        for item in getattr(args, "option", None) or ():
            target, sep, value = item.partition("=")
            name, dot, option = target.strip().partition(".")
            if not (sep and dot and name and option and value.strip()):
                raise UsageError(f"--option expects MODULE.NAME=VALUE (e.g. Loc.nms_iou=0.3), got '{item}'")
            runtime.set_option(name, option, value.strip(), source=f"--option {item}")
    except OptionError as e:
        raise UsageError(str(e)) from None
    return runtime


def _silence_progress() -> None:
    """-q: no model-load lines, no download or weight-loading progress bars."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _hint(registry: Registry, name: str) -> str:
    hint = registry.suggest(name)
    return f" (did you mean '{hint}'?)" if hint else ""


def input_dest(name: str) -> str:
    """Where the argument parser keeps a task input's file: never one of the options' names."""
    return f"input_{name}"


def _check(text: str, inputs: Sequence[str] | None) -> CheckedProgram:
    """The one check, with the tasks' input names and the installed modules (as visprog.check)."""
    return check(text, inputs, registry=default_registry(), known_inputs=input_names())


def check_command(args: argparse.Namespace, out: TextIO) -> int:
    text, name = _read_program(args.program)
    if args.format == "json":
        return _check_json(text, name, args.input or None, out)
    checked = _check(text, args.input or None)
    result = checked.steps[checked.result]
    err = stderr_of(args)
    for warning in checked.warnings:
        print(format_diagnostic(name, warning, "warning: ", colour=colour_on(err)), file=err)
    steps = f"{len(checked.steps)} step{'s' if len(checked.steps) != 1 else ''}"
    inputs = ", ".join(checked.used_inputs) or "none"
    print(
        f"{shown(name, lines=False)}: ok, {steps}, inputs {inputs}, result {result.step.target} ({result.type})",
        file=out,
    )
    return 0


def _check_json(text: str, name: str, inputs: Sequence[str] | None, out: TextIO) -> int:
    """``check --format json``: one object with every diagnostic, and what the program reads and gives."""
    report: dict[str, Any] = {"file": name, "ok": True, "kind": None, "diagnostics": []}
    try:
        checked = _check(text, inputs)
    except ProgramError as e:
        diagnostics = [diagnostic_data(d, "error", name) for d in e.diagnostics]
        report.update(ok=False, kind=e.kind, diagnostics=diagnostics, steps=None, inputs=None, result=None)
    else:
        result = checked.steps[checked.result]
        report["diagnostics"] = [diagnostic_data(d, "warning", name) for d in checked.warnings]
        report.update(steps=len(checked.steps), inputs=list(checked.used_inputs))
        report["result"] = {"name": result.step.target, "type": str(result.type)}
    json.dump(report, out, indent=2)
    out.write("\n")
    return 0 if report["ok"] else 1


def fmt_command(args: argparse.Namespace, out: TextIO) -> int:
    """Print the program in canonical form; with ``--check``, say whether it already is (exit 1 when not,
    with a diff of what would change)."""
    text, name = _read_program(args.program)
    canonical = format_program(text, default_registry())
    if not args.check:
        out.write(canonical)
        return 0
    if canonical == text:
        print(f"{shown(name, lines=False)}: already canonical", file=out)
        return 0
    diff = difflib.unified_diff(
        text.splitlines(keepends=True), canonical.splitlines(keepends=True), name, f"{name} (canonical)"
    )
    for line in diff:
        out.write(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    print(f"{shown(name, lines=False)}: would be reformatted (visprog fmt prints the canonical form)", file=out)
    return 1


def graph_command(args: argparse.Namespace, out: TextIO) -> int:
    text, _ = _read_program(args.program)
    graph = _check(text, args.input or None).graph
    out.write(graph.to_dot() if args.dot else graph.to_mermaid())
    return 0


def modules_command(args: argparse.Namespace, out: TextIO) -> int:
    registry = default_registry()
    specs = list(registry)
    if args.json:
        data = [
            {
                "name": s.name,
                "aliases": list(s.aliases),
                "suggest_for": list(s.suggest_for),
                "summary": s.summary,
                "returns": str(s.returns),
                "batch": s.batch is not None,
                "source": s.source,
                "params": [
                    {"name": p.name, "type": str(p.type), "required": p.required, "description": p.description}
                    for p in s.params
                ],
                "options": [
                    {
                        "name": o.name,
                        "type": o.type_name,
                        "default": o.default,
                        "backend_defaults": dict(o.backend_defaults),
                        "choices": list(o.choices),
                        "help": o.help,
                    }
                    for o in s.options
                ],
            }
            for s in specs
        ]
        json.dump(data, out, indent=2)
        out.write("\n")
        return 0
    for s in specs:
        print(s.signature(), file=out)
        print(f"    {s.summary}", file=out)
        for p in s.params:
            checked = " (a literal value is checked before the program runs)" if p.validator is not None else ""
            print(f"    {p.name}: {p.description}{checked}", file=out)
        if s.options:
            print(f"    options (--option {s.name}.NAME=VALUE, or [modules.{s.name}] in the config file):", file=out)
        for o in s.options:
            choices = f", one of {', '.join(map(str, o.choices))}" if o.choices else ""
            print(f"      {o.name}: {o.type_name} = {o.default_text()}{choices}; {o.help}", file=out)
        extras = []
        if s.aliases:
            extras.append("aliases: " + ", ".join(s.aliases))
        if s.suggest_for:
            extras.append("suggested for: " + ", ".join(s.suggest_for))
        if s.batch is not None:
            extras.append("batches")
        extras.append(f"from {s.source}")
        print(f"    ({'; '.join(extras)})", file=out)
        print(file=out)
    for e in registry.plugin_errors:
        print(f"not loaded: {e}", file=out)
    if not plugins_enabled():
        print(f"third-party plugins are off ({PLUGINS_ENV}={os.environ.get(PLUGINS_ENV)})", file=out)
    return 0


def models_command(args: argparse.Namespace, out: TextIO) -> int:
    registry = default_registry()
    runtime = build_runtime(args)
    specs = [s for s in registry if s.backends]
    if args.action == "list":
        rows = hub.model_statuses(specs, runtime.options)
        wide = max([16, *(len(r.backend) + 2 for r in rows)])  # a column as wide as the longest backend
        print(f"{'module':<10} {'backend':<{wide}} {'model':<52} cached", file=out)
        for r in rows:
            mark = "*" if r.selected else " "
            model = r.model_id if r.downloadable else f"{r.model_id or ''} (no download)".strip()
            cached = ("yes" if r.cached else "no") if r.downloadable else "-"
            print(f"{r.module:<10} {mark}{r.backend:<{wide - 1}} {model:<52} {cached}", file=out)
        print("* the backend each module uses now (--backend, config file, or its default)", file=out)
        return 0
    names = args.modules or [s.name for s in specs]
    wanted = []
    for name in names:
        spec = registry.get(name)
        if spec is None or not spec.backends:
            raise UsageError(f"models pull: '{name}' is not a module with a model{_hint(registry, name)}")
        for r in hub.model_statuses([spec], runtime.options):
            if r.downloadable and r.model_id and (r.selected or args.all_backends):
                wanted.append(r)
    failed: list[str] = []
    for r in wanted:  # one model that cannot be fetched does not stop the others
        assert r.model_id is not None
        print(f"pulling {r.model_id} for {r.module} ({r.backend})", file=out)
        try:
            path = hub.pull(r.model_id)
        except VisprogError as e:
            print(f"  failed: {e}", file=out)
            failed.append(f"{r.module} ({r.model_id})")
            continue
        print(f"  -> {path}", file=out)
    if failed:
        raise VisprogError(f"models pull: {len(failed)} of {len(wanted)} could not be fetched: {', '.join(failed)}")
    return 0


def _execute(
    text: str, name: str, paths: dict[str, Any], args: argparse.Namespace, out: TextIO, label: str | None = None
) -> int:
    from visprog.running.images import load_image
    from visprog.running.interpreter import Interpreter  # loaded by the commands that run programs

    started = time.perf_counter()
    target = output_target(args.output)
    check_trace_path(args.trace)
    report = RunReport(args.command, program=text)
    runtime = build_runtime(args)
    try:
        images = {
            key: path if isinstance(path, Image) else load_image(path, max_pixels=args.max_pixels)
            for key, path in paths.items()
        }
        interpreter = Interpreter(runtime=runtime, known_inputs=input_names())
        types = {key: type_of_value(value) for key, value in images.items()}
        checked = check(text, types, registry=interpreter.registry, known_inputs=input_names())
        err = stderr_of(args)
        for warning in checked.warnings:  # e.g. no result step: the last step's value is the result
            print(format_diagnostic(name, warning, "warning: ", colour=colour_on(err)), file=err)
        report.trace = interpreter.run(checked, images)
    except VisprogError as e:
        report.error, report.trace = e, getattr(e, "trace", None)  # a failed step keeps the trace so far
        raise
    finally:
        if report.trace is not None or report.error is not None:
            run = report.trace.seconds if report.trace is not None else None
            report.timings = {"plan": None, "run": run, "total": time.perf_counter() - started}
            show_run(report, args, out, target, label=label, show_program=args.command == "demo", warned=True)
    return 0


def exec_command(args: argparse.Namespace, out: TextIO) -> int:
    text, name = _read_program(args.program)
    return _execute(text, name, _pairs(args.image, "--image", default_key="IMAGE"), args, out)


def demo_command(args: argparse.Namespace, out: TextIO) -> int:
    from skimage import data

    from visprog.running.images import load_image

    if not args.backend:
        args.backend = ["FaceDet=cascade"]
    image = {"IMAGE": load_image(data.astronaut(), name="astronaut (scikit-image)")}
    return _execute(DEMO_PROGRAM, "<demo>", image, args, out, label="Hide the astronaut's face with an emoji.")
