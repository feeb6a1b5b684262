"""Evaluate the planner and the interpreter on a data set: plan and run every item, write its record, summarise.

:func:`evaluate` plans every item of a chunk (one LLM call after another, or
``plan_workers`` at once), runs the chunk's valid programs together
(``Interpreter.run_many`` when the interpreter has it, else one
:meth:`~visprog.running.interpreter.Interpreter.run` each with a shared run
cache), and appends one JSON line per item to the output file, flushed at once
(:mod:`visprog.evaluation.records`; the file, locked while it is written:
:mod:`visprog.evaluation.results`); items already in the file are skipped, so
a run can be resumed. An error inside one item is that item's failure, in its
record: the run goes on. The chunks run here or on Ray actors
(:mod:`visprog.evaluation.engines`), each with :func:`process_chunk`.

Planning overlaps running: while a chunk runs, the next chunk's items are
planned (:func:`plan_chunk`, in a thread of the engine, ``plan_workers`` LLM
requests at a time), so an LLM server's latency hides behind the interpreter's
work. The records are the same as with ``overlap=False`` (plan a chunk only
after the one before it ran), in the same order. A local model (``--local``)
plans and runs one after the other: it shares the device, the cores and torch's
random state with the modules.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from visprog.errors import ConfigError, ServiceError, VisprogError
from visprog.evaluation.datasets import Item, missing_images
from visprog.evaluation.engines import WorkerSettings, local_chunks, ray_chunks
from visprog.evaluation.records import ABORTED, ItemRun, build_record, internal_error
from visprog.evaluation.results import ResultsFile
from visprog.evaluation.summary import Summary, summarize
from visprog.language.checker import CheckedProgram
from visprog.llm import TransformersClient
from visprog.planner.core import Plan, Planner
from visprog.running.images import load_image
from visprog.running.runtime import RunCache
from visprog.running.tracing import Trace

__all__ = ["PlannedChunk", "evaluate", "plan_chunk", "process_chunk"]


class _Runner(Protocol):
    def run(self, program: Any, inputs: Mapping[str, Any], *, cache: RunCache | None = None) -> Trace: ...


class _Progress:
    """A one-line progress bar on stderr: items done and the running accuracy."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.correct = 0
        self.scored = 0

    def update(self, correct: bool | None) -> None:
        self.done += 1
        self.correct += correct is True
        self.scored += correct is not None
        if not self.enabled:
            return
        width = 24
        filled = width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        acc = f"accuracy {self.correct / self.scored:.1%}" if self.scored else "not scored"
        self.stream.write(f"\reval [{bar}] {self.done}/{self.total}  {acc}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def evaluate(
    items: Sequence[Item],
    planner: Planner,
    interpreter: _Runner,
    *,
    out_path: str | Path,
    samples: int = 1,
    temperature: float | None = None,
    progress: bool = True,
    batch_size: int = 16,
    max_pixels: int | None = None,
    out: TextIO | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    settings: WorkerSettings | None = None,
    outputs: str | Path | None = None,
    traces: str | Path | None = None,
    all_traces: bool = False,
    plan_workers: int = 1,
    overlap: bool = True,
) -> Summary:
    """Plan and run every item not yet in ``out_path``, append one JSON line each, return the :class:`Summary`.

    With ``samples`` > 1 every item gets that many plans (temperature 0.7 unless
    given: :meth:`Planner.plan_samples`); the valid ones run and the answers are voted on as
    :func:`visprog.solving.solve` does (:func:`visprog.solving.vote_runs`). ``plan_workers`` > 1 sends
    that many items' LLM requests at once (an LLM server only); the records do not change.

    ``overlap`` (an LLM server only; a local model never overlaps): the next chunk is planned while
    one runs, on either engine; the records are the same as without it, in the same order, and at
    most ``plan_workers`` LLM requests (per Ray actor) are on their way at once. When it ends early (an
    outage, an error, Ctrl+C), the planning ahead stops after the requests on their way: its
    chunk gets no record and is planned again when the evaluation resumes.

    ``engine="ray"`` spreads the chunks over Ray actors (one per GPU, else
    ``workers`` CPU actors, default 2; ``address``: an existing cluster), each
    building its own planner and interpreter from ``settings`` (a
    :class:`visprog.evaluation.engines.WorkerSettings`; ``planner`` and ``interpreter`` are
    then not used); the records and the summary are the same. The summary covers every item of ``items`` with a
    record in the file, is printed as a table (to ``out``; stdout when
    ``progress``), and saved as ``<stem>.summary.json`` next to ``out_path``.

    Before planning anything, the local image files of the items to run are looked for (one stat
    call per file; URLs are not): when none of the items has its images this is a
    :class:`ConfigError` (the wrong image folder, most likely); when some lack theirs, one warning
    line goes to stderr and those items are recorded as ``execution`` failures.

    When the LLM service stops answering (unreachable, timed out, key or model refused, rate limited
    after the retries, server errors: a :class:`ServiceError` that is not ``per_request``), the items
    of the chunk planned before it are run and written, and the evaluation stops with a
    :class:`ServiceError` saying so: the items without a record are planned when the same call (or
    command) runs again. A refusal of one request (``per_request``: its prompt is too long, a content
    filter) is that item's ``plan_parse`` failure.

    Answers that are images (edit and tag) are saved under ``outputs`` (default: the folder
    ``<stem>.outputs`` next to ``out_path``, made on the first image) and named in the record's
    ``output_file``. Items without an expected answer are not scored: accuracy is over the scored
    items, and the summary also counts the items whose program ran to its end.

    An error inside one item (its text is not Unicode, its planning or its program's run raises, its answer
    cannot be scored) is that item's failure, with the error in its record; the evaluation goes on.

    ``out_path`` is locked while the evaluation writes it (:class:`~visprog.evaluation.results.ResultsFile`):
    a second evaluation of the same file stops at once with a
    :class:`~visprog.evaluation.results.ResultsError`, as does an ``out_path`` that is a folder, a file
    that is not UTF-8, or a disk that is read-only or full; the records already in the file stay.

    With ``traces`` (a folder), the trace page (:func:`visprog.presentation.report.save_html`) of every item whose
    program ran but came out wrong or failed is saved as ``<traces>/<id>.html`` (the record's
    ``trace_file``); ``all_traces``: of every item that ran.
    """
    started = time.perf_counter()
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine '{engine}': expected local or ray")
    if engine == "ray" and settings is None:
        raise ConfigError("engine 'ray' needs worker settings (visprog.evaluation.engines.WorkerSettings)")
    if plan_workers < 1:
        raise ConfigError(f"plan_workers must be at least 1, got {plan_workers}")
    local_model = (
        bool(settings.planner.get("local"))
        if engine == "ray" and settings is not None
        else _is_local_model(getattr(planner, "backend", None))
    )
    if plan_workers > 1 and local_model:
        raise ConfigError("planning several items at once needs an LLM server: a local model plans one at a time")
    if samples > 1 and temperature is None:
        temperature = 0.7
    path = Path(out_path)
    with ResultsFile(path) as output:  # locked: a second evaluation of the same file stops at once
        summary, aborted, done, written = _evaluate_into(
            output,
            items,
            planner,
            interpreter,
            samples=samples,
            temperature=temperature,
            progress=progress,
            batch_size=batch_size,
            max_pixels=max_pixels,
            engine=engine,
            address=address,
            workers=workers,
            settings=settings,
            outputs=outputs,
            traces=traces,
            all_traces=all_traces,
            plan_workers=plan_workers,
            overlap=overlap and not local_model,
        )
        summary.wall_seconds = time.perf_counter() - started
        output.write_summary(summary.to_dict())
    if aborted is not None:  # the summary so far is saved; the run stops here
        left = len(items) - len(done)
        raise ServiceError(
            f"the LLM stopped answering at item '{aborted['id']}': {aborted[ABORTED]}\n"
            f"the records so far ({len(done)}, {written} of them written now) are saved in {path}; "
            f"{left} item(s) have none yet: run the same command again to resume"
        )
    stream = out if out is not None else (sys.stdout if progress else None)
    if stream is not None:
        print(summary.to_table(), file=stream)
    return summary


def _evaluate_into(
    output: ResultsFile,
    items: Sequence[Item],
    planner: Planner,
    interpreter: _Runner,
    *,
    progress: bool,
    batch_size: int,
    engine: str,
    address: str | None,
    workers: int | None,
    settings: WorkerSettings | None,
    outputs: str | Path | None,
    traces: str | Path | None,
    overlap: bool,
    **options: Any,
) -> tuple[Summary, dict[str, Any] | None, dict[str, dict[str, Any]], int]:
    """:func:`evaluate`'s work on its locked output file: the summary, the mark of an outage (or None),
    every record by id and how many were written now."""
    path = output.path
    done = output.records()
    for it in items:  # resuming skips by id: a record of another task with the same id is not this item's
        other = done.get(it.id, {}).get("task")
        if other is not None and other != it.task:
            raise ConfigError(
                f"{path} already has a record for '{it.id}' from task {other}, not {it.task}: "
                "write this evaluation to another file (-o)"
            )
    todo = [it for it in items if it.id not in done]
    skipped = len(items) - len(todo)
    missing, first_missing = missing_images(todo)
    if todo and missing == len(todo):
        what = (
            "the item's image was not found:"
            if len(todo) == 1
            else f"none of the {len(todo)} items' images were found, e.g."
        )
        raise ConfigError(f"{what} {first_missing}; pass --images DIR, the folder with the images")
    if missing:
        print(
            f"warning: {missing} of the {len(todo)} items to evaluate lack their images (e.g. {first_missing}); "
            "they are recorded as execution failures",
            file=sys.stderr,
        )
    bar = _Progress(len(items), progress)
    for it in items:
        if it.id in done:
            bar.done += 1
            bar.correct += done[it.id].get("correct") is True
            bar.scored += done[it.id].get("correct") is not None
    output.end_last_line()  # a line cut short by a crash stays on its own
    chunks = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    options["outputs"] = Path(outputs) if outputs is not None else path.with_name(f"{path.stem}.outputs")
    options["traces"] = Path(traces) if traces is not None else None
    ahead = plan_chunk if overlap else None
    results: Iterator[list[dict[str, Any]]]
    if engine == "ray" and chunks:
        assert settings is not None
        results = ray_chunks(chunks, process_chunk, settings, address=address, workers=workers, plan=ahead, **options)
    else:
        results = local_chunks(chunks, process_chunk, planner, interpreter, plan=ahead, **options)
    aborted: dict[str, Any] | None = None
    try:
        for records in results:  # chunk by chunk, in item order; each record written as it comes
            for rec in records:
                if ABORTED in rec:
                    aborted = rec
                    continue
                output.write(rec)
                done[rec["id"]] = rec
                bar.update(rec.get("correct"))
            if aborted is not None:
                break
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the Ray actors at once when the loop ended early
        if bar.enabled and 0 < bar.done < bar.total:
            bar.stream.write("\n")  # the run stopped early: what follows starts a line of its own
    summary = summarize([done[it.id] for it in items if it.id in done], out_path=str(path), skipped=skipped)
    summary.evaluated = output.written
    return summary, aborted, done, output.written


@dataclass
class PlannedChunk:
    """A chunk after planning: its items loaded and planned (:class:`ItemRun`), up to where planning stopped.

    ``stop``: the item at which the LLM service stopped answering (or every request was refused alike)
    and the error; the items before it are in ``runs``, the ones after it were not asked. ``cancelled``:
    planning was called off (the evaluation ended first); the chunk is not to be run.
    """

    runs: list[ItemRun]
    stop: tuple[ItemRun, ServiceError] | None = None
    cancelled: bool = False

    @property
    def stopped(self) -> bool:
        """Whether no later chunk is to be planned (the engines ask before they plan ahead)."""
        return self.stop is not None or self.cancelled


class _Cancelled(Exception):
    """Planning was called off between two items."""


def plan_chunk(
    chunk: Sequence[Item],
    planner: Planner,
    *,
    samples: int = 1,
    temperature: float | None = None,
    max_pixels: int | None = None,
    plan_workers: int = 1,
    cancel: threading.Event | None = None,
    **run_options: Any,
) -> PlannedChunk:
    """Load the images of every item of ``chunk`` and plan it: the first half of :func:`process_chunk`.

    ``plan_workers`` > 1 plans that many items at once (threads sending LLM requests side by side;
    for an LLM server, not a local model). When the planner's LLM service fails (a
    :class:`ServiceError` that is not ``per_request``), planning stops there (see
    :class:`PlannedChunk`); a ``per_request`` error is the item's ``plan_parse`` failure. Once
    ``cancel`` is set, no further item is planned and the chunk comes back ``cancelled``.
    ``run_options`` (:func:`process_chunk`'s ``outputs``, ``traces``, ``all_traces``) are not used here:
    the engines give both halves the same options.
    """
    if plan_workers < 1:
        raise ValueError(f"plan_workers must be at least 1, got {plan_workers}")
    if _is_local_model(getattr(planner, "backend", None)):
        plan_workers = 1  # a model in this process generates one reply at a time

    def prepare(p: ItemRun) -> ServiceError | None:
        """Load the item's images and plan it; the outage that stopped it, if any."""
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        t0 = time.perf_counter()
        try:
            p.inputs = {name: load_image(src, max_pixels=max_pixels, name=src) for name, src in p.item.images.items()}
        except Exception as e:  # whatever an image raises is this item's failure, not the evaluation's
            p.load_error = str(e) if isinstance(e, VisprogError) else internal_error(e)
            return None
        finally:
            p.load_seconds = time.perf_counter() - t0
        if (unsendable := _not_unicode(p.item.text)) is not None:
            p.failure = ("plan_parse", unsendable)
            return None
        t0 = time.perf_counter()
        try:
            p.plans = planner.plan_samples(p.item.task, p.item.text, samples, temperature=temperature, images=p.inputs)
        except ServiceError as e:  # not per_request: the service stopped answering
            return e
        except Exception as e:  # an error met planning this item (a reply the checker chokes on): its failure
            p.failure = ("plan_check", f"planning the item raised an unexpected error: {internal_error(e)}")
        finally:
            p.plan_seconds = time.perf_counter() - t0
        return None

    pending = [ItemRun(it) for it in chunk]
    stop: tuple[ItemRun, ServiceError] | None = None
    try:
        if plan_workers == 1:  # one LLM call after another; an outage stops at once
            for p in pending:
                if (error := prepare(p)) is not None:
                    stop = (p, error)
                    break
        else:  # up to plan_workers items planned at once; an outage stops at the first item it hit, in order
            with ThreadPoolExecutor(max_workers=plan_workers, thread_name_prefix="visprog-plan") as pool:
                errors = list(pool.map(prepare, pending))
            stop = next(((p, e) for p, e in zip(pending, errors, strict=True) if e is not None), None)
    except _Cancelled:
        return PlannedChunk([], cancelled=True)
    if stop is None:
        stop = _refused_alike(pending)
    return PlannedChunk(pending[: pending.index(stop[0])] if stop is not None else pending, stop)


def process_chunk(
    chunk: Sequence[Item],
    planner: Planner,
    interpreter: _Runner,
    *,
    samples: int = 1,
    temperature: float | None = None,
    max_pixels: int | None = None,
    outputs: str | Path | None = None,
    traces: str | Path | None = None,
    all_traces: bool = False,
    plan_workers: int = 1,
    planned: PlannedChunk | None = None,
) -> list[dict[str, Any]]:
    """One output record per item of ``chunk``, in order: plan every item, then run the valid programs together.

    Planning is :func:`plan_chunk` (with ``samples``, ``temperature``, ``max_pixels``, ``plan_workers``),
    unless the chunk comes ``planned`` already (an engine planned it while the chunk before it ran:
    the records are the same). The chunk's valid programs then run together.

    An answer that is an image (edit and tag programs) is saved as ``<outputs>/<id>.png`` (the record's
    ``output_file``) when ``outputs`` is given; trace pages go to ``traces`` as :func:`evaluate` says.
    The unit of work of both engines (a Ray actor calls it with its own planner and interpreter).

    When the planner's LLM service failed (a :class:`ServiceError` that is not ``per_request``),
    the items planned before it are run and get their records, the item it
    failed on gets the mark ``{"id": ..., ABORTED: "the error"}`` instead (see :data:`ABORTED`), and
    the items after it get nothing.
    """
    if planned is None:
        planned = plan_chunk(
            chunk, planner, samples=samples, temperature=temperature, max_pixels=max_pixels, plan_workers=plan_workers
        )
    if planned.cancelled:
        raise ValueError("the chunk's planning was cancelled: it cannot be run")
    jobs: list[tuple[CheckedProgram, Mapping[str, Any]]] = []
    owners: list[ItemRun] = []
    for p in planned.runs:
        for plan in p.plans:
            if isinstance(plan, Plan) and p.inputs is not None:
                jobs.append((plan.checked, p.inputs))
                owners.append(p)
    for p, (result, finished) in zip(owners, _run_jobs(interpreter, jobs), strict=True):
        p.results.append(result)
        p.run_seconds = max(p.run_seconds, finished)
    folder = Path(outputs) if outputs is not None else None
    pages = Path(traces) if traces is not None else None
    records = [build_record(p, folder, pages, all_traces) for p in planned.runs]
    if planned.stop is not None:
        records.append({"id": planned.stop[0].item.id, ABORTED: str(planned.stop[1])})
    return records


def _is_local_model(backend: Any) -> bool:
    return isinstance(backend, TransformersClient)


def _not_unicode(text: str) -> str | None:
    """Why an item's text cannot be sent to the LLM (an unpaired surrogate, from a ``\\ud800`` escape in its
    JSON), or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"the item's text has an unpaired surrogate (U+{ord(text[e.start]):04X}) at character {e.start + 1}: "
            "it is not Unicode text and cannot be sent to the LLM; mend the data file"
        )
    return None


def _refused_alike(pending: Sequence[ItemRun]) -> tuple[ItemRun, ServiceError] | None:
    """Every item of the chunk that was asked refused with one and the same message (two or more):
    a setup problem (a wrong model name some servers answer with HTTP 400), not the items. The chunk
    then stops at the first of them, as for an outage, so that no item keeps a refusal as its record.
    """
    asked = [p for p in pending if p.inputs is not None]
    refusals = [p.plans[-1] for p in asked if p.plans and isinstance(p.plans[-1], ServiceError)]
    if len(asked) < 2 or len(refusals) < len(asked) or len({str(e) for e in refusals}) != 1:
        return None
    first = refusals[0]
    assert isinstance(first, ServiceError)
    return asked[0], ServiceError(
        f"every request of {len(asked)} items was refused the same way, which points at the setup "
        f"(the model name, the server) rather than the items: {first}"
    )


def _run_jobs(
    interpreter: _Runner, jobs: Sequence[tuple[CheckedProgram, Mapping[str, Any]]]
) -> list[tuple[Trace | VisprogError, float]]:
    """Each job's result and when it finished: seconds from the start of the run of all of them."""
    if not jobs:
        return []
    start = time.perf_counter()
    run_many = getattr(interpreter, "run_many", None)
    if run_many is not None:
        try:
            results = list(run_many(jobs))
        except Exception:  # the batch failed as a whole: each program runs on its own, to find the one at fault
            pass
        else:
            total = time.perf_counter() - start
            return [(r, _finished(r, total)) for r in results]
    cache = RunCache()
    out: list[tuple[Trace | VisprogError, float]] = []
    for program, inputs in jobs:
        result: Trace | VisprogError
        try:
            result = interpreter.run(program, inputs, cache=cache)
        except VisprogError as e:
            result = e
        except Exception as e:  # an error this program met: its item's failure, not the chunk's
            result = VisprogError(f"running the program raised an unexpected error: {internal_error(e)}")
        out.append((result, time.perf_counter() - start))
    return out


def _finished(result: Trace | VisprogError, total: float) -> float:
    """When a job of ``run_many`` finished: its trace's seconds (from the start of the run of all the jobs)."""
    trace = result if isinstance(result, Trace) else getattr(result, "trace", None)
    if not isinstance(trace, Trace):
        return 0.0  # never started (it failed its check)
    return trace.seconds if trace.seconds > 0 or not isinstance(result, Trace) else total
