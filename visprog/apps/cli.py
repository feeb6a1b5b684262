"""The ``visprog`` command.

    visprog exec PROGRAM --image IMAGE=photo.jpg [-o OUTDIR]
    visprog check PROGRAM
    visprog graph PROGRAM [--dot]
    visprog modules
    visprog models list | pull [MODULE ...]
    visprog demo [-o OUTDIR]
    visprog ask IMAGE "question" | verify LEFT RIGHT "statement" | edit IMAGE "instruction" -o out.png | tag ...
    visprog serve [--host 127.0.0.1] [--port 7860]
    visprog eval DATA --task gqa --images DIR -o results.jsonl

PROGRAM is a file, ``-`` for standard input, or the program text itself.
Exit status: 0 on success, 1 when the program or a step fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from visprog.errors import ConfigError, ProgramCheckError, ProgramError, StepError, VisprogError

__all__ = ["main"]

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


def _runtime(args: argparse.Namespace) -> Any:
    from visprog.running.plugins import default_registry
    from visprog.running.runtime import Runtime

    runtime = Runtime.from_config(
        getattr(args, "config", None),
        device_request=getattr(args, "device", None),
        half=False if getattr(args, "fp32", False) else None,
    )
    if getattr(args, "quiet", False):
        _silence_progress()
        runtime.progress = False
    registry = default_registry()
    for name in list(runtime.modules):  # config files may spell names any way
        spec = registry.get(name)
        if spec is None:
            raise UsageError(f"config: unknown module '{name}'{_hint(registry, name)}")
        if spec.name != name:
            runtime.modules.setdefault(spec.name, {}).update(runtime.modules.pop(name))
    for option in ("backend", "model"):
        for name, value in _pairs(getattr(args, option, None), f"--{option}").items():
            spec = registry.get(name)
            if spec is None:
                raise UsageError(f"--{option}: unknown module '{name}'{_hint(registry, name)}")
            if not spec.backends:
                raise UsageError(f"--{option}: {spec.name} uses no model")
            if option == "backend" and value not in spec.backends:
                raise UsageError(
                    f"--backend: {spec.name} has no backend '{value}'; choose one of {', '.join(spec.backends)}"
                )
            runtime.set_option(spec.name, option, value)
    return runtime


def _silence_progress() -> None:
    """-q: no model-load lines, no download or weight-loading progress bars."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _hint(registry: Any, name: str) -> str:
    hint = registry.suggest(name)
    return f" (did you mean '{hint}'?)" if hint else ""


def _print_error(e: BaseException, name: str, err: TextIO, command: str | None = None) -> None:
    if isinstance(e, ProgramError):
        print(f"{name}: {len(e.diagnostics)} {e.kind}{'s' if len(e.diagnostics) > 1 else ''}:", file=err)
        print(e.render(), file=err)
        if command == "exec" and isinstance(e, ProgramCheckError) and e.missing_inputs:
            print("hint: give the program its images with --image NAME=PATH (NAME defaults to IMAGE)", file=err)
    else:
        print(f"error: {e}", file=err)


def _cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.solve import check

    text, name = _read_program(args.program)
    checked = check(text, args.input or None)
    result = checked.steps[checked.result]
    print(
        f"{name}: ok, {len(checked.steps)} steps, inputs {', '.join(checked.used_inputs) or 'none'}, "
        f"result {result.step.target} ({result.type})",
        file=out,
    )
    return 0


def _cmd_graph(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.solve import check

    text, _ = _read_program(args.program)
    graph = check(text, args.input or None).graph
    out.write(graph.to_dot() if args.dot else graph.to_mermaid())
    return 0


def _cmd_modules(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.running.plugins import default_registry

    specs = list(default_registry())
    if args.json:
        data = [
            {
                "name": s.name,
                "aliases": list(s.aliases),
                "summary": s.summary,
                "returns": str(s.returns),
                "batch": s.batch is not None,
                "source": s.source,
                "params": [
                    {"name": p.name, "type": str(p.type), "required": p.required, "description": p.description}
                    for p in s.params
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
            print(f"    {p.name}: {p.description}", file=out)
        extras = []
        if s.aliases:
            extras.append("aliases: " + ", ".join(s.aliases))
        if s.batch is not None:
            extras.append("batches")
        extras.append(f"from {s.source}")
        print(f"    ({'; '.join(extras)})", file=out)
        print(file=out)
    return 0


def _cmd_models(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.running import hub
    from visprog.running.plugins import default_registry

    registry = default_registry()
    runtime = _runtime(args)
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


def _write_images(trace: Any, outdir: Path, out: TextIO) -> None:
    from visprog.language.values import Image
    from visprog.running.images import save_image

    for record in sorted(trace.records, key=lambda r: r.index):
        if record.ok and isinstance(record.output, Image) and record.module not in ("Result", "="):
            path = save_image(record.output, outdir / "steps" / f"{record.line:02d}_{record.target}.png")
            print(f"wrote {path}", file=out)
    if isinstance(trace.result, Image):
        path = save_image(trace.result, outdir / "result.png")
        print(f"wrote {path}", file=out)


def _execute(
    text: str, images: dict[str, Any], args: argparse.Namespace, out: TextIO, label: str | None = None
) -> int:
    from visprog.language.values import describe_value
    from visprog.running.interpreter import Interpreter

    interpreter = Interpreter(runtime=_runtime(args))
    try:
        trace = interpreter.run(text, images)
    except StepError as e:
        if e.trace is not None and args.output:
            _write_images(e.trace, Path(args.output), out)
        if e.trace is not None:
            print(e.trace.to_text(), file=out)
            _save_trace(e.trace, args, out, text=label)
        raise
    _save_trace(trace, args, out, text=label)
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


def _save_trace(trace: Any, args: argparse.Namespace, out: TextIO, text: str | None = None) -> None:
    """--trace FILE: the run as one self-contained HTML page (also for a failed run)."""
    if getattr(args, "trace", None):
        path = trace.save_html(args.trace, text=text)
        print(f"wrote {path}", file=out)


def _cmd_exec(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.running.images import load_image

    text, _ = _read_program(args.program)
    paths = _pairs(args.image, "--image", default_key="IMAGE")
    images = {name: load_image(path, max_pixels=args.max_pixels) for name, path in paths.items()}
    return _execute(text, images, args, out)


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from skimage import data

    from visprog.running.images import load_image

    if not args.backend:
        args.backend = ["FaceDet=cascade"]
    print("program:", file=out)
    print(DEMO_PROGRAM, file=out)
    image = load_image(data.astronaut(), name="astronaut (scikit-image)")
    return _execute(DEMO_PROGRAM, {"IMAGE": image}, args, out, label="Hide the astronaut's face with an emoji.")


TASKS = {
    "ask": ("gqa", ["IMAGE"], "question"),
    "verify": ("nlvr", ["LEFT", "RIGHT"], "statement"),
    "edit": ("edit", ["IMAGE"], "instruction"),
    "tag": ("tag", ["IMAGE"], "instruction"),
}


def _cmd_task(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.language.values import Image, describe_value
    from visprog.running.images import load_image, save_image
    from visprog.running.interpreter import Interpreter
    from visprog.solve import create_planner

    task, names, _ = TASKS[args.command]
    runtime, options = _planner_options(args)
    planner = create_planner(**options)
    if args.plan_only:
        plan = planner.plan(task, args.text)
        print(plan.program.strip(), file=out)
        return 0
    images = {name: load_image(getattr(args, name.lower()), max_pixels=args.max_pixels) for name in names}
    interpreter = Interpreter(planner.registry, runtime)

    def run(checked: Any, inputs: Any) -> Any:
        try:
            trace = interpreter.run(checked, inputs)
        except StepError as e:
            if e.trace is not None:  # kept if no sample succeeds; the winner's replaces it
                _save_trace(e.trace, args, out, text=args.text)
            raise
        return trace

    solution = planner.solve(
        task,
        args.text,
        images,
        run,
        samples=args.samples,
        feed_errors=args.feed_errors,
        progress=None if args.quiet or args.samples == 1 else _progress(out),
    )
    _save_trace(solution.trace, args, out, text=args.text)
    print("program:", file=out)
    print(solution.program.strip(), file=out)
    if not args.quiet:
        print(file=out)
        print(solution.trace.to_text(), file=out)
    result = solution.result
    shown = result if isinstance(result, (str, int, float, bool)) else describe_value(result)
    print(f"result: {shown}", file=out)
    if args.samples > 1:
        valid = sum(1 for p, t in solution.samples if not isinstance(t, Exception) and t is not None)
        print(f"agreement: {solution.agreement:.0%} of {valid} valid sample(s) out of {args.samples}", file=out)
    if isinstance(result, Image):
        target = Path(args.output or f"{task}_result.png")
        if args.output and (target.is_dir() or args.output.endswith(("/", os.sep))):
            target = target / f"{task}_result.png"  # -o a folder: the image goes in it
        print(f"wrote {save_image(result, target)}", file=out)
    elif args.output:
        print(f"warning: the result is not an image ({shown}), so nothing was written to {args.output}", file=out)
    return 0


def _planner_options(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The runtime, and the planner's options: the config file's [llm] table, then the command line."""
    llm_models = [m for m in args.model or [] if "=" not in m]
    args.model = [m for m in args.model or [] if "=" in m]  # MODULE=ID: a module's model
    runtime = _runtime(args)
    given = {
        "model": llm_models[-1] if llm_models else None,
        "base_url": args.base_url,
        "style": args.style,
        "local": args.local,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "timeout": args.timeout,
        "stop": args.stop,
    }
    options = {**runtime.llm, **{k: v for k, v in given.items() if v is not None}}
    return runtime, {"repair_rounds": args.repair, "cache": not args.no_cache, **options}


def _cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.evaluation.runner import evaluate, load_items
    from visprog.running.interpreter import Interpreter
    from visprog.solve import create_planner

    runtime, options = _planner_options(args)
    planner = create_planner(**options)
    items = load_items(args.data, args.task, images=args.images)
    if args.all_traces and not args.traces:
        raise ConfigError("--all-traces needs --traces DIR (the folder for the pages)")
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {args.limit}")
        items = items[: args.limit]
    interpreter = Interpreter(planner.registry, runtime, max_batch=args.max_batch)
    settings = None
    if args.engine == "ray":
        from visprog.evaluation.engines import WorkerSettings

        settings = WorkerSettings.from_runtime(runtime, options, max_batch=args.max_batch)
    evaluate(
        items,
        planner,
        interpreter,
        out_path=args.output,
        samples=args.samples,
        temperature=args.temperature,
        progress=not args.quiet,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        out=out,
        engine=args.engine,
        address=args.address,
        workers=args.workers,
        settings=settings,
        outputs=args.outputs,
        traces=args.traces,
        all_traces=args.all_traces,
        plan_workers=args.plan_workers,
    )
    results = Path(args.output)
    print(f"wrote {results} and {results.with_name(results.stem + '.summary.json')}", file=out)
    images = Path(args.outputs) if args.outputs else results.with_name(results.stem + ".outputs")
    if images.is_dir():
        print(f"image answers in {images}", file=out)
    if args.traces and Path(args.traces).is_dir():
        print(f"trace pages in {args.traces}", file=out)
    return 0


def _cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.apps.webapp import serve
    from visprog.solve import create_planner

    runtime, options = _planner_options(args)
    print(f"visprog web app on http://{args.host}:{args.port} (Ctrl+C to stop)", file=out)
    serve(
        args.host,
        args.port,
        runtime=runtime,
        planner_factory=lambda: create_planner(**options),
        max_upload_bytes=int(args.max_upload_mb * 1_000_000),
        max_pixels=args.max_pixels,
    )
    return 0


def _progress(out: TextIO) -> Any:
    def show(done: int, total: int) -> None:
        bar = "#" * (20 * done // total)
        print(f"\rsamples [{bar:<20}] {done}/{total}", end="\n" if done == total else "", file=sys.stderr)

    return show


def _add_task_options(p: argparse.ArgumentParser, names: list[str], what: str, image_out: bool) -> None:
    for name in names:
        p.add_argument(name.lower(), metavar=name, help=f"the {name} image file")
    p.add_argument("text", help=f"the {what}")
    p.add_argument("--plan-only", action="store_true", help="print the program and stop")
    p.add_argument("--samples", type=int, default=1, help="draw K programs, run the valid ones, vote (default 1)")
    p.add_argument("--feed-errors", action="store_true", help="send a failing step's error back for a new plan")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="print only the program and the result; no progress output"
    )
    p.add_argument("--trace", metavar="FILE", help="write the step-by-step trace as a self-contained HTML page")
    _add_planner_options(p)
    if image_out:
        p.add_argument("-o", "--output", metavar="FILE", help="where to write the edited image")
    else:
        p.set_defaults(output=None)


def _add_planner_options(p: argparse.ArgumentParser) -> None:
    """The LLM's options and the modules' options (shared by the planning commands and serve)."""
    p.add_argument("--repair", type=int, default=2, metavar="N", help="repair rounds for invalid programs (default 2)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the plan cache")
    p.add_argument("--base-url", help="an OpenAI-compatible server (default: $OPENAI_BASE_URL)")
    p.add_argument("--style", choices=["chat", "completion"], default=None, help="the server's API style (chat)")
    p.add_argument("--local", metavar="MODEL", help="plan with a local transformers causal LM (hub id or folder)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
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
    p.add_argument("--max-pixels", type=int, default=None, help="reject input images larger than this")
    p.add_argument("--config", metavar="FILE", help="a TOML config file (default: $VISPROG_CONFIG)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="OUTDIR", help="write the result image and every image step here")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result; no progress output")
    p.add_argument("--device", default=None, help="cuda, mps, cpu or cuda:1 (default: the best available)")
    p.add_argument("--fp32", action="store_true", help="full precision on a GPU (default: half)")
    p.add_argument("--backend", action="append", metavar="MODULE=NAME", help="choose a module's backend")
    p.add_argument("--model", action="append", metavar="MODULE=ID", help="choose a module's model (hub id or folder)")
    p.add_argument("--max-pixels", type=int, default=None, help="reject input images larger than this")
    p.add_argument("--config", metavar="FILE", help="a TOML config file (default: $VISPROG_CONFIG)")
    p.add_argument("--trace", metavar="FILE", help="write the step-by-step trace as a self-contained HTML page")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visprog", description="Check and run VisProg programs on images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for command, (_task, names, what) in TASKS.items():
        helps = {
            "ask": "answer a question about an image",
            "verify": "is a statement about two images true?",
            "edit": "edit an image by instruction",
            "tag": "tag objects in an image with knowledge",
        }
        p = sub.add_parser(command, help=helps[command])
        _add_task_options(p, names, what, image_out=command in ("edit", "tag"))
        p.set_defaults(func=_cmd_task)

    p = sub.add_parser("eval", help="evaluate on a data set: accuracy, failure kinds, latency, time per module")
    p.add_argument("data", help="our JSONL, GQA question JSON or NLVR2 JSONL")
    p.add_argument("--task", choices=["gqa", "nlvr", "edit", "tag"], required=True)
    p.add_argument("--images", metavar="DIR", help="image folder (default: the data file's folder)")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="results JSONL (appended; resumable)")
    p.add_argument(
        "--outputs", metavar="DIR", default=None, help="image answers folder (default: <FILE stem>.outputs)"
    )
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
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("serve", help="the web app: upload images, ask, see the program and its trace")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload in MB (default 20)")
    _add_planner_options(p)
    p.set_defaults(func=_cmd_serve, quiet=False)

    p = sub.add_parser("exec", help="run a program on images")
    p.add_argument("program", help="program file, '-' for stdin, or the program text")
    p.add_argument(
        "--image", "-i", action="append", metavar="NAME=PATH", help="an input image (NAME defaults to IMAGE)"
    )
    _add_run_options(p)
    p.set_defaults(func=_cmd_exec)

    p = sub.add_parser("check", help="check a program and print every problem")
    p.add_argument("program", help="program file, '-' for stdin, or the program text")
    p.add_argument(
        "--input", action="append", metavar="NAME", help="an input the caller passes (default IMAGE, LEFT, RIGHT)"
    )
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("graph", help="print a program's dependency graph (Mermaid, or DOT)")
    p.add_argument("program", help="program file, '-' for stdin, or the program text")
    p.add_argument("--dot", action="store_true", help="Graphviz DOT instead of Mermaid")
    p.add_argument("--input", action="append", metavar="NAME", help="an input the caller passes")
    p.set_defaults(func=_cmd_graph)

    p = sub.add_parser("modules", help="list the registered modules")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_modules)

    p = sub.add_parser("models", help="list the models modules use, or download them ahead of time")
    p.add_argument("action", choices=["list", "pull"])
    p.add_argument("modules", nargs="*", metavar="MODULE", help="modules to pull (default: all)")
    p.add_argument("--all-backends", action="store_true", help="pull every backend's model, not only the selected")
    p.add_argument("--backend", action="append", metavar="MODULE=NAME", help="choose a module's backend")
    p.add_argument("--model", action="append", metavar="MODULE=ID", help="choose a module's model")
    p.add_argument("--config", metavar="FILE", help="a TOML config file (default: $VISPROG_CONFIG)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("demo", help="hide the face in the astronaut photo with an emoji, offline")
    _add_run_options(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    program = getattr(args, "program", None)
    if program == "-":
        name = "<stdin>"
    elif program is None or ("=" in program and not Path(program).is_file()):
        name = "<argument>" if program else "program"
    else:
        name = program
    try:
        return int(args.func(args, out))
    except UsageError as e:
        print(f"error: {e}", file=err)
        return 2
    except VisprogError as e:
        _print_error(e, name, err, getattr(args, "command", None))
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130


if __name__ == "__main__":
    sys.exit(main())
