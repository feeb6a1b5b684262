"""The commands that plan with an LLM: one per task (``visprog ask``, ``verify``, ...), ``eval`` and ``serve``.

Each ``*_command(args, out)`` reads the parsed command line (:func:`visprog.apps.cli.build_parser`), writes
its answer to ``out`` and returns the exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from visprog.apps.commands import build_runtime, input_dest, save_trace
from visprog.errors import ConfigError, StepError
from visprog.language.values import Image, describe_value
from visprog.planner.events import PlanFailed, Planned
from visprog.planner.retrieval import check_examples
from visprog.planner.tasks import get_task, input_names
from visprog.running.events import Event, Listener, RunFinished
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Runtime
from visprog.solve import create_planner, solve

__all__ = ["eval_command", "serve_command", "task_command"]


def task_command(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.running.images import load_image, save_image  # numpy: keeps `visprog check` fast

    task = get_task(args.task)
    runtime, options = _planner_options(args)
    planner = create_planner(**options)
    if args.plan_only:
        seen = None  # the images are read only when the model is to see them
        if planner.see_image:
            seen = {
                name: load_image(getattr(args, input_dest(name)), max_pixels=args.max_pixels) for name in task.inputs
            }
        plan = planner.plan(task, args.text, images=seen)
        print(plan.program.strip(), file=out)
        return 0
    images = {name: load_image(getattr(args, input_dest(name)), max_pixels=args.max_pixels) for name in task.inputs}
    try:
        solution = solve(
            task,
            args.text,
            images,
            planner=planner,
            runtime=runtime,
            samples=args.samples,
            feed_errors=args.feed_errors,
            on_event=None if args.quiet or args.samples == 1 else _progress(args.samples),
        )
    except StepError as e:
        if e.trace is not None:  # the last sample's failed run
            save_trace(e.trace, args, out, text=args.text)
        raise
    save_trace(solution.trace, args, out, text=args.text)
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
        target = Path(args.output or f"{task.name}_result.png")
        if args.output and (target.is_dir() or args.output.endswith(("/", os.sep))):
            target = target / f"{task.name}_result.png"  # -o a folder: the image goes in it
        print(f"wrote {save_image(result, target)}", file=out)
    elif args.output:
        print(f"warning: the result is not an image ({shown}), so nothing was written to {args.output}", file=out)
    return 0


def _planner_options(args: argparse.Namespace) -> tuple[Runtime, dict[str, Any]]:
    """The runtime, and the planner's options: the config file's [llm] table, then the command line."""
    llm_models = [m for m in args.model or [] if "=" not in m]
    args.model = [m for m in args.model or [] if "=" in m]  # MODULE=ID: a module's model
    runtime = build_runtime(args)
    given = {
        "model": llm_models[-1] if llm_models else None,
        "base_url": args.base_url,
        "style": args.style,
        "local": args.local,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "timeout": args.timeout,
        "stop": args.stop,
        "see_image": args.see_image,
        "see_image_side": args.see_image_side,
        "constrain": args.constrain,
        "grammar_format": args.grammar_format,
    }
    options = {**runtime.llm, **{k: v for k, v in given.items() if v is not None}}
    if args.examples is not None:
        options["examples"] = check_examples(args.examples, "--examples")
    elif "examples" in runtime.llm:
        where = args.config or os.environ.get("VISPROG_CONFIG") or "~/.config/visprog/config.toml"
        check_examples(runtime.llm["examples"], f"config file {where}: [llm] examples")
    return runtime, {"repair_rounds": args.repair, "cache": not args.no_cache, **options}


def eval_command(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.evaluation.datasets import load_items  # the evaluation stack (numpy) loads only for `visprog eval`
    from visprog.evaluation.runner import evaluate

    runtime, options = _planner_options(args)
    planner = create_planner(**options)
    items = load_items(args.data, args.task, images=args.images)
    if args.all_traces and not args.traces:
        raise ConfigError("--all-traces needs --traces DIR (the folder for the pages)")
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {args.limit}")
        items = items[: args.limit]
    interpreter = Interpreter(planner.registry, runtime, max_batch=args.max_batch, known_inputs=input_names())
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


def serve_command(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.apps.webapp import serve  # the web app loads only for `visprog serve`

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


def _progress(total: int) -> Listener:
    """A listener drawing the samples planned, then the runs finished, as a bar on standard error."""
    counts = {"planned": 0, "ran": 0}

    def bar(what: str, done: int, of: int) -> None:
        if done > of:  # a sample planned and run again (--feed-errors): the bar is full already
            return
        filled = "#" * (20 * done // of)
        print(f"\r{what} [{filled:<20}] {done}/{of}", end="\n" if done == of else "", file=sys.stderr)

    def show(event: Event) -> None:
        if isinstance(event, (Planned, PlanFailed)):
            counts["planned"] += 1
            bar("samples", counts["planned"], total)
        elif isinstance(event, RunFinished):
            counts["ran"] += 1
            bar("runs   ", counts["ran"], counts["planned"])

    return show
