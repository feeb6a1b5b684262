"""One program being run: which of its steps are ready, what failed, what cannot run, and its events.

The interpreter keeps a :class:`Job` per program. A step becomes ready when every step whose value it
reads has run. A failing step does not end the job: the steps that need its value (directly or
through other steps) never become ready, and every other step still runs. When no step is ready the
job has ended; :meth:`Job.skipped` then lists the steps that never ran, each with the failed steps it
needs.
"""

from __future__ import annotations

from typing import Any

from visprog.errors import StepError
from visprog.language.checker import CheckedProgram, CheckedStep
from visprog.running.events import (
    Event,
    Listener,
    StepFailed,
    StepFinished,
    StepSkipped,
    StepStarted,
)
from visprog.running.plan import RunPlan
from visprog.running.tracing import Skipped, StepRecord, Trace
from visprog.running.wording import lines

__all__ = ["Job", "Stopped"]


class Job:
    """One program being run: its plan, computed values, ready steps, trace, failures and listener.

    ``number`` is the program's place in the ``run_many`` call (0 for ``run``); events carry it.
    ``error`` is the :class:`~visprog.errors.StepError` of the first step that failed; ``failed``
    the indices of every step that failed, in the order they failed.
    """

    __slots__ = (
        "checked",
        "error",
        "failed",
        "indegree",
        "listener",
        "number",
        "offsets",
        "pending",
        "plan",
        "ready",
        "trace",
        "values",
    )

    def __init__(
        self, checked: CheckedProgram, trace: Trace, number: int = 0, listener: Listener | None = None
    ) -> None:
        self.checked = checked
        self.trace = trace
        self.number = number
        self.listener = listener
        self.values: dict[int, Any] = {}
        #: crop step -> where its crop's top-left corner lies in the image it cut (x, y)
        self.offsets: dict[int, tuple[int, int]] = {}
        self.plan = RunPlan.of(checked)
        self.indegree = list(self.plan.indegree)
        self.ready = [i for i, d in enumerate(self.indegree) if d == 0]
        self.pending = len(self.indegree)
        self.error: StepError | None = None
        self.failed: list[int] = []

    def done(self, index: int) -> None:
        """Step ``index`` ran: the steps waiting only for it become ready."""
        self.pending -= 1
        indegree = self.indegree
        for nxt in self.plan.successors[index]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                self.ready.append(nxt)

    def fail(self, record: StepRecord, error: StepError) -> None:
        """The step of ``record`` failed with ``error``: the steps that need it will never be ready."""
        record.error = error.reason
        self.failed.append(record.index)
        if self.error is None:
            self.error = error

    def skipped(self) -> list[Skipped]:
        """The steps that never ran because they need a failed step, in program order (call when ended)."""
        needs: dict[int, set[int]] = {}
        successors = self.plan.successors
        steps = self.checked.steps
        for f in self.failed:
            line = steps[f].step.line
            todo = list(successors[f])
            while todo:
                i = todo.pop()
                seen = needs.setdefault(i, set())
                if line not in seen:
                    seen.add(line)
                    todo.extend(successors[i])
        out = []
        for i in sorted(needs):
            s = steps[i]
            out.append(Skipped(i, s.step.line, s.step.target, s.module, s.step.source, tuple(sorted(needs[i]))))
        return out

    def emit(self, event: Event) -> None:
        """Hand ``event`` to the listener (call only when there is one); its exception stops the run."""
        assert self.listener is not None
        try:
            self.listener(event)
        except Exception as e:
            raise Stopped(self, event, e) from e

    def step_started(self, s: CheckedStep) -> None:
        total = len(self.checked.steps)
        self.emit(StepStarted(self.number, s.index, total, s.step.target, s.module, s.step.line))

    def step_ended(self, r: StepRecord, seconds: float) -> None:
        """:class:`StepFinished` or :class:`StepFailed` for the record of a step that ran (or failed)."""
        total = len(self.checked.steps)
        if r.error is None:
            event: Event = StepFinished(
                self.number, r.index, total, r.target, r.module, r.line, r.output, r.seconds, r.batch
            )
        else:
            event = StepFailed(self.number, r.index, total, r.target, r.module, r.line, r.error, seconds)
        self.emit(event)

    def step_skipped(self, k: Skipped) -> None:
        reason = f"it needs {lines(k.needs, 'and')}, which failed"
        self.emit(StepSkipped(self.number, k.index, len(self.checked.steps), k.target, k.module, k.line, reason))


class Stopped(Exception):
    """The listener raised ``cause`` on ``event`` (of ``job``): the run stops."""

    def __init__(self, job: Job, event: Event, cause: Exception) -> None:
        super().__init__(str(cause))
        self.job = job
        self.event = event
        self.cause = cause

    def message(self) -> str:
        cause = self.cause
        return (
            f"the run was stopped: the on_event listener raised {type(cause).__name__}: {cause} "
            f"(on the {self.event.kind} event)"
        )
