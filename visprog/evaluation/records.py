"""The output records of an evaluation: one JSON object a line per item (the file: :mod:`visprog.evaluation.results`).

A record has the item's ``id``, ``task`` and ``text``; the ``program`` that gave
the answer and every sample's ``programs``; the ``answer``, the ``expected`` one
and whether it is ``correct`` (None when the item has no expected answer); the
``failure`` kind and the ``error``; the samples' ``agreement``; the
``output_file`` of an image answer and the ``trace_file`` of the trace page;
``timings`` (each module's own time) and the latency in seconds.

Failure kinds (:data:`FAILURES`): ``plan_parse`` (the last attempt's program is empty or does
not parse: :func:`visprog.language.parser.parse` raises; or the LLM refused the request,
a ``per_request`` :class:`~visprog.errors.ServiceError`, and no program came
back; or the item's text cannot be sent at all), ``plan_check`` (it parses but fails the check;
or planning raised an unexpected error), ``execution`` (an image does not load, every valid
program fails while running, or the record itself could not be made), ``wrong_answer`` (also an
answer that cannot be compared with the expected one).

An error inside one item is that item's failure, with the error in its record: the evaluation goes on.
The error is stored with its secrets masked (:func:`visprog.llm.masking.mask_secrets`: URL user info and query
values, the LLM's key).

Latency: a record's ``seconds`` is ``load_seconds`` (its images) +
``plan_seconds`` (its LLM calls) + ``run_seconds`` (the wall time from the start
of its chunk's run until its program, or the last of its samples, finished:
the programs of a chunk run together).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from visprog.errors import ProgramError, ServiceError, VisprogError
from visprog.evaluation.datasets import Item
from visprog.evaluation.scoring import is_correct
from visprog.language.parser import parse
from visprog.language.values import describe_value
from visprog.llm.masking import mask_secrets
from visprog.planner.core import Plan, PlanningError
from visprog.presentation.report import save_html
from visprog.running.tracing import Trace
from visprog.solving import vote_runs

__all__ = ["ABORTED", "FAILURES", "ItemRun", "build_record", "internal_error", "output_file"]

#: The failure kinds an item can have, in the order the summary lists them.
FAILURES = ("plan_parse", "plan_check", "execution", "wrong_answer")

#: The key of the mark an engine's chunk of records has in place of the record of the item at which
#: the LLM service stopped answering: ``{"id": ..., ABORTED: "the error"}``. The records before it are
#: written, not the mark, and the evaluation stops with a :class:`ServiceError`.
ABORTED = "_aborted"


@dataclass
class ItemRun:
    """An item on its way through an evaluation: its images, its plans, their runs and the time each part took."""

    item: Item
    plans: list[Plan | PlanningError | ServiceError] = field(default_factory=list)
    inputs: dict[str, Any] | None = None
    load_error: str | None = None
    load_seconds: float = 0.0
    plan_seconds: float = 0.0
    run_seconds: float = 0.0
    results: list[Trace | VisprogError] = field(default_factory=list)
    #: the failure kind and the error of an item that failed outside its programs (its text cannot be sent,
    #: planning it raised): its record says so, and the evaluation goes on
    failure: tuple[str, str] | None = None


def output_file(folder: Path, item_id: str, suffix: str = ".png") -> Path:
    """Where an item's image answer (or trace page) is saved: its id made safe as a file name.

    A short hash of the id keeps ids apart that differ only in the characters replaced.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id).lstrip(".") or "item"
    if safe != item_id:
        safe += "-" + hashlib.sha1(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return folder / f"{safe}{suffix}"


def _plan_failure(error: PlanningError) -> str:
    """``plan_parse`` when the last attempt's program is empty or does not parse, else ``plan_check``."""
    last = error.attempts[-1] if error.attempts else None
    if last is None or not last.program.strip():
        return "plan_parse"
    try:
        parse(last.program)
    except ProgramError:
        return "plan_parse"
    return "plan_check"


#: Integers longer than this are shown by their size in a record: Python writes no more than 4300 digits.
_JSON_INT_BITS = 14_000

#: Lists and objects nested deeper than this are shown by a description in a record.
_JSON_DEPTH = 64


def internal_error(error: BaseException) -> str:
    """How an unexpected error inside one item reads in its record: its type and message, first line only."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _is_image(value: Any) -> bool:
    return isinstance(value, PILImage.Image)


def _json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can hold it: images and other values become short descriptions, as do integers too
    long to write out and lists nested deeper than :data:`_JSON_DEPTH`."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _JSON_INT_BITS:
        return f"<an integer of {value.bit_length():,} bits>"  # too long to write out (Python's digit limit)
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, PILImage.Image):
        return f"<image {value.width}x{value.height}>"
    if isinstance(value, (list, tuple, Mapping)) and depth >= _JSON_DEPTH:
        return f"<a {type(value).__name__} nested more than {_JSON_DEPTH} deep>"
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    return describe_value(value)


def build_record(
    p: ItemRun, outputs: Path | None = None, trace_pages: Path | None = None, all_traces: bool = False
) -> dict[str, Any]:
    """The output record of an item that was planned (and run, when a plan was valid).

    Never raises for one item's sake: when the record cannot be made (or would not be JSON), the item's
    record says so, as an ``execution`` failure with what went wrong.
    """
    try:
        record = _record(p, outputs, trace_pages, all_traces)
        json.dumps(record)  # what the file gets: checked here, where the item can still get a record
    except Exception as e:
        record = _record_of_failure(p, "execution", f"the item's record could not be made: {internal_error(e)}")
    if record["error"]:
        record["error"] = mask_secrets(record["error"])
    return record


def _record_of_failure(p: ItemRun, failure: str, error: str) -> dict[str, Any]:
    """The record of an item that failed before it had an answer: ``failure`` and ``error``, and its timings."""
    item = p.item
    return {
        "id": item.id,
        "task": item.task,
        "text": item.text,
        "program": None,
        "programs": [plan.program if isinstance(plan, Plan) else None for plan in p.plans],
        "answer": None,
        "expected": _json_safe(item.answer),
        "correct": False if item.answer is not None else None,
        "failure": failure,
        "error": error,
        "agreement": None,
        "output_file": None,
        "trace_file": None,
        "timings": {},
        "load_seconds": p.load_seconds,
        "plan_seconds": p.plan_seconds,
        "run_seconds": p.run_seconds,
        "seconds": p.load_seconds + p.plan_seconds + p.run_seconds,
    }


def _record(p: ItemRun, outputs: Path | None, trace_pages: Path | None, all_traces: bool) -> dict[str, Any]:
    item = p.item
    valid = [plan for plan in p.plans if isinstance(plan, Plan)]
    traces = [r for r in p.results if isinstance(r, Trace)]
    run_traces = [r if isinstance(r, Trace) else getattr(r, "trace", None) for r in p.results]
    timings: dict[str, float] = {}
    for t in run_traces:
        if isinstance(t, Trace):
            for name, s in t.seconds_by_module().items():
                timings[name] = timings.get(name, 0.0) + s
    answer: Any = None
    program: str | None = None
    failure: str | None = None
    error: str | None = None
    agreement: float | None = None
    shown: Trace | None = None  # the run the trace page shows
    if p.load_error is not None:
        failure, error = "execution", p.load_error
    elif p.failure is not None:
        failure, error = p.failure
    elif not valid:
        last = p.plans[-1]
        if isinstance(last, ServiceError):  # the LLM refused this request: no program came back
            failure, error = "plan_parse", str(last)
        else:
            assert isinstance(last, PlanningError)
            failure, error = _plan_failure(last), str(last)
    elif not traces:
        failure = "execution"
        error = str(p.results[-1]) if p.results else "no program ran"
        program = valid[-1].program
        shown = next((t for t in reversed(run_traces) if isinstance(t, Trace)), None)
    else:
        try:
            shown, agreement = vote_runs(traces)
        except Exception:  # answers that cannot be compared (scoring below says why): the first run's stands
            shown, agreement = traces[0], 1.0 if len(traces) == 1 else None
        answer, program = shown.result, shown.source
    saved: str | None = None
    if outputs is not None and failure is None and _is_image(answer):
        file = output_file(outputs, item.id)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            answer.save(file)
            saved = str(file)
        except (OSError, ValueError) as e:
            error = f"the answer image could not be saved to {file}: {getattr(e, 'strerror', None) or e}"
    correct: bool | None = None
    if failure is None and item.answer is not None:
        try:
            correct = is_correct(answer, item.answer)
        except Exception as e:  # an answer (or expected answer) the normal form cannot be made of
            correct = False
            error = f"the answer could not be compared with the expected one: {internal_error(e)}"
        failure = None if correct else "wrong_answer"
    elif failure is not None and item.answer is not None:
        correct = False
    page: str | None = None
    if trace_pages is not None and shown is not None and (all_traces or failure is not None):
        file = output_file(trace_pages, item.id, ".html")
        try:
            page = str(save_html(shown, file, title=item.id, text=item.text))
        except (OSError, ValueError) as e:  # ValueError: text that is not Unicode (unpaired surrogates)
            error = f"{error}; " if error else ""
            reason = e.strerror if isinstance(e, OSError) and e.strerror else internal_error(e)
            error += f"the trace page could not be saved to {file}: {reason}"
    return {
        "id": item.id,
        "task": item.task,
        "text": item.text,
        "program": program,
        "programs": [plan.program if isinstance(plan, Plan) else None for plan in p.plans],
        "answer": _json_safe(answer),
        "expected": _json_safe(item.answer),
        "correct": correct,
        "failure": failure,
        "error": error,
        "agreement": agreement,
        "output_file": saved,
        "trace_file": page,
        "timings": timings,
        "load_seconds": p.load_seconds,
        "plan_seconds": p.plan_seconds,
        "run_seconds": p.run_seconds,
        "seconds": p.load_seconds + p.plan_seconds + p.run_seconds,
    }
