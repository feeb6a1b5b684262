"""The web app's work in plain values: plan and run, re-run an edited program, and say how it went.

:func:`plan_and_run` and :func:`run_program` take the request's text and
uploaded files and return an :class:`Outcome` (the status line, the program,
the trace view, the result); :mod:`visprog.apps.webapp` only turns it into
Gradio component updates, so everything here is tested without a browser or
Gradio.

The tasks on offer are the tasks' TOML files (:mod:`visprog.planner.tasks`),
offered by their labels (what the user does: "Ask about one image", "Edit"):
one that reads one image uses the "One image" upload, one that reads two the
"Two images" uploads, in order. "Plan and run" plans as
:func:`visprog.solving.solve` does, on the caller's thread, then runs the
programs on a :class:`~visprog.running.batcher.Batcher` (the app's, shared by
its requests: :mod:`visprog.apps.webapp_runs`), and votes; its status line is
made from the events it reports. Both handlers hand every event of the
request (planner, interpreter, model loading) to ``on_event`` as it happens,
which is how the app shows the work live (:mod:`visprog.apps.webapp_live`),
and both end within their ``timeout``, if given.

Every error a user can cause (no image, a file over the upload limit, an
image over the pixel limit (:mod:`visprog.apps.webapp_uploads`), a program
that does not check, a planner that finds no valid program, a step that
fails, an LLM server that cannot be reached, a request over its time limit)
comes back as an :class:`Outcome` with ``ok=False`` and a message,
never as a stack trace.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from visprog.apps.webapp_runs import batcher_for, listening, plan_then_run, time_left
from visprog.apps.webapp_status import status_panel
from visprog.apps.webapp_uploads import DEFAULT_MAX_UPLOAD_BYTES, ImagePath, Refused, load_uploads
from visprog.errors import ConfigError, ProgramError, ServiceError, StepError, VisprogError
from visprog.language.signatures import Registry
from visprog.language.values import Image, describe_value
from visprog.planner.events import CacheHit, Planned, RepairRound, RequestSent, Voted
from visprog.planner.tasks import Task, guess_task, tasks
from visprog.presentation.report import trace_html as trace_page
from visprog.running.events import Event, Listener
from visprog.running.runtime import Runtime
from visprog.running.tracing import Trace

if TYPE_CHECKING:
    from visprog.planner.core import Planner
    from visprog.running.batcher import Batcher

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "UPLOAD_ERROR",
    "ImagePath",
    "Outcome",
    "Refused",
    "auto_help",
    "infer_task",
    "load_uploads",
    "over_time",
    "plan_and_run",
    "program_to_run",
    "run_program",
    "task_choices",
    "trace_view",
]

log = logging.getLogger(__name__)

#: The class of a status panel whose message a good upload answers (and clears).
UPLOAD_ERROR = "vp-upload-error"

#: The uploads of a task that reads one image, and of one that reads two.
_ONE_IMAGE = ("IMAGE",)
_TWO_IMAGES = ("LEFT", "RIGHT")


# --- the task -------------------------------------------------------------------------------


def _offered() -> dict[str, Task]:
    """The tasks the app offers: those that read one image or two."""
    return {name: t for name, t in tasks().items() if len(t.inputs) in (1, 2)}


#: The label of the choice that lets the text and the uploads choose the task (its value is ``auto``).
AUTO_LABEL = "Choose from the text"


def task_choices() -> list[tuple[str, str]]:
    """(label, value) of each task choice: ``auto`` first (see :func:`infer_task`), then every task by its label."""
    return [(AUTO_LABEL, "auto"), *((t.label, t.name) for t in _offered().values())]


def auto_help() -> str:
    """What the automatic choice picks, told from the tasks' files, in their labels."""
    offered = _offered()
    parts = []
    if any(len(t.inputs) == 2 for t in offered.values()):
        parts.append(f"two images → {offered[guess_task(None, 2)].label}")
    for t in offered.values():
        if t.first_words and len(t.inputs) == 1:
            words = ", ".join(t.first_words[:3]) + (", ..." if len(t.first_words) > 3 else "")
            parts.append(f"a text starting with {words} → {t.label}")
    parts.append(f"otherwise {offered[guess_task(None, 1)].label}")
    return f"{AUTO_LABEL}: " + "; ".join(parts)


def infer_task(text: str | None, n_images: int) -> str:
    """The task (``gqa``, ``nlvr``, ``edit``, ``tag`` or a task of its own file) for ``text`` on ``n_images`` images.

    Two images or more: a task that reads two (``nlvr``, a statement about LEFT
    and RIGHT). Otherwise a text whose first word is one of a task's
    ``first_words`` is that task (hide, replace, blur, ... an ``edit``; tag,
    label, identify a ``tag``); anything else is a question (``gqa``). Case and
    leading punctuation are ignored. See :func:`visprog.planner.tasks.guess_task`.
    """
    return guess_task(text, min(max(n_images, 1), 2))


# --- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one request produced, in plain values.

    ``program`` is ``None`` when the program box should be left as it is.
    ``image`` is set when the result is an image, ``answer`` when it is
    anything else. ``title`` and ``message`` say what happened (or what went
    wrong, with ``ok=False``); ``message`` may span lines (diagnostics).
    ``trace`` is the run's trace (also a failed run's partial one), for download.
    ``uploads`` marks a message that uploading an image answers ("No image", a
    file that is not an image): the app clears it when a good image is uploaded.
    ``over_time`` marks a request stopped at its time limit (:func:`over_time`).
    """

    ok: bool
    title: str
    message: str = ""
    task: str | None = None
    program: str | None = None
    trace_html: str = ""
    image: Image | None = None
    answer: str | None = None
    trace: Trace | None = None
    uploads: bool = False
    over_time: bool = False

    def status_html(self) -> str:
        """The title and message as a small HTML panel (green for success, red for an error).

        The message wraps to the panel's width; only source lines with their carets stay unwrapped
        (:func:`visprog.apps.webapp_status.status_panel`).
        """
        classes = UPLOAD_ERROR if self.uploads else ""
        return status_panel("ok" if self.ok else "error", self.title, self.message, classes=classes)


def _failure(title: str, message: str = "", **fields: Any) -> Outcome:
    return Outcome(False, title, message, **fields)


# --- inputs ---------------------------------------------------------------------------------


def _images_for(task: Task, loaded: Mapping[str, Image]) -> dict[str, Image]:
    """The task's inputs from the uploads: one image from "One image", two from "Two images", in order."""
    slots = _ONE_IMAGE if len(task.inputs) == 1 else _TWO_IMAGES
    missing = [slot for slot in slots if slot not in loaded]
    if missing and slots == _ONE_IMAGE:
        raise Refused(
            "No image",
            f"Upload an image under 'One image' first: '{task.label}' works on one image ({task.inputs[0]}).",
            uploads=True,
        )
    if missing:
        raise Refused(
            "Two images needed",
            f"'{task.label}' reads two images: upload {' and '.join(missing)} under 'Two images'.",
            uploads=True,
        )
    return {name: loaded[slot] for name, slot in zip(task.inputs, slots, strict=True)}


def _images_for_program(used: Sequence[str], loaded: Mapping[str, Image]) -> dict[str, Image]:
    """The uploads a program as written reads.

    A program that reads a task's inputs gets them as that task would (one image from "One image",
    two from "Two images", in the task's order), whatever the inputs are called; any other program
    gets the uploads of the same names.
    """
    missing = [name for name in used if name not in loaded]
    if missing and not set(used) <= {*_ONE_IMAGE, *_TWO_IMAGES}:  # inputs named otherwise: a task's, by position
        for task in _offered().values():
            if set(task.inputs) == set(used):
                return _images_for(task, loaded)
    if missing:
        where = " under 'Two images'" if set(missing) <= set(_TWO_IMAGES) else ""
        raise Refused(
            "No image" if list(missing) == list(_ONE_IMAGE) else "Images missing",
            f"The program reads {', '.join(missing)}: upload {'it' if len(missing) == 1 else 'them'}{where} first.",
            uploads=True,
        )
    return {name: loaded[name] for name in used}


# --- the trace ------------------------------------------------------------------------------


def trace_view(trace: Trace | None, text: str | None = None) -> str:
    """HTML showing ``trace``: its page (:func:`visprog.presentation.report.trace_html`) in a frame.

    ``text`` (the question or instruction) heads the page. If drawing the page fails, the trace's text.
    """
    if trace is None:
        return ""
    try:
        document = trace_page(trace, text=text)
    except Exception:  # the rich view is a nicety: fall back to the text
        log.exception("drawing the trace page failed; showing the text trace")
    else:
        # A frame keeps the trace's own styles apart from the app's; it grows to fit its content.
        return (
            '<iframe class="vp-trace-frame" title="Trace" sandbox="allow-same-origin" '
            'style="width:100%;min-height:320px;border:0" '
            "onload=\"this.style.height=(this.contentDocument.documentElement.scrollHeight+24)+'px'\" "
            f'srcdoc="{html.escape(document, quote=True)}"></iframe>'
        )
    return (
        '<pre class="vp-trace-text" style="white-space:pre-wrap;font-size:13px;line-height:1.45;'
        f'margin:0">{html.escape(trace.to_text())}</pre>'
    )


def _result_fields(trace: Trace) -> dict[str, Any]:
    result = trace.result
    if isinstance(result, Image):
        return {"image": result}
    if isinstance(result, str):
        return {"answer": result}
    if isinstance(result, (bool, int, float)):
        return {"answer": str(result)}
    return {"answer": describe_value(result)}


def _ran(trace: Trace, title: str, text: str | None = None, planning: str = "", **fields: Any) -> Outcome:
    steps = len(trace.records)
    message = f"{steps} step{'s' if steps != 1 else ''} in {trace.seconds:.2f} s{planning}"
    view = trace_view(trace, text)
    return Outcome(True, title, message, trace_html=view, trace=trace, **_result_fields(trace), **fields)


class _Log:
    """The planner's events of one request, told back as the status line's second half; each is passed on."""

    def __init__(self, then: Listener | None = None) -> None:
        self.then = then
        self.requests = 0
        self.repairs = 0
        self.cached = 0
        self.program: str | None = None  # the last program that checked
        self.vote: Voted | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RequestSent):
            self.requests += 1
        elif isinstance(event, RepairRound):
            self.repairs += 1
        elif isinstance(event, CacheHit):
            self.cached += 1
        elif isinstance(event, Planned):
            self.program = event.program
        elif isinstance(event, Voted):
            self.vote = event
        if self.then is not None:
            self.then(event)

    def summary(self) -> str:
        parts = []
        if self.requests:
            repairs = f" ({self.repairs} repair round{'s' if self.repairs != 1 else ''})" if self.repairs else ""
            parts.append(f"{self.requests} LLM request{'s' if self.requests != 1 else ''}{repairs}")
        if self.cached:
            parts.append(f"{self.cached} program{'s' if self.cached != 1 else ''} from the plan cache")
        if self.vote is not None and self.vote.samples > 1:
            runs = len(self.vote.answers)
            parts.append(f"{self.vote.agreement:.0%} of {runs} run{'s' if runs != 1 else ''} agree")
        return "".join(f"; {p}" for p in parts)


def _step_failed(e: StepError, text: str | None = None, **fields: Any) -> Outcome:
    detail = f"line {e.line}, {e.module} (step {e.target}): {e.reason}\n  {e.source_line.strip()}"
    detail += "\nThe steps before it are shown in the trace."
    return _failure(f"Step {e.target} failed", detail, trace_html=trace_view(e.trace, text), trace=e.trace, **fields)


def _program_error(e: ProgramError, **fields: Any) -> Outcome:
    count = len(e.diagnostics)
    return _failure(f"The program has {count} {e.kind}{'s' if count > 1 else ''}", e.render(), **fields)


def _unexpected(e: Exception, **fields: Any) -> Outcome:
    log.exception("unexpected error in the web app")
    return _failure("Something went wrong", f"{type(e).__name__}: {e}", **fields)


def over_time(seconds: float | None, trace: Trace | None = None, text: str | None = None, **fields: Any) -> Outcome:
    """A request stopped at its time limit of ``seconds``, with the ``trace`` of what it had run by then."""
    limit = f" of {seconds:g} s" if seconds is not None else ""
    most = f"at most {seconds:g} s" if seconds is not None else "only so long"
    message = f"A request may take {most}, planning and running (visprog serve --request-timeout sets it); "
    message += "this one was stopped there."
    done = len(trace.records) if trace is not None else 0
    if done:
        steps = f"{done} steps that finished in time are" if done != 1 else "step that finished in time is"
        message += f"\nThe {steps} shown in the trace."
    if fields.get("program"):
        message += "\nThe program is in the program box: press 'Run edited program' to run it again."
    view = trace_view(trace, text)
    return _failure(
        f"Stopped: over the time limit{limit}", message, trace_html=view, trace=trace, over_time=True, **fields
    )


# --- handlers -------------------------------------------------------------------------------


def plan_and_run(
    text: str | None,
    task: str = "auto",
    image: ImagePath = None,
    left: ImagePath = None,
    right: ImagePath = None,
    *,
    planner: Planner | Callable[[], Planner],
    runtime: Runtime | None = None,
    samples: int = 1,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
    on_event: Listener | None = None,
    runner: Batcher | None = None,
    timeout: float | None = None,
) -> Outcome:
    """Plan a program for ``text`` and run it on the uploaded images (as :func:`visprog.solving.solve` does).

    ``task`` is ``auto`` (see :func:`infer_task`) or a task's name (``gqa``,
    ``nlvr``, ``edit``, ``tag``, ...); the images are uploads
    (:data:`~visprog.apps.webapp_uploads.ImagePath`: ``None`` where nothing
    was uploaded). ``samples`` > 1 draws that many programs, runs them and
    votes on their answers. ``planner`` is a
    :class:`~visprog.planner.core.Planner` or a function that returns one
    (called here, so that a planner that cannot be created is reported like
    any other error). The programs run on ``runner`` (default: a batcher of
    this call's own, on ``runtime``). ``on_event`` receives every event of the
    request as it happens. Past ``timeout`` seconds no program starts and the
    runs are no longer waited for: the outcome says so (:func:`over_time`).
    """
    from visprog.planner.core import PlanningError

    deadline = None if timeout is None else time.monotonic() + timeout
    text = (text or "").strip()
    try:
        loaded = load_uploads(
            {"IMAGE": image, "LEFT": left, "RIGHT": right}, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels
        )
        if not text:
            raise Refused("Nothing to do", "Type a question, a statement or an instruction first.")
        offered = _offered()
        inferred = task in ("", "auto")
        if inferred:
            task = infer_task(text, 2 if "LEFT" in loaded and "RIGHT" in loaded else len(loaded))
        elif task not in offered:
            raise Refused("Unknown task", f"choose one of auto, {', '.join(offered)}, not {task!r}")
        if samples < 1:
            raise Refused("Samples", f"draw at least one program, not {samples}")
        chosen = offered[task]
        images = _images_for(chosen, loaded)
    except Refused as e:
        return _failure(e.title, e.message, uploads=e.uploads)
    how = f"{chosen.label}{', chosen from the text' if inferred else ''}"
    log = _Log(on_event)
    try:
        active = cast("Planner", planner) if hasattr(planner, "plan") else cast("Callable[[], Planner]", planner)()
        with batcher_for(runner, active.registry, runtime) as running, listening(running, log):
            trace, program = plan_then_run(running, chosen, text, images, active, samples, log, deadline)
    except TimeoutError:
        return over_time(timeout, task=task, program=_program(log))
    except PlanningError as e:
        last = next((a.program for a in reversed(e.attempts) if a.program.strip()), None)
        return _failure(
            "The planner found no valid program",
            f"{e}\n\nThe last attempt is in the program box: fix it and press 'Run edited program'.",
            task=task,
            program=last.strip() if last else None,
        )
    except ServiceError as e:
        return _failure(
            "The planner's LLM could not be reached",
            f"{e}\n\nStart the OpenAI-compatible server (or set OPENAI_BASE_URL / OPENAI_API_KEY) and try again; "
            "a program in the program box can still be run with 'Run edited program'.",
            task=task,
        )
    except ConfigError as e:
        return _failure("The planner is not configured", str(e), task=task)
    except StepError as e:
        return _step_failed(e, text, task=task, program=_program(log))
    except VisprogError as e:  # a local LLM whose weights are missing, an input that cannot run, ...
        title = "The planner failed" if log.program is None else "The program could not run"
        return _failure(title, str(e), task=task, program=_program(log))
    except Exception as e:
        return _unexpected(e, task=task, program=_program(log))
    return _ran(trace, f"Done ({how})", text, log.summary(), task=task, program=program.strip())


def _program(log: _Log) -> str | None:
    return log.program.strip() if log.program is not None else None


def run_program(
    program: str | None,
    image: ImagePath = None,
    left: ImagePath = None,
    right: ImagePath = None,
    *,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
    on_event: Listener | None = None,
    runner: Batcher | None = None,
    timeout: float | None = None,
) -> Outcome:
    """Check and run ``program`` as written (no planner) on the uploaded images.

    A program that does not parse or check comes back with the checker's
    diagnostics (line, column, the line with a caret) as its message. It
    runs on ``runner`` (default: a batcher of this call's own, on
    ``runtime``); ``on_event`` receives the run's events and the runtime's
    model events. Past ``timeout`` seconds the run is no longer waited for
    (:func:`over_time`).
    """
    from visprog.solving import check

    deadline = None if timeout is None else time.monotonic() + timeout
    source = program or ""
    if not source.strip():
        return _failure("No program", "Plan one with 'Plan and run', or write one in the program box.")
    try:
        checked = check(source, registry=registry)
    except ProgramError as e:
        return _program_error(e)
    try:
        loaded = load_uploads(
            {"IMAGE": image, "LEFT": left, "RIGHT": right}, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels
        )
        images = _images_for_program(checked.used_inputs, loaded)
    except Refused as e:
        return _failure(e.title, e.message, uploads=e.uploads)
    try:
        with batcher_for(runner, registry, runtime) as running, listening(running, on_event):
            trace = running.run(checked, images, on_event=on_event, timeout=time_left(deadline))
    except TimeoutError:
        return over_time(timeout)
    except StepError as e:
        return _step_failed(e)
    except ProgramError as e:
        return _program_error(e)
    except VisprogError as e:
        return _failure("The program could not run", str(e))
    except Exception as e:
        return _unexpected(e)
    return _ran(trace, "Done (edited program)")


def program_to_run(sent: str | None, sent_version: float | None, latest: tuple[int, str] | None) -> str:
    """The program a "Run edited program" request runs: what the program box shows when the request starts.

    ``sent`` is the box as it was when the button was pressed, ``sent_version``
    the number of the last program the app had written into the box by then;
    ``latest`` is ``(number, program)`` of the last program the app wrote into
    the box since (a plan that finished while this request waited in the queue).
    When the app wrote a newer program, that is what the box shows now, and
    what runs; otherwise the box holds what the user sent.
    """
    if latest is not None and latest[0] > int(sent_version or 0):
        return latest[1]
    return sent or ""
