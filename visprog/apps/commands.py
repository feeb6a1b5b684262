"""The commands that need no LLM: check, fmt, graph, exec, demo, modules, models; and what every command shares.

Each ``*_command(args, out)`` reads the parsed command line (:func:`visprog.apps.cli.build_parser`), writes
its answer to ``out`` and returns the exit status; a command-line mistake raises :class:`UsageError`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from visprog.errors import StepError, VisprogError
from visprog.language.checker import CheckedProgram, check
from visprog.language.format import format_program
from visprog.language.signatures import OptionError, Registry
from visprog.language.values import Image, describe_value, type_of_value
from visprog.planner.tasks import input_names
from visprog.running import hub
from visprog.running.plugins import PLUGINS_ENV, default_registry, plugins_enabled
from visprog.running.runtime import Runtime

if TYPE_CHECKING:
    from visprog.running.tracing import Trace

__all__ = [
    "DEMO_PROGRAM",
    "UsageError",
    "build_runtime",
    "check_command",
    "demo_command",
    "exec_command",
    "fmt_command",
    "graph_command",
    "models_command",
    "modules_command",
    "save_trace",
]

DEMO_PROGRAM = """\
# Hide the astronaut's face with an emoji.
OBJ0=FaceDet(image=IMAGE)
IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face_with_sunglasses')
FINAL_RESULT=Result(var=IMAGE0)
"""


class UsageError(VisprogError):
    """A command-line mistake (exit status 2)."""


def _read_program(arg: str) -> tuple[str, str]:
    """(text, name) of the PROGRAM argument."""
    if arg == "-":
        return sys.stdin.read(), "<stdin>"
    if "\n" in arg:
        return arg, "<argument>"
    path = Path(arg)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read program file {arg}: {e}") from e
    if "=" in arg:
        return arg, "<argument>"
    raise UsageError(f"no such program file: {arg}")


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
    checked = _check(text, args.input or None)
    result = checked.steps[checked.result]
    err = getattr(args, "stderr", None) or sys.stderr
    for warning in checked.warnings:
        print(f"{name}: warning: {warning}", file=err)
    print(
        f"{name}: ok, {len(checked.steps)} steps, inputs {', '.join(checked.used_inputs) or 'none'}, "
        f"result {result.step.target} ({result.type})",
        file=out,
    )
    return 0


def fmt_command(args: argparse.Namespace, out: TextIO) -> int:
    """Print the program in canonical form; with ``--check``, say whether it already is (exit 1 when not,
    with a diff of what would change)."""
    text, name = _read_program(args.program)
    canonical = format_program(text, default_registry())
    if not args.check:
        out.write(canonical)
        return 0
    if canonical == text:
        print(f"{name}: already canonical", file=out)
        return 0
    diff = difflib.unified_diff(
        text.splitlines(keepends=True), canonical.splitlines(keepends=True), name, f"{name} (canonical)"
    )
    for line in diff:
        out.write(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    print(f"{name}: would be reformatted (visprog fmt prints the canonical form)", file=out)
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
        print(f"{'module':<10} {'backend':<16} {'model':<52} cached", file=out)
        for r in rows:
            mark = "*" if r.selected else " "
            model = r.model_id if r.downloadable else f"{r.model_id or ''} (no download)".strip()
            cached = ("yes" if r.cached else "no") if r.downloadable else "-"
            print(f"{r.module:<10} {mark}{r.backend:<15} {model:<52} {cached}", file=out)
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


def _write_images(trace: Trace, outdir: Path, out: TextIO) -> None:
    from visprog.running.images import save_image  # numpy: keeps `visprog check` fast

    for record in sorted(trace.records, key=lambda r: r.index):
        if record.ok and isinstance(record.output, Image) and record.module not in ("Result", "="):
            path = save_image(record.output, outdir / "steps" / f"{record.line:02d}_{record.target}.png")
            print(f"wrote {path}", file=out)
    if isinstance(trace.result, Image):
        path = save_image(trace.result, outdir / "result.png")
        print(f"wrote {path}", file=out)


def _execute(text: str, images: dict[str, Any], args: argparse.Namespace, out: TextIO, label: str | None = None) -> int:
    from visprog.running.interpreter import Interpreter  # loaded by the commands that run programs

    interpreter = Interpreter(runtime=build_runtime(args), known_inputs=input_names())
    types = {name: type_of_value(value) for name, value in images.items()}
    checked = check(text, types, registry=interpreter.registry, known_inputs=input_names())
    err = getattr(args, "stderr", None) or sys.stderr
    for warning in checked.warnings:  # e.g. no result step: the last step's value is the result
        print(f"warning: {warning}", file=err)
    try:
        trace = interpreter.run(checked, images)
    except StepError as e:
        if e.trace is not None and args.output:
            _write_images(e.trace, Path(args.output), out)
        if e.trace is not None:
            print(e.trace.to_text(), file=out)
            save_trace(e.trace, args, out, text=label)
        raise
    save_trace(trace, args, out, text=label)
    if not args.quiet:
        print(trace.to_text(), file=out)
    result = trace.result
    print(
        f"{trace.result_var}: {result if isinstance(result, (str, int, float, bool)) else describe_value(result)}",
        file=out,
    )
    if args.output:
        _write_images(trace, Path(args.output), out)
    return 0


def save_trace(trace: Trace, args: argparse.Namespace, out: TextIO, text: str | None = None) -> None:
    """--trace FILE: the run as one self-contained HTML page (also for a failed run)."""
    if getattr(args, "trace", None):
        from visprog.presentation.report import save_html  # only with --trace: keeps `visprog check` fast

        path = save_html(trace, args.trace, text=text)
        print(f"wrote {path}", file=out)


def exec_command(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.running.images import load_image

    text, _ = _read_program(args.program)
    paths = _pairs(args.image, "--image", default_key="IMAGE")
    images = {name: load_image(path, max_pixels=args.max_pixels) for name, path in paths.items()}
    return _execute(text, images, args, out)


def demo_command(args: argparse.Namespace, out: TextIO) -> int:
    from skimage import data

    from visprog.running.images import load_image

    if not args.backend:
        args.backend = ["FaceDet=cascade"]
    print("program:", file=out)
    print(DEMO_PROGRAM, file=out)
    image = load_image(data.astronaut(), name="astronaut (scikit-image)")
    return _execute(DEMO_PROGRAM, {"IMAGE": image}, args, out, label="Hide the astronaut's face with an emoji.")
