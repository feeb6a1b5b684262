"""The output records of an evaluation: one JSON object a line per item, built, written and read back to resume.

A record has the item's ``id``, ``task`` and ``text``; the ``program`` that gave
the answer and every sample's ``programs``; the ``answer``, the ``expected`` one
and whether it is ``correct`` (None when the item has no expected answer); the
``failure`` kind and the ``error``; the samples' ``agreement``; the
``output_file`` of an image answer and the ``trace_file`` of the trace page;
``timings`` (each module's own time) and the latency in seconds.

Failure kinds (:data:`FAILURES`): ``plan_parse`` (the last attempt's program is empty or does
not parse: :func:`visprog.language.parser.parse` raises; or the LLM refused the request,
a ``per_request`` :class:`~visprog.errors.ServiceError`, and no program came
back), ``plan_check`` (it parses but fails the check), ``execution`` (an image
does not load or every valid program fails while running), ``wrong_answer``.

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
from typing import Any, TextIO

from PIL import Image as PILImage

from visprog.errors import ProgramError, ServiceError, VisprogError
from visprog.evaluation.datasets import Item
from visprog.evaluation.scoring import is_correct
from visprog.language.parser import parse
from visprog.language.values import describe_value
from visprog.planner.core import Plan, PlanningError
from visprog.presentation.report import save_html
from visprog.running.tracing import Trace
from visprog.solve import vote_runs

__all__ = [
    "ABORTED",
    "FAILURES",
    "ItemRun",
    "build_record",
    "end_last_line",
    "output_file",
    "read_records",
    "write_record",
]

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


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The records already in the output file by id (a line cut short by a crash is ignored)."""
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            out[str(rec["id"])] = rec
    return out


def end_last_line(path: Path) -> None:
    """End the file's last line if a crash cut it short, so that the next record starts a line of its own.

    Only the file's last byte is read.
    """
    if not path.is_file() or not path.stat().st_size:
        return
    with path.open("rb") as f:
        f.seek(-1, 2)
        ended = f.read(1) == b"\n"
    if not ended:
        with path.open("a", encoding="utf-8") as f:
            f.write("\n")


def write_record(file: TextIO, record: Mapping[str, Any]) -> None:
    """Append one record to an open output file as a JSON line, flushed at once."""
    file.write(json.dumps(record) + "\n")
    file.flush()


def output_file(folder: Path, item_id: str, suffix: str = ".png") -> Path:
    """Where an item's image answer (or trace page) is saved: its id made safe as a file name.

    A short hash of the id keeps ids apart that differ only in the characters replaced.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id).lstrip(".") or "item"
    if safe != item_id:
        safe += "-" + hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:8]
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


def _is_image(value: Any) -> bool:
    return isinstance(value, PILImage.Image)


def _json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it: images and other values become short descriptions."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, PILImage.Image):
        return f"<image {value.width}x{value.height}>"
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return describe_value(value)


def build_record(
    p: ItemRun, outputs: Path | None = None, trace_pages: Path | None = None, all_traces: bool = False
) -> dict[str, Any]:
    """The output record of an item that was planned (and run, when a plan was valid)."""
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
        shown, agreement = vote_runs(traces)
        answer, program = shown.result, shown.source
    saved: str | None = None
    if outputs is not None and failure is None and _is_image(answer):
        file = output_file(outputs, item.id)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            answer.save(file)
            saved = str(file)
        except OSError as e:
            error = f"the answer image could not be saved to {file}: {e.strerror or e}"
    correct: bool | None = None
    if failure is None and item.answer is not None:
        correct = is_correct(answer, item.answer)
        failure = None if correct else "wrong_answer"
    elif failure is not None and item.answer is not None:
        correct = False
    page: str | None = None
    if trace_pages is not None and shown is not None and (all_traces or failure is not None):
        file = output_file(trace_pages, item.id, ".html")
        try:
            page = str(save_html(shown, file, title=item.id, text=item.text))
        except OSError as e:
            error = f"{error}; " if error else ""
            error += f"the trace page could not be saved to {file}: {e.strerror or e}"
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
