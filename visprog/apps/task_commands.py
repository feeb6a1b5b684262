"""The commands that plan with an LLM: one per task (``visprog ask``, ``verify``, ...), ``eval`` and ``serve``.

Each ``*_command(args, out)`` reads the parsed command line (:func:`visprog.apps.cli.build_parser`), writes
its answer to ``out`` and returns the exit status.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, TextIO

from visprog.apps.commands import build_runtime, input_dest
from visprog.apps.console import UsageError, escape_controls, shown, stderr_of
from visprog.apps.run_output import RunReport, check_trace_path, output_target, show_run
from visprog.errors import ConfigError, VisprogError
from visprog.planner.events import CacheHit, PlanFailed, RepairRound, RequestSent
from visprog.planner.retrieval import check_examples
from visprog.planner.tasks import get_task, input_names
from visprog.running.events import Event, Listener, RunStarted
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Runtime
from visprog.running.tracing import Trace
from visprog.solving import create_planner, solve

__all__ = ["check_port", "eval_command", "planner_lines", "serve_command", "task_command"]


def task_command(args: argparse.Namespace, out: TextIO) -> int:
    from visprog.running.images import load_image  # numpy: keeps `visprog check` fast

    started = time.perf_counter()
    task = get_task(args.task)
    target = output_target(args.output)
    check_trace_path(args.trace)
    runtime, options = planner_options(args)
    planner = create_planner(**options)
    report = RunReport(args.command, task=task.name, text=args.text)
    err = stderr_of(args)
    timer = _Timer(started, None if args.quiet else planner_lines(args.samples, args.repair, err))

    def read_images() -> dict[str, Any]:
        return {name: load_image(getattr(args, input_dest(name)), max_pixels=args.max_pixels) for name in task.inputs}

    try:
        if args.plan_only:  # the images are read only when the model is to see them
            seen = read_images() if planner.see_image else None
            report.program = planner.plan(task, args.text, images=seen, on_event=timer).program.strip()
        else:
            images = read_images()
            solution = solve(
                task,
                args.text,
                images,
                planner=planner,
                runtime=runtime,
                samples=args.samples,
                feed_errors=args.feed_errors,
                on_event=timer,
            )
            report.program, report.trace, report.agreement = solution.program, solution.trace, solution.agreement
            valid = sum(1 for _, t in solution.samples if t is not None and not isinstance(t, Exception))
            report.samples = {"drawn": args.samples, "valid": valid}
    except VisprogError as e:
        report.error, report.trace = e, getattr(e, "trace", None)  # the last sample's failed run, if one ran
        report.program = report.trace.source if report.trace is not None else None
        raise
    finally:
        if report.program is not None or report.error is not None:
            report.timings = timer.timings(report.trace)
            if args.plan_only and not args.json and report.error is None:
                print(escape_controls(str(report.program)), file=out)  # the program is the answer
            else:
                offers_output = task.answer == "image"
                show_run(
                    report,
                    args,
                    out,
                    target,
                    label=args.text,
                    result_label="result",
                    show_program=True,
                    offers_output=offers_output,
                )
    return 0


class _Timer:
    """Passes events on to ``listener`` and notes when planning ended: the first run's start."""

    def __init__(self, started: float, listener: Listener | None) -> None:
        self.started, self.listener = started, listener
        self.planned: float | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted) and self.planned is None:
            self.planned = time.perf_counter()
        if self.listener is not None:
            self.listener(event)

    def timings(self, trace: Trace | None) -> dict[str, float | None]:
        now = time.perf_counter()
        plan = (self.planned or now) - self.started
        return {"plan": plan, "run": trace.seconds if trace is not None else None, "total": now - self.started}


def planner_options(args: argparse.Namespace) -> tuple[Runtime, dict[str, Any]]:
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

    runtime, options = planner_options(args)
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
        overlap=args.overlap,
        address=args.address,
        workers=args.workers,
        settings=settings,
        outputs=args.outputs,
        traces=args.traces,
        all_traces=args.all_traces,
        plan_workers=args.plan_workers,
    )
    results, err = Path(args.output), stderr_of(args)
    print(shown(f"wrote {results} and {results.with_name(results.stem + '.summary.json')}", lines=False), file=err)
    images = Path(args.outputs) if args.outputs else results.with_name(results.stem + ".outputs")
    if images.is_dir():
        print(f"image answers in {shown(images, lines=False)}", file=err)
    if args.traces and Path(args.traces).is_dir():
        print(f"trace pages in {shown(args.traces, lines=False)}", file=err)
    return 0


def serve_command(args: argparse.Namespace, out: TextIO) -> int:
    runtime, options = planner_options(args)
    check_port(args.host, args.port)  # before the web app (and Gradio) load: a busy port is one clear line

    from visprog.apps.webapp import serve  # the web app loads only for `visprog serve`

    print(f"visprog web app on http://{args.host}:{args.port} (Ctrl+C to stop)", file=out)
    try:
        serve(
            args.host,
            args.port,
            runtime=runtime,
            planner_factory=lambda: create_planner(**options),
            max_upload_bytes=int(args.max_upload_mb * 1_000_000),
            max_pixels=args.max_pixels,
            max_concurrent=args.max_concurrent,
            request_timeout=args.request_timeout,
        )
    except OSError:  # Gradio's own "cannot find empty port": another server took the port in the meantime
        check_port(args.host, args.port)
        raise
    return 0


def check_port(host: str, port: int) -> None:
    """A :class:`UsageError` saying why ``visprog serve`` cannot listen on ``host:port`` (in use, not allowed,
    no such address), found by binding a socket there as the server will; nothing when it can."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: no such address on this machine ({e.strerror})") from None
    with socket.socket(family, kind, proto) as sock:
        if os.name != "nt":  # as the server does: a port left in TIME_WAIT by an earlier run is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is in use; pick another with --port") from None
            if e.errno == errno.EACCES:
                raise UsageError(f"port {port} on {host} needs privileges; pick another with --port") from None
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def planner_lines(samples: int, repair: int, err: TextIO) -> Listener:
    """A listener printing the planner's progress on ``err``, one line each: a plan from the cache, a repair round
    with the number of errors sent back, and with several samples each sample's start and outcome."""

    def show(event: Event) -> None:
        of = f"sample {event.sample + 1} of {samples}: " if samples > 1 and hasattr(event, "sample") else ""
        if isinstance(event, CacheHit):
            print(f"{of}plan from the cache", file=err)
        elif isinstance(event, RequestSent) and event.attempt == 1 and samples > 1:
            print(f"{of}asking the LLM", file=err)
        elif isinstance(event, RepairRound):
            found = len(re.findall(r"^line \d+, col \d+: ", event.diagnostics, flags=re.M))
            if found:
                what = f"{found} error{'s' if found != 1 else ''} in the program"
            else:  # no program in the reply, or one cut at the token limit: its first sentence says which
                what = event.diagnostics.strip().split(". ")[0].split(":")[0].lower() or "no program"
            print(
                f"{of}repair round {event.attempt} of {repair}: {shown(what, lines=False)}, sent back to the LLM",
                file=err,
            )
        elif isinstance(event, PlanFailed) and samples > 1:
            print(f"{of}no valid program after {event.attempts} request(s)", file=err)

    return show
