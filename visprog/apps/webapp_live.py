"""What a request is doing while it runs: the status line and the step cards, made from its events.

A :class:`LiveView` takes the events of one request (the planner's, the
interpreter's and the runtime's model events) one at a time and says where the
request stands: planning, a repair round with the checker's diagnostics, a
program from the plan cache, loading or downloading a model with its
progress, step k of n with its module, the vote. :meth:`LiveView.status_html`
draws that as the status panel, :meth:`LiveView.trace_html` the steps that
have finished so far, one card each, in the order they finished;
:meth:`LiveView.partial_trace` the run so far, for a request stopped at its
time limit. The web app shows both while the request runs and replaces them
with the outcome when it ends. Everything here is plain values: no Gradio, no
threads.

Events are read by their ``kind``, so the model events (``model_loading``,
``model_download``, ``model_loaded``) are understood by their fields alone.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Iterable, Iterator
from typing import Any

from visprog.apps.webapp_status import status_panel
from visprog.language.values import Image, describe_value
from visprog.running.events import Event
from visprog.running.tracing import StepRecord, Trace

__all__ = ["LiveView", "follow", "megabytes", "step_card"]

#: Longest side of a picture on a step card, in pixels.
THUMB_SIDE = 160

_CARD = (
    "display:flex;gap:12px;align-items:flex-start;padding:10px 12px;margin:0 0 8px;border:1px solid #e5e7eb;"
    "border-radius:8px;background:#fff;color:#111827;font-size:13px;overflow-wrap:anywhere"
)
_FAILED_CARD = ";border-color:#fca5a5;background:#fef2f2"
_CODE = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word"


def megabytes(n: float) -> str:
    """``n`` bytes for people: ``512 KB``, ``312.4 MB``, ``1.7 GB``."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{max(n, 0) / 1e3:.0f} KB"


def _picture(image: Image) -> str:
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    thumb.convert("RGB").save(buffer, format="JPEG", quality=80)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<img alt="output" src="data:image/jpeg;base64,{data}" width="{thumb.width}" height="{thumb.height}" '
        'style="border-radius:4px;max-width:100%;height:auto">'
    )


def _shown(value: Any) -> str:
    if isinstance(value, str):
        text = value if len(value) <= 200 else value[:197] + "..."
        return f"'{text}'"
    text = describe_value(value)
    labels = [getattr(o, "label", None) for o in value] if text.startswith("Objects") else []
    named = [str(label) for label in labels if label]
    if named:
        text += ": " + ", ".join(named[:8]) + (", ..." if len(named) > 8 else "")
    return text


def step_card(
    *,
    index: int,
    total: int,
    target: str,
    module: str,
    line: int,
    source: str,
    seconds: float,
    value: Any = None,
    error: str | None = None,
    skipped: str | None = None,
    run: str = "",
) -> str:
    """One finished step as a card: its number, its line as written, its output (a picture when an image) or error.

    ``skipped`` is the reason a step did not run (it needs a step that failed).
    ``run`` names the run when several programs run together (``"run 2"``).
    """
    where = f"{run}, " if run else ""
    took = "not run" if skipped is not None else f"{seconds:.2f} s"
    head = (
        f'<div style="opacity:0.75">{html.escape(where)}step {index + 1} of {total} · line {line} · '
        f"{html.escape(module)} · {took}</div>"
        f'<div style="{_CODE};margin:2px 0 4px">{html.escape(source.strip() or f"{target}={module}(...)")}</div>'
    )
    if error is not None or skipped is not None:
        state, colour, why = ("failed", "#b91c1c", error) if error is not None else ("skipped", "#6b7280", skipped)
        body = f'<div style="color:{colour};{_CODE}">{state}: {html.escape(str(why))}</div>'
        extra = _FAILED_CARD if error is not None else ";opacity:0.8"
        return (
            f'<div class="vp-step-card vp-step-{state}" data-target="{html.escape(target, quote=True)}" '
            f'style="{_CARD}{extra}"><div style="min-width:0">{head}{body}</div></div>'
        )
    picture = _picture(value) if isinstance(value, Image) else ""
    body = f"<div>→ {html.escape(target)} = {html.escape(_shown(value))}</div>"
    return (
        f'<div class="vp-step-card vp-step-ok" data-target="{html.escape(target, quote=True)}" style="{_CARD}">'
        f'{picture}<div style="min-width:0">{head}{body}</div></div>'
    )


class LiveView:
    """The status and the finished steps of one request, updated event by event (:meth:`add`).

    ``title`` is the first status line (before any event). ``samples`` is how
    many programs the planner draws (their events say which one they are about).
    """

    def __init__(self, title: str = "Starting", *, samples: int = 1) -> None:
        self.samples = max(1, samples)
        self.title = title
        self.detail = ""
        self.progress: tuple[int, int | None] | None = None
        self.cards: list[str] = []
        #: the latest program the planner produced that checks (shown in the program box early)
        self.program: str | None = None
        self._sources: dict[int, list[str]] = {}  # job -> the program's lines
        self._runs: dict[int, tuple[Trace, float]] = {}  # job -> its steps so far, and when it started
        self._repairs: dict[int, int] = {}  # sample -> repair rounds so far
        self._step = ("", "")  # the step running now ("Step 2 of 5", "IMAGE0 = Emoji (line 2)"), for model events

    # --- reading events ---------------------------------------------------------------------

    def _sample(self, event: Event) -> str:
        if self.samples == 1:
            return ""
        return f" (sample {getattr(event, 'sample', 0) + 1} of {self.samples})"

    def _run(self, job: int) -> str:
        return f"run {job + 1}" if len(self._sources) > 1 or self.samples > 1 else ""

    def _source(self, job: int, line: int) -> str:
        lines = self._sources.get(job, [])
        return lines[line - 1] if 0 < line <= len(lines) else ""

    def add(self, event: Event) -> bool:
        """Take in ``event``; ``True`` when the status or the cards changed (an unknown kind changes nothing)."""
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is None:
            return False
        handler(event)
        return True

    def _set(self, title: str, detail: str = "", progress: tuple[int, int | None] | None = None) -> None:
        self.title, self.detail, self.progress = title, detail, progress

    def _on_request_sent(self, e: Any) -> None:
        rounds = self._repairs.get(e.sample, 0)
        if e.attempt > 1 and rounds:
            self._set(f"Planning: repair round {rounds}{self._sample(e)}: asking for a fixed program", self.detail)
        else:
            self._set(f"Planning: asking the LLM for a program{self._sample(e)}")

    def _on_reply_received(self, e: Any) -> None:
        self._set(f"Planning: the LLM answered in {e.seconds:.1f} s; checking the program{self._sample(e)}")

    def _on_repair_round(self, e: Any) -> None:
        rounds = self._repairs[e.sample] = self._repairs.get(e.sample, 0) + 1
        count = sum(1 for line in e.diagnostics.splitlines() if line.startswith("line "))
        what = f"the program has {count} error{'s' if count != 1 else ''}" if count else "no program that checks"
        self._set(f"Planning: repair round {rounds}{self._sample(e)}: {what}", e.diagnostics)

    def _on_cache_hit(self, e: Any) -> None:
        self._set(f"Planning: a program from the plan cache{self._sample(e)}")

    def _on_planned(self, e: Any) -> None:
        self.program = e.program
        how = (
            "from the plan cache" if e.attempts == 0 else f"after {e.attempts} request{'s' if e.attempts != 1 else ''}"
        )
        self._set(f"Planned{self._sample(e)} {how}: the program checks")

    def _on_plan_failed(self, e: Any) -> None:
        self._set(f"Planning failed{self._sample(e)}", e.error)

    def _on_run_started(self, e: Any) -> None:
        self._sources[e.job] = e.program.split("\n")
        self._runs[e.job] = (Trace(e.program), time.monotonic())
        run = self._run(e.job)
        self._set(f"Running{' ' + run if run else ''}: {e.steps} step{'s' if e.steps != 1 else ''}")

    def _where(self, e: Any) -> str:
        run = self._run(e.job)
        return f"{f'{run.capitalize()}, step' if run else 'Step'} {e.index + 1} of {e.total}"

    def _what(self, e: Any) -> str:
        """``IMAGE0 = Emoji (line 2)``; a bare assignment as written: ``RESULT=IMAGE0 (line 3)``."""
        if e.module == "=":
            return f"{self._source(e.job, e.line).strip() or e.target} (line {e.line})"
        return f"{e.target} = {e.module} (line {e.line})"

    def _on_step_started(self, e: Any) -> None:
        self._step = (self._where(e), self._what(e))
        self._set(": ".join(self._step))

    def _card(self, e: Any, **fields: Any) -> str:
        if "seconds" not in fields:
            fields["seconds"] = e.seconds
        return step_card(
            index=e.index,
            total=e.total,
            target=e.target,
            module=e.module,
            line=e.line,
            source=self._source(e.job, e.line),
            run=self._run(e.job),
            **fields,
        )

    def _record(self, e: Any, **fields: Any) -> None:
        if e.job in self._runs:
            record = StepRecord(e.index, e.line, e.target, e.module, self._source(e.job, e.line), **fields)
            self._runs[e.job][0].records.append(record)

    def _on_step_finished(self, e: Any) -> None:
        self.cards.append(self._card(e, value=e.value))
        self._record(e, output=e.value, seconds=e.seconds, batch=e.batch)
        self._step = ("", "")
        self._set(f"{self._where(e)} done: {self._what(e)}")

    def _on_step_failed(self, e: Any) -> None:
        self.cards.append(self._card(e, error=e.error))
        self._record(e, error=e.error, seconds=e.seconds)
        self._step = ("", "")
        self._set(f"{self._where(e)} failed: {self._what(e)}", e.error)

    def _on_step_skipped(self, e: Any) -> None:
        self.cards.append(self._card(e, seconds=0.0, skipped=e.reason))
        self._set(f"{self._where(e)} skipped: {self._what(e)}", e.reason)

    def _on_run_finished(self, e: Any) -> None:
        self._step = ("", "")
        self._set("Run finished" if e.ok else "Run failed", "" if e.ok else str(e.error or ""))

    def _on_voted(self, e: Any) -> None:
        runs = len(e.answers)
        self._set(f"Voting: {e.agreement:.0%} of {runs} run{'s' if runs != 1 else ''} agree on {e.winner}")

    def _model(self, e: Any, what: str) -> str:
        return f"{what} {getattr(e, 'model_id', '?')} for {getattr(e, 'module', '?')}"

    def _on_model_loading(self, e: Any) -> None:
        device = getattr(e, "device", "")
        line = self._model(e, "Loading model") + (f" on {device}" if device else "")
        self._model_status(line)

    def _on_model_download(self, e: Any) -> None:
        done, total = int(getattr(e, "done", 0) or 0), getattr(e, "total", None)
        if total:
            amount = f"{megabytes(done)} of {megabytes(total)} ({min(done / total, 1.0):.0%})"
        else:
            amount = megabytes(done)
        self._model_status(f"{self._model(e, 'Downloading')}: {amount}", (done, int(total) if total else None))

    def _on_model_loaded(self, e: Any) -> None:
        self._model_status(f"{self._model(e, 'Loaded')} in {float(getattr(e, 'seconds', 0.0)):.1f} s")

    def _model_status(self, line: str, progress: tuple[int, int | None] | None = None) -> None:
        if self._step[0]:  # the step that needs the model stays the title
            self._set(": ".join(self._step), line, progress)
        else:
            self._set(line, "", progress)

    def partial_trace(self, error: str) -> Trace | None:
        """The run that got furthest, as far as it got, as a trace that ended with ``error``; None before
        any run started. (Its steps' inputs are not in the events: the trace has none.)"""
        if not self._runs:
            return None
        steps, started = max(self._runs.values(), key=lambda run: len(run[0].records))
        seconds = time.monotonic() - started
        return Trace(steps.source, records=list(steps.records), seconds=seconds, error=error)

    # --- drawing ----------------------------------------------------------------------------

    def status_html(self) -> str:
        """The status panel as the request stands now."""
        return status_panel("busy", self.title, self.detail, progress=self.progress)

    def trace_html(self, placeholder: str = "") -> str:
        """The cards of the steps finished so far (``placeholder`` when none has)."""
        if not self.cards:
            return placeholder
        return f'<div class="vp-live-trace">{"".join(self.cards)}</div>'


def follow(events: Iterable[Event], view: LiveView, *, every: float = 0.25) -> Iterator[None]:
    """Feed ``events`` (:func:`visprog.running.events.stream`, with or without a time limit) to
    ``view``; yield when it changed.

    Each event reaches ``view`` (:meth:`LiveView.add`) on the calling thread as
    it happens. Download progress is told at most once per ``every`` seconds;
    every other change at once. Afterwards ``events.result`` holds what the
    work returned (an exception it raised is raised here, after the events
    before it).
    """
    last = float("-inf")  # when download progress was last told
    for event in events:
        if not view.add(event):
            continue
        if event.kind == "model_download":
            now = time.monotonic()
            if now - last < every:
                continue
            last = now
        yield None
